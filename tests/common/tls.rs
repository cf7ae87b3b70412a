//! TLS test equipment: certificates made at run time with rcgen, a blocking rustls client, and a
//! TLS syslog receiver (RFC 5425 octet-counted frames) that can be stopped and restarted with
//! another certificate on the same address.
#![allow(dead_code)]

use std::io::{BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, StreamOwned};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Certificate files in a directory: `ca.pem`, `other-ca.pem`, and `NAME.pem` + `NAME.key` for
/// `server` (CN relay.test, SAN localhost/127.0.0.1), `server2` (CN relay-rotated, same CA),
/// `server-other` (signed by the other CA), `client` (CN connector-1), `client-other` (other
/// CA), `client-expired` (expired in 2020).
pub struct Pki {
    pub dir: PathBuf,
}

fn ca(cn: &str) -> (CertificateParams, KeyPair) {
    let key = KeyPair::generate().expect("ca key");
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    (p, key)
}

impl Pki {
    pub fn new(dir: &Path) -> Pki {
        let dir = dir.join("pki");
        std::fs::create_dir_all(&dir).unwrap();
        let (ca_p, ca_k) = ca("Test CA");
        std::fs::write(dir.join("ca.pem"), ca_p.self_signed(&ca_k).unwrap().pem()).unwrap();
        let (oca_p, oca_k) = ca("Other CA");
        std::fs::write(
            dir.join("other-ca.pem"),
            oca_p.self_signed(&oca_k).unwrap().pem(),
        )
        .unwrap();
        let ca_i = Issuer::new(ca_p, ca_k);
        let oca_i = Issuer::new(oca_p, oca_k);
        let leaf = |name: &str, cn: &str, issuer: &Issuer<'_, KeyPair>, expired: bool| {
            let key = KeyPair::generate().unwrap();
            let mut p =
                CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                    .unwrap();
            p.distinguished_name.push(DnType::CommonName, cn);
            if expired {
                p.not_before = rcgen::date_time_ymd(2019, 1, 1);
                p.not_after = rcgen::date_time_ymd(2020, 1, 1);
            }
            let cert = p.signed_by(&key, issuer).unwrap();
            std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
            std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
        };
        leaf("server", "relay.test", &ca_i, false);
        leaf("server2", "relay-rotated", &ca_i, false);
        leaf("server-other", "impostor", &oca_i, false);
        leaf("client", "connector-1", &ca_i, false);
        leaf("client-other", "connector-x", &oca_i, false);
        leaf("client-expired", "connector-old", &ca_i, true);
        Pki { dir }
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    pub fn certs(&self, name: &str) -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_file_iter(self.path(&format!("{name}.pem")))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    pub fn key(&self, name: &str) -> PrivateKeyDer<'static> {
        PrivateKeyDer::from_pem_file(self.path(&format!("{name}.key"))).unwrap()
    }

    /// A client configuration trusting `ca.pem`, with the client certificate `name` if given.
    pub fn client_config(&self, name: Option<&str>) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        for c in self.certs("ca") {
            roots.add(c).unwrap();
        }
        let b = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        Arc::new(match name {
            Some(n) => b.with_client_auth_cert(self.certs(n), self.key(n)).unwrap(),
            None => b.with_no_client_auth(),
        })
    }

    /// A server configuration with certificate `name` that requires a client certificate
    /// signed by `ca.pem`.
    pub fn server_config_mtls(&self, name: &str) -> Arc<ServerConfig> {
        let mut roots = RootCertStore::empty();
        for c in self.certs("ca") {
            roots.add(c).unwrap();
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider(),
        )
        .build()
        .unwrap();
        Arc::new(
            ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_client_cert_verifier(verifier)
                .with_single_cert(self.certs(name), self.key(name))
                .unwrap(),
        )
    }

    /// A server configuration with certificate `name` (no client authentication).
    pub fn server_config(&self, name: &str) -> Arc<ServerConfig> {
        Arc::new(
            ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(self.certs(name), self.key(name))
                .unwrap(),
        )
    }
}

pub type TlsStream = StreamOwned<ClientConnection, TcpStream>;

/// Connects to `addr` with TLS as `localhost` and completes the handshake.
pub fn connect(addr: SocketAddr, cfg: Arc<ClientConfig>) -> std::io::Result<TlsStream> {
    let sock = TcpStream::connect(addr)?;
    sock.set_read_timeout(Some(Duration::from_secs(20)))?;
    sock.set_write_timeout(Some(Duration::from_secs(20)))?;
    let conn = ClientConnection::new(cfg, ServerName::try_from("localhost").unwrap())
        .map_err(std::io::Error::other)?;
    let mut s = StreamOwned::new(conn, sock);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock)?;
    }
    Ok(s)
}

