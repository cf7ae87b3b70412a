#!/usr/bin/env python3
"""Boot test of the appliance image (run by image/test.sh after image/build.sh).

Boots the image under QEMU (KVM when a probe boot shows it works, TCG otherwise; or
RINGRELAY_IMAGE_ACCEL=kvm|tcg) with user-mode networking: the guest's inputs and admin endpoint
are forwarded to 127.0.0.1 ports, and the guest reaches this host's receivers as 10.0.2.2. Then:

  1. boot A, the shipped disk itself (UEFI: OVMF, systemd-boot, the qcow2 as built): waits for
     /ready, sends 10,000 numbered records to the TCP input and 10,000 to the HTTP input, checks
     that the receivers get every one exactly once;
  2. stops the receivers, sends 20,000 more to each input, both at once in batches of 100 (at
     most RATE/s; HTTP batches answered 200 with sync = "always", the last one still in flight),
     SIGKILLs QEMU right after the last write (a power cut), boots again (boot B,
     direct kernel boot of the same disk, no seed attached: the copy of the last seed on the
     data disk serves), checks `ringrelay inspect --verify` (run by the image
     before the relay starts, seed flag verify-at-boot) is clean on the serial console, and that
     the receivers, back, get every record of every batch answered 200 (HTTP, sync = "always":
     zero loss) and all but about one sync_interval of the TCP records (counted and printed);
  3. boot C with 256 MiB of memory and a 1 GiB ring (4x the memory): relays 100,000 records;
     and 1,000 through a TLS input whose certificate and key come from the seed's tls/;
  4. boot D with a bad config on the seed (an ISO 9660 seed on a CD-ROM this time): the error is
     on the serial console with `ringrelay check`'s message, and the relay's unit is not
     restarted.

Every QEMU and receiver this starts is stopped on every way out (finally, atexit, SIGTERM).
"""

import atexit
import ctypes
import http.client
import os
import re
import shutil
import signal
import ssl
import socket
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OUT = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target/image/out"))
WORK = os.path.join(ROOT, "target/image/test")
OVMF_CODE = "/usr/share/OVMF/OVMF_CODE_4M.fd"
OVMF_VARS = "/usr/share/OVMF/OVMF_VARS_4M.fd"
SECRET = "image-test-7f3c9a1e"
RATE = 4000  # TCP records/s in step 2
SYNC_INTERVAL = 1.0  # the default sync_interval
BOOT_TIMEOUT = float(os.environ.get("RINGRELAY_IMAGE_BOOT_TIMEOUT", "240"))

T0 = time.monotonic()
procs = []
figures = []


def _die_with_parent():
    # QEMU dies with this process even when it is SIGKILLed (timeout --kill-after).
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def log(msg):
    print(f"image-test [{time.monotonic() - T0:6.1f}s] {msg}", flush=True)


def figure(name, value):
    figures.append((name, value))
    log(f"FIGURE {name}: {value}")


def cleanup():
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