/// Sends `rec n` records `range` newline-framed over TLS, closes (close_notify + FIN) and waits
/// for the relay to close its side: it has read everything by then.
pub fn send_records_tls(s: &mut TlsStream, range: std::ops::Range<u64>, len: usize) {
    let mut batch = Vec::with_capacity(1 << 20);
    for n in range {
        batch.extend_from_slice(&crate::common::record(n, len));
        batch.push(b'\n');
        if batch.len() >= 1 << 18 {
            s.write_all(&batch).expect("send over TLS");
            batch.clear();
        }
    }
    s.write_all(&batch).expect("send over TLS");
    s.flush().unwrap();
}

/// Closes a TLS sender cleanly and waits for the relay's EOF.
pub fn close_tls(mut s: TlsStream) {
    s.conn.send_close_notify();
    let _ = s.conn.complete_io(&mut s.sock);
    let _ = s.sock.shutdown(Shutdown::Write);
    let mut buf = [0u8; 256];
    while s.sock.read(&mut buf).is_ok_and(|n| n > 0) {}
}

/// A TLS syslog receiver on `addr`: collects RFC 5425 octet-counted frames.
pub struct TlsSink {
    pub addr: SocketAddr,
    pub frames: Arc<Mutex<Vec<Vec<u8>>>>,
    /// Frames whose header was not `LEN SP`.
    pub bad: Arc<Mutex<u64>>,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl TlsSink {
    pub fn start(addr: SocketAddr, cfg: Arc<ServerConfig>) -> TlsSink {
        Self::start_sharing(addr, cfg, Arc::default())
    }

    /// A receiver that appends to `frames` (to keep counting across restarts).
    pub fn start_sharing(
        addr: SocketAddr,
        cfg: Arc<ServerConfig>,
        frames: Arc<Mutex<Vec<Vec<u8>>>>,
    ) -> TlsSink {
        let listener = (0..100)
            .find_map(|_| {
                TcpListener::bind(addr).ok().or_else(|| {
                    thread::sleep(Duration::from_millis(50));
                    None
                })
            })
            .expect("bind the TLS sink");
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let bad: Arc<Mutex<u64>> = Arc::default();
        let (stop2, conns2, frames2, bad2) =
            (stop.clone(), conns.clone(), frames.clone(), bad.clone());
        let thread = thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                let Ok((sock, _)) = listener.accept() else {
                    thread::sleep(Duration::from_millis(5));
                    continue;
                };
                sock.set_nonblocking(false).unwrap();
                conns2.lock().unwrap().push(sock.try_clone().unwrap());
                let (cfg, frames, bad) = (cfg.clone(), frames2.clone(), bad2.clone());
                thread::spawn(move || {
                    let Ok(conn) = rustls::ServerConnection::new(cfg) else {
                        return;
                    };
                    let mut r = BufReader::with_capacity(1 << 20, StreamOwned::new(conn, sock));
                    loop {
                        // LEN SP MSG
                        let mut len = 0usize;
                        let mut b = [0u8; 1];
                        let mut digits = 0;
                        loop {
                            if r.read_exact(&mut b).is_err() {
                                return;
                            }
                            match b[0] {
                                b'0'..=b'9' if digits < 10 => {
                                    len = len * 10 + usize::from(b[0] - b'0');
                                    digits += 1;
                                }
                                b' ' if digits > 0 => break,
                                _ => {
                                    *bad.lock().unwrap() += 1;
                                    return;
                                }
                            }
                        }
                        let mut msg = vec![0u8; len];
                        if r.read_exact(&mut msg).is_err() {
                            return;
                        }
                        frames.lock().unwrap().push(msg);
                    }
                });
            }
        });
        TlsSink {
            addr,
            frames,
            bad,
            stop,
            conns,
            thread: Some(thread),
        }
    }

    pub fn count(&self) -> usize {
        self.frames.lock().unwrap().len()
    }

    /// How many times each record number arrived (frames `rec <n> ...`).
    pub fn counts(&self) -> std::collections::HashMap<u64, u32> {
        let mut m = std::collections::HashMap::new();
        for f in self.frames.lock().unwrap().iter() {
            if let Some(n) = crate::common::record_number(f) {
                *m.entry(n).or_insert(0) += 1;
            }
        }
        m
    }
}

impl Drop for TlsSink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}