atexit.register(cleanup)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
signal.signal(signal.SIGHUP, lambda *_: sys.exit(129))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Receiver:
    """A SIEM on the host: a TCP listener that counts numbered records by stream."""

    def __init__(self, port):
        self.port = port
        self.lock = threading.Lock()
        self.seen = {}  # n -> times received
        self.lines = 0
        self.sock = None
        self.conns = []
        self.running = False

    def start(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", self.port))
        self.sock.listen(16)
        self.running = True
        threading.Thread(target=self._accept, args=(self.sock,), daemon=True).start()

    def stop(self):
        """Down for real: a close() alone leaves a listener that another thread is blocked in
        accept() on still accepting (the kernel keeps it open for that accept)."""
        self.running = False
        if self.sock:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept() with an error
            except OSError:
                pass
            self.sock.close()
            self.sock = None
        for c in self.conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()
        self.conns = []

    def _accept(self, sock):
        while self.running:
            try:
                c, _ = sock.accept()
            except OSError:
                return
            if not self.running:
                c.close()
                return
            self.conns.append(c)
            threading.Thread(target=self._read, args=(c,), daemon=True).start()

    def _read(self, c):
        buf = b""
        while True:
            try:
                d = c.recv(1 << 16)
            except OSError:
                return
            if not d:
                return
            buf += d
            *whole, buf = buf.split(b"\n")
            with self.lock:
                for line in whole:
                    self.lines += 1
                    parts = line.split(b" ", 2)
                    if len(parts) >= 2 and parts[1].isdigit():
                        n = int(parts[1])
                        self.seen[n] = self.seen.get(n, 0) + 1

    def count(self, lo, hi):
        """(unique records of [lo, hi) received, duplicates of them)."""
        with self.lock:
            u = sum(1 for n in range(lo, hi) if n in self.seen)
            d = sum(self.seen[n] - 1 for n in range(lo, hi) if n in self.seen)
        return u, d

    def missing(self, numbers):
        with self.lock:
            return [n for n in numbers if n not in self.seen]


def record(kind, n, size):
    head = f"{kind} {n:08d} "
    return (head + "x" * max(0, size - len(head) - 1) + "\n").encode()


class Guest:
    def __init__(self, name, accel, mem, data_disk, seed, direct, ports, out=None, extra=(), smp=2):
        """`out`: the image build's OUTDIR (default: OUT); `extra`: more QEMU arguments (the
        pair test's storage links and QMP socket); no data disk when `data_disk` is None, no
        user-mode NIC when `ports` is empty."""
        out = out or OUT
        self.name = name
        self.serial = os.path.join(WORK, f"serial-{name}.log")
        self.ports = ports
        fwd = ",".join(f"hostfwd=tcp:127.0.0.1:{h}-:{g}" for g, h in ports.items())
        cmd = ["qemu-system-x86_64", "-m", str(mem), "-smp", str(smp), "-nodefaults", "-no-reboot",
               "-display", "none", "-monitor", "none", "-serial", f"file:{self.serial}"]
        cmd += ["-accel", "kvm", "-cpu", "host"] if accel == "kvm" else ["-accel", "tcg", "-cpu", "max"]
        overlay = os.path.join(WORK, f"system-{name}.qcow2")
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
                        os.path.join(out, "ringrelay-appliance.qcow2"), overlay], check=True)
        if direct:
            cmdline = open(os.path.join(out, "cmdline")).read().strip()
            cmd += ["-kernel", os.path.join(out, "vmlinuz"), "-initrd",
                    os.path.join(out, "initrd.img"), "-append", cmdline]
        else:
            vars_ = os.path.join(WORK, f"vars-{name}.fd")
            shutil.copy(OVMF_VARS, vars_)
            cmd += ["-drive", f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}",
                    "-drive", f"if=pflash,format=raw,file={vars_}"]
        cmd += ["-drive", f"if=none,id=sys,file={overlay},format=qcow2",
                "-device", "virtio-blk-pci,drive=sys"]
        if data_disk:
            cmd += ["-drive", f"if=none,id=data,file={data_disk},format=raw,cache=writeback",
                    "-device", "virtio-blk-pci,drive=data,serial=ringrelay-data"]
        if ports:
            cmd += ["-netdev", f"user,id=n0,{fwd}", "-device", "virtio-net-pci,netdev=n0"]
        cmd += list(extra)
        if seed and seed.endswith(".iso"):  # an ISO seed as a CD-ROM, as hypervisors attach them
            cmd += ["-drive", f"if=none,id=seed,file={seed},format=raw,media=cdrom,readonly=on",
                    "-device", "ide-cd,drive=seed,bus=ide.1"]
        elif seed:
            cmd += ["-drive", f"if=none,id=seed,file={seed},format=raw,readonly=on",
                    "-device", "virtio-blk-pci,drive=seed"]
        log(f"boot {name}: {'direct kernel boot' if direct else 'the shipped qcow2 through UEFI (OVMF)'}, "
            f"{mem} MiB, {accel}")
        self.started = time.monotonic()
        self.qemu = subprocess.Popen(cmd, stdout=open(os.path.join(WORK, f"qemu-{name}.out"), "w"),
                                     stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        procs.append(self.qemu)

    def console(self):
        try:
            with open(self.serial, "rb") as f:
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def admin(self, path, timeout=3.0):
        c = http.client.HTTPConnection("127.0.0.1", self.ports[9600], timeout=timeout)
        try:
            c.request("GET", path)
            r = c.getresponse()
            return r.status, r.read().decode(errors="replace")
        finally:
            c.close()

    def alive(self):
        return self.qemu.poll() is None

    def wait_ready(self):
        deadline = self.started + BOOT_TIMEOUT
        while time.monotonic() < deadline:
            if not self.alive():
                self.fail(f"QEMU exited ({self.qemu.returncode}) before /ready")
            try:
                status, _ = self.admin("/ready", timeout=2)
                if status == 200:
                    took = time.monotonic() - self.started
                    log(f"boot {self.name}: /ready 200 after {took:.1f} s")
                    return took
            except OSError:
                pass
            time.sleep(0.5)
        self.fail(f"no /ready within {BOOT_TIMEOUT:.0f} s")

    def wait_console(self, pattern, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern, self.console())
            if m:
                return m
            if not self.alive():
                break
            time.sleep(0.5)
        return None

    def metric(self, name, labels=""):
        """The sum of a metric's samples whose labels contain `labels`; None if unanswered."""
        try:
            _, text = self.admin("/metrics")
        except OSError:
            return None
        total = 0.0
        found = False
        for line in text.splitlines():
            if line.split("{")[0].split(" ")[0] == name and labels in line:
                total += float(line.rsplit(" ", 1)[1])
                found = True
        return total if found else None

    def power_cut(self):
        self.qemu.send_signal(signal.SIGKILL)
        self.qemu.wait()

    def stop(self):
        if self.alive():
            self.qemu.kill()
            self.qemu.wait()

    def fail(self, msg):
        tail = "\n".join(self.console().splitlines()[-60:])
        print(f"--- serial console of boot {self.name} (last 60 lines) ---\n{tail}\n---", flush=True)
        raise SystemExit(f"image-test: FAIL: boot {self.name}: {msg}")


def fail(msg):
    raise SystemExit(f"image-test: FAIL: {msg}")


def wait_for(pred, timeout, step=0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return pred()


def make_seed(name, toml, verify=False, tls=(), iso=False):
    cfg = os.path.join(WORK, f"{name}.toml")
    with open(cfg, "w") as f:
        f.write(toml)
    seed = os.path.join(WORK, f"seed-{name}.{'iso' if iso else 'img'}")
    args = ["bash", os.path.join(HERE, "make-seed.sh"), seed, cfg]
    if verify:
        args.append("--verify-at-boot")
    for f in tls:
        args += ["--tls", f]
    subprocess.run(args, check=True, stderr=subprocess.DEVNULL)
    return seed


def make_disk(name, mib):
    p = os.path.join(WORK, f"data-{name}.raw")
    with open(p, "wb") as f:
        f.truncate(mib << 20)
    return p


def send_tcp(port, lo, hi, size, rate=None):
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    start = time.monotonic()
    batch = 200
    for b in range(lo, hi, batch):
        s.sendall(b"".join(record("tcp", n, size) for n in range(b, min(b + batch, hi))))
        if rate:
            ahead = (b + batch - lo) / rate - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)
    return s  # left open: closing it is the caller's choice (a power cut does not close it)


def post_batches(port, lo, hi, per_batch, size, acked):
    """POSTs the records as batches, one at a time; `acked` gets those answered 200."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    for b in range(lo, hi, per_batch):
        nums = range(b, min(b + per_batch, hi))
        body = b"".join(record("http", n, size) for n in nums)
        c.request("POST", "/nss", body=body, headers={"x-panther-zscaler": SECRET,
                                                      "Content-Type": "text/plain"})
        r = c.getresponse()
        r.read()
        if r.status != 200:
            fail(f"HTTP batch {b}..{b + per_batch} answered {r.status}")
        acked.extend(nums)
    c.close()


def accel_choice():
    forced = os.environ.get("RINGRELAY_IMAGE_ACCEL")
    if forced in ("kvm", "tcg"):
        log(f"accelerator {forced} (RINGRELAY_IMAGE_ACCEL)")
        return forced
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        log("accelerator tcg (no usable /dev/kvm)")
        return "tcg"
    # A probe boot: under a working KVM the kernel's first line is on the serial port within a
    # second; on our nested machines stock Debian kernels hang there without a word.
    probe = os.path.join(WORK, "serial-kvm-probe.log")
    q = subprocess.Popen(["qemu-system-x86_64", "-accel", "kvm", "-cpu", "host", "-m", "256",
                          "-nodefaults", "-no-reboot", "-display", "none", "-monitor", "none",
                          "-serial", f"file:{probe}", "-kernel", os.path.join(OUT, "vmlinuz"),
                          "-append", "console=ttyS0 loglevel=7 panic=-1"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         preexec_fn=_die_with_parent)
    procs.append(q)
    ok = wait_for(lambda: os.path.exists(probe) and b"Linux version" in open(probe, "rb").read(),
                  10, 0.2)
    q.kill()
    q.wait()
    log(f"accelerator {'kvm' if ok else 'tcg'} (KVM probe boot: {'kernel ran' if ok else 'no kernel output in 10 s'})")
    return "kvm" if ok else "tcg"


def main():
    shutil.rmtree(WORK, ignore_errors=True)
    os.makedirs(WORK)
    accel = accel_choice()
    ports = {g: free_port() for g in (9600, 5514, 8080, 6514)}
    recv_tcp = Receiver(free_port())
    recv_http = Receiver(free_port())

    relay_cfg = f"""[relay]
data_dir = "/var/lib/ringrelay"
admin_listen = "0.0.0.0:9600"
instance = "image-test"

[[feed]]
name = "tcp-default"
input = {{ kind = "tcp", listen = "0.0.0.0:5514" }}
buffer = {{ size = "64MiB" }}

[[feed.output]]
name = "siem"
kind = "tcp"
address = "10.0.2.2:{recv_tcp.port}"

[[feed]]
name = "http-always"
input = {{ kind = "http", listen = "0.0.0.0:8080", path = "/nss", auth_header = "x-panther-zscaler", secret = "{SECRET}" }}
sync = "always"
buffer = {{ size = "64MiB" }}

[[feed.output]]
name = "siem"
kind = "tcp"
address = "10.0.2.2:{recv_http.port}"
"""
    seed = make_seed("relay", relay_cfg, verify=True)
    data = make_disk("relay", 1024)

    # ---- 1. the shipped disk boots and relays exactly once ----------------------------------
    recv_tcp.start()
    recv_http.start()
    a = Guest("A", accel, 512, data, seed, direct=False, ports=ports)
    figure("boot-to-ready, shipped disk (UEFI), first boot (formats the data disk)",
           f"{a.wait_ready():.1f} s ({accel})")
    if not re.search(r"formatting the blank data disk", a.console()):
        a.fail("the data disk was not formatted on first boot")
    n1 = 10_000
    t = send_tcp(ports[5514], 0, n1, 120)
    acked = []
    post_batches(ports[8080], 0, n1, 100, 120, acked)
    t.close()
    ok = wait_for(lambda: recv_tcp.count(0, n1)[0] == n1 and recv_http.count(0, n1)[0] == n1, 120)
    ut, dt = recv_tcp.count(0, n1)
    uh, dh = recv_http.count(0, n1)
    log(f"step 1: TCP input -> receiver: {ut}/{n1} unique, {dt} duplicates; "
        f"HTTP input -> receiver: {uh}/{n1} unique, {dh} duplicates")
    if not ok or dt or dh:
        a.fail(f"step 1: not every record exactly once (tcp {ut} unique {dt} dup, http {uh} unique {dh} dup)")
    log("step 1: PASS: 10,000 records through each input, each received exactly once")

    # ---- 2. receivers down, 20,000 more each, power cut, boot again ------------------------
    recv_tcp.stop()
    recv_http.stop()
    if not wait_for(lambda: a.metric("ringrelay_output_connected") == 0, 30):
        a.fail("the outputs did not notice the receivers going away")
    time.sleep(3)
    if a.metric("ringrelay_output_connected") != 0:
        a.fail("an output is connected again although the receivers are down")
    lo, hi = n1, n1 + 20_000
    # Both inputs at once, batch by batch: 100 records to the HTTP input (a POST, its 200 awaited:
    # sync = "always", so the 200 means on disk), 100 to the TCP input, at most RATE per second
    # each. The last POST is written but its answer is not awaited: SIGKILL to QEMU right after
    # the last TCP write, so the cut lands in the middle of the TCP input's sync interval and of
    # an HTTP request.
    acked = []
    h = http.client.HTTPConnection("127.0.0.1", ports[8080], timeout=60)
    t = socket.create_connection(("127.0.0.1", ports[5514]), timeout=60)
    sent_at = time.monotonic()
    per = 100
    for b in range(lo, hi, per):
        nums = range(b, b + per)
        h.request("POST", "/nss", body=b"".join(record("http", n, 120) for n in nums),
                  headers={"x-panther-zscaler": SECRET, "Content-Type": "text/plain"})
        t.sendall(b"".join(record("tcp", n, 120) for n in nums))
        if b + per >= hi:
            break  # the last POST stays in flight
        r = h.getresponse()
        r.read()
        if r.status != 200:
            a.fail(f"HTTP batch {b}..{b + per} answered {r.status}")
        acked.extend(nums)
        ahead = (b + per - lo) / RATE - (time.monotonic() - sent_at)
        if ahead > 0:
            time.sleep(ahead)
    a.power_cut()
    took = time.monotonic() - sent_at
    rate = (hi - lo) / took
    t.close()
    h.close()
    log(f"step 2: the receivers down, sent {hi - lo} records to each input in {took:.1f} s "
        f"({rate:.0f}/s each); {len(acked)} HTTP records in batches answered 200 (sync = \"always\"), "
        f"the last batch in flight; SIGKILL to QEMU right after the last TCP write")

    recv_tcp.start()
    recv_http.start()
    # Boot B has no seed attached: the relay runs on the copy of the last seed kept on the data
    # disk (and that copy asks for the verify at boot).
    b = Guest("B", accel, 512, data, None, direct=True, ports=ports)
    figure("boot-to-ready after the power cut (direct kernel boot)", f"{b.wait_ready():.1f} s ({accel})")
    m = b.wait_console(r"inspect --verify exit=(\d+)", 10)
    verify = re.findall(r"verify: (.*)", b.console())
    for line in verify:
        log(f"  guest: ringrelay inspect /var/lib/ringrelay --verify: {line.strip()}")
    if not m or m.group(1) != "0" or sum("verify          clean" in v for v in verify) != 2:
        b.fail("`ringrelay inspect --verify` after the power cut is not clean")
    if "using the copy of the last seed on the data disk" not in b.console():
        b.fail("without a seed, the copy of the last seed on the data disk was not used")
    log("step 2: inspect --verify after the power cut: clean (both rings); boot B ran on the "
        "copy of the seed kept on the data disk (no seed attached)")
    ok = wait_for(lambda: not recv_http.missing(acked), 120)
    lost_http = recv_http.missing(acked)
    uh, dh = recv_http.count(0, hi)
    inflight = per - len(recv_http.missing(range(hi - per, hi)))
    figure("power cut, HTTP input, sync = \"always\"",
           f"{len(acked)} records in batches answered 200, {len(acked) - len(lost_http)} received after the "
           f"reboot, {len(lost_http)} lost; of the last batch (in flight at the cut, never answered) "
           f"{inflight} of {per} arrived; {dh} duplicates from the replay window")
    if lost_http:
        b.fail(f"{len(lost_http)} records answered 200 were lost (first: {lost_http[:5]})")

    def settled():
        lag = b.metric("ringrelay_output_lag_records", 'feed="tcp-default"')
        return lag == 0 and b.metric("ringrelay_output_connected", 'feed="tcp-default"') == 1

    wait_for(settled, 120)
    time.sleep(1)
    got, dups = recv_tcp.count(lo, hi)
    missing = (hi - lo) - got
    old_missing = n1 - recv_tcp.count(0, n1)[0]
    held = re.search(r"feed=tcp-default path=\S+ created=false records=(\d+)", b.console())
    figure("power cut, TCP input, default sync (interval 1s)",
           f"{hi - lo} sent at {rate:.0f}/s, {got} received after the reboot, {missing} missing "
           f"= {missing / rate:.2f} s of input (sync_interval {SYNC_INTERVAL:.0f} s); the ring held "
           f"{held.group(1) if held else '?'} of the {hi} TCP records after the cut")
    if old_missing:
        b.fail(f"{old_missing} of the first 10,000 TCP records (synced long before) are gone")
    if missing > rate * (SYNC_INTERVAL + 1.0):
        b.fail(f"{missing} TCP records missing: more than about one sync_interval "
               f"({rate * SYNC_INTERVAL:.0f} at {rate:.0f}/s, plus 1 s allowance)")
    log("step 2: PASS: zero loss through HTTP with sync = \"always\"; TCP loss within one sync_interval")
    b.stop()
    recv_tcp.stop()
    recv_http.stop()

    # ---- 3. 256 MiB of memory, a 1 GiB ring -------------------------------------------------
    recv_small = Receiver(free_port())
    recv_small.start()
    small_cfg = f"""[relay]
data_dir = "/var/lib/ringrelay"
admin_listen = "0.0.0.0:9600"

[[feed]]
name = "big-ring"
input = {{ kind = "tcp", listen = "0.0.0.0:5514" }}
buffer = {{ size = "1GiB" }}

[[feed.output]]
name = "siem"
kind = "tcp"
address = "10.0.2.2:{recv_small.port}"
"""
    # A second feed takes TLS with a certificate and key that come from the seed's tls/.
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", os.path.join(WORK, "input.key"), "-out",
                    os.path.join(WORK, "input.pem"), "-subj", "/CN=ringrelay-appliance", "-days", "2",
                    "-addext", "subjectAltName=DNS:ringrelay-appliance"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tls_cfg = small_cfg + f"""
[[feed]]
name = "tls-in"
input = {{ kind = "tls", listen = "0.0.0.0:6514", cert = "tls/input.pem", key = "tls/input.key" }}
buffer = {{ size = "16MiB" }}

[[feed.output]]
name = "siem"
kind = "tcp"
address = "10.0.2.2:{recv_small.port}"
"""
    c = Guest("C", accel, 256, make_disk("small", 1200),
              make_seed("small", tls_cfg, tls=[os.path.join(WORK, f) for f in ("input.pem", "input.key")]),
              direct=True, ports=ports)
    figure("boot-to-ready with 256 MiB of memory and a 1 GiB ring", f"{c.wait_ready():.1f} s ({accel})")
    n3 = 100_000
    start = time.monotonic()
    send_tcp(ports[5514], 0, n3, 1000).close()
    ok = wait_for(lambda: recv_small.count(0, n3)[0] == n3, 180)
    took = time.monotonic() - start
    got, dups = recv_small.count(0, n3)
    rss = c.metric("process_resident_memory_bytes")
    figure("256 MiB guest, 1 GiB ring", f"{got}/{n3} records of 1000 bytes relayed in {took:.1f} s, "
           f"{dups} duplicates; relay resident memory {rss / 2**20:.1f} MiB")
    if not ok:
        c.fail(f"only {got} of {n3} records arrived")
    ctx = ssl.create_default_context(cafile=os.path.join(WORK, "input.pem"))
    with socket.create_connection(("127.0.0.1", ports[6514]), timeout=60) as raw:
        with ctx.wrap_socket(raw, server_hostname="ringrelay-appliance") as tls:
            tls.sendall(b"".join(record("tls", 1_000_000 + n, 200) for n in range(1000)))
    if not wait_for(lambda: recv_small.count(1_000_000, 1_001_000)[0] == 1000, 60):
        c.fail(f"TLS input: {recv_small.count(1_000_000, 1_001_000)[0]} of 1000 records arrived")
    log("step 3: PASS: 100,000 records through a ring 4x the guest's memory; 1,000 through a TLS "
        "input whose certificate and key came from the seed")
    c.stop()
    recv_small.stop()

    # ---- 4. a bad config on the seed --------------------------------------------------------
    bad_cfg = small_cfg.replace('kind = "tcp", listen', 'kind = "tcp", lisen')
    # This seed is an ISO 9660 volume on a CD-ROM (the others are FAT volumes on virtio disks).
    d = Guest("D", accel, 256, make_disk("bad", 256), make_seed("bad", bad_cfg, iso=True),
              direct=True, ports=ports)
    if not d.wait_console(r"ringrelay.service: Failed with result", BOOT_TIMEOUT):
        d.fail("the relay's unit did not fail on a bad config")
    time.sleep(8)  # 4x RestartSec: a restart loop would show by now
    con = d.console()
    starts = len(re.findall(r"Starting ringrelay.service", con))
    errors = [ln for ln in con.splitlines() if "check:" in ln and "ringrelay-image" in ln]
    for ln in errors[:4]:
        log(f"  guest console: {ln.strip()}")
    if "the configuration is not valid" not in con or not errors:
        d.fail("no clear error for the bad config on the serial console")
    if starts != 1:
        d.fail(f"the relay was started {starts} times on a bad config (a restart loop)")
    if not re.search(r"configuration from the seed /dev/sr0", con):
        d.fail("the ISO seed on the CD-ROM was not read")
    log("step 4: PASS: a bad config from an ISO seed on a CD-ROM is reported on the serial "
        "console; the unit stays failed")
    d.stop()


if __name__ == "__main__":
    try:
        main()
    finally:
        cleanup()
    print("image-test: figures (image/build.sh's, from build-info.txt, then this test's):")
    try:
        for line in open(os.path.join(OUT, "build-info.txt")):
            print(f"  {line.rstrip()}")
    except OSError:
        pass
    for name, value in figures:
        print(f"  {name}: {value}")
    print("  guest memory needed: 256 MiB is enough (step 3: boot, a 1 GiB ring, 100,000 records)")
    print(f"image-test: PASS in {time.monotonic() - T0:.0f} s")
    print("image-test: 4 passed, 0 failed")
