//! TLS material and policy, sans-I/O: PEM files → rustls configurations, why a handshake
//! failed (as a metric label), and the little X.509 the relay reads itself (a certificate's
//! subject for the log, its notAfter for the start-up warning).
//!
//! The crypto provider is `ring`: a small C/asm build with the ordinary C compiler, no cmake,
//! NASM or Go as aws-lc-rs needs, and a smaller binary on an appliance. TLS 1.2 and 1.3 only.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::log::Level;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, Error, PeerIncompatible, RootCertStore,
    ServerConfig, SignatureScheme,
};

/// Where the system's CA bundle is looked for when an output names no `ca` (after
/// `$SSL_CERT_FILE`): Debian/Ubuntu/Alpine, then RHEL/Fedora.
pub const SYSTEM_CA_FILES: [&str; 2] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
];

/// Bytes of TLS records a connection may queue for sending (and plaintext it may buffer).
pub const BUFFER_LIMIT: usize = 64 << 10;

static VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// Writes what rustls has queued (handshake messages, alerts, records) to `sock` until nothing
/// is left. `WouldBlock` and other errors come back with the rest still queued; a socket that
/// takes nothing is `WriteZero`.
pub fn flush<D>(
    conn: &mut rustls::ConnectionCommon<D>,
    sock: &mut impl std::io::Write,
) -> std::io::Result<()> {
    use std::io::ErrorKind;
    while conn.wants_write() {
        match conn.write_tls(sock) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The crypto provider (ring).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A TLS file that cannot be used: the configuration key naming it, and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileError {
    /// The configuration key (`cert`, `key`, `client_ca`, `ca`, `client_cert`, `client_key`).
    pub key: &'static str,
    /// The message, naming the file.
    pub msg: String,
}

/// A certificate that is already expired (a warning at start-up, not an error).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expired {
    /// The file it came from.
    pub path: PathBuf,
    /// Its subject CN (or first SAN).
    pub subject: String,
    /// Its notAfter, RFC 3339.
    pub not_after: String,
}

/// A TLS input's files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerFiles {
    /// Certificate chain, leaf first (PEM).
    pub cert: PathBuf,
    /// Private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CAs that sign client certificates; set → client certificates are required.
    pub client_ca: Option<PathBuf>,
}

/// A TLS output's files and verification policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientFiles {
    /// CAs to verify the receiver with (`None`: the system store).
    pub ca: Option<PathBuf>,
    /// Client certificate chain and key for mutual TLS.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// Accept any server certificate (labs only).
    pub insecure_skip_verify: bool,
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, FileError> {
    std::fs::read(path).map_err(|e| FileError {
        key,
        msg: format!("cannot read {}: {e}", path.display()),
    })
}

fn load_certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, FileError> {
    let bytes = read(key, path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| FileError {
            key,
            msg: format!("{} is not a PEM certificate file: {e}", path.display()),
        })?;
    if certs.is_empty() {
        return Err(FileError {
            key,
            msg: format!(
                "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                path.display()
            ),
        });
    }
    Ok(certs)
}

fn load_key(key: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, FileError> {
    let bytes = read(key, path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| FileError {
        key,
        msg: format!(
            "{} holds no PEM private key (PKCS#8, PKCS#1 or SEC1): {e}",
            path.display()
        ),
    })
}

fn load_roots(
    key: &'static str,
    path: &Path,
    expired: &mut Vec<Expired>,
) -> Result<RootCertStore, FileError> {
    let certs = load_certs(key, path)?;
    let mut roots = RootCertStore::empty();
    for (i, c) in certs.into_iter().enumerate() {
        note_expiry(path, &c, expired);
        roots.add(c).map_err(|e| FileError {
            key,
            msg: format!(
                "{}: certificate #{} is not a usable CA certificate: {e}",
                path.display(),
                i + 1
            ),
        })?;
    }
    Ok(roots)
}

/// The system's CA bundle: `$SSL_CERT_FILE`, else the first of [`SYSTEM_CA_FILES`] that exists.
/// (Read directly rather than through rustls-native-certs: on Linux that crate reads the same
/// files, and one path list is all the relay needs.)
fn system_roots() -> Result<RootCertStore, FileError> {
    let env = std::env::var_os("SSL_CERT_FILE").map(PathBuf::from);
    let path = env
        .into_iter()
        .chain(SYSTEM_CA_FILES.iter().map(PathBuf::from))
        .find(|p| p.exists())
        .ok_or_else(|| FileError {
            key: "ca",
            msg: format!(
                "no ca set and no system CA bundle found ($SSL_CERT_FILE, {}): set ca",
                SYSTEM_CA_FILES.join(", ")
            ),
        })?;
    let certs = load_certs("ca", &path)?;
    let mut roots = RootCertStore::empty();
    let (_, bad) = roots.add_parsable_certificates(certs);
    if roots.is_empty() {
        return Err(FileError {
            key: "ca",
            msg: format!(
                "{}: none of its certificates is usable ({bad} rejected)",
                path.display()
            ),
        });
    }
    Ok(roots)
}

fn note_expiry(path: &Path, der: &[u8], expired: &mut Vec<Expired>) {
    let now = crate::clock::wall_ns() / 1_000_000_000;
    if let Some(info) = cert_info(der) {
        if info.not_after.is_some_and(|t| t < now) {
            expired.push(Expired {
                path: path.to_path_buf(),
                subject: info.subject,
                not_after: crate::clock::rfc3339(info.not_after.unwrap_or(0) * 1_000_000_000),
            });
        }
    }
}

fn key_mismatch(key: &'static str, cert: &Path, keyfile: &Path, e: &Error) -> FileError {
    let msg = match e {
        Error::InconsistentKeys(_) => format!(
            "{} does not match the certificate in {}",
            keyfile.display(),
            cert.display()
        ),
        e => format!("{} with {}: {e}", keyfile.display(), cert.display()),
    };
    FileError { key, msg }
}

/// Builds a TLS input's configuration from its files.
pub fn server_config(f: &ServerFiles) -> Result<(Arc<ServerConfig>, Vec<Expired>), FileError> {
    let mut expired = Vec::new();
    let certs = load_certs("cert", &f.cert)?;
    note_expiry(&f.cert, &certs[0], &mut expired);
    let key = load_key("key", &f.key)?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| FileError {
            key: "cert",
            msg: format!("TLS versions: {e}"),
        })?;
    let builder = match &f.client_ca {
        Some(ca) => {
            let roots = load_roots("client_ca", ca, &mut expired)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| FileError {
                    key: "client_ca",
                    msg: format!("{}: {e}", ca.display()),
                })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder
        .with_single_cert(certs, key)
        .map_err(|e| key_mismatch("key", &f.cert, &f.key, &e))?;
    // No TLS 1.3 session tickets: a log sender never reads after its handshake, so tickets
    // would sit unread in its socket, and closing a socket with unread data sends a reset,
    // which discards what the relay had not read yet. Senders stream on long connections;
    // a full handshake per reconnect costs nothing that matters.
    cfg.send_tls13_tickets = 0;
    Ok((Arc::new(cfg), expired))
}

/// Builds a TLS output's configuration from its files.
pub fn client_config(f: &ClientFiles) -> Result<(Arc<ClientConfig>, Vec<Expired>), FileError> {
    let mut expired = Vec::new();
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| FileError {
            key: "ca",
            msg: format!("TLS versions: {e}"),
        })?;
    let builder = if f.insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider())))
    } else {
        let roots = match &f.ca {
            Some(ca) => load_roots("ca", ca, &mut expired)?,
            None => system_roots()?,
        };
        builder.with_root_certificates(roots)
    };
    let cfg = match &f.client_cert {
        Some((cert, key)) => {
            let certs = load_certs("client_cert", cert)?;
            note_expiry(cert, &certs[0], &mut expired);
            let k = load_key("client_key", key)?;
            builder
                .with_client_auth_cert(certs, k)
                .map_err(|e| key_mismatch("client_key", cert, key, &e))?
        }
        None => builder.with_no_client_auth(),
    };
    Ok((Arc::new(cfg), expired))
}

/// `insecure_skip_verify`: any certificate is accepted; signatures are still checked so the
/// handshake itself is sound.
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Why handshakes fail, as metric labels; [`failure_reason`] maps onto these.
pub const FAILURE_REASONS: [&str; 13] = [
    "unknown_ca",
    "expired",
    "not_yet_valid",
    "wrong_name",
    "bad_certificate",
    "no_client_certificate",
    "protocol_version",
    "incompatible",
    "not_tls",
    "alert_received",
    "timeout",
    "closed",
    "other",
];

/// Index of `reason` in [`FAILURE_REASONS`] (the last, `other`, if unknown).
pub fn reason_index(reason: &str) -> usize {
    FAILURE_REASONS
        .iter()
        .position(|r| *r == reason)
        .unwrap_or(FAILURE_REASONS.len() - 1)
}

/// The metric label of a handshake error.
pub fn failure_reason(e: &Error) -> &'static str {
    match e {
        Error::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer => "unknown_ca",
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired",
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "not_yet_valid"
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                "wrong_name"
            }
            _ => "bad_certificate",
        },
        Error::NoCertificatesPresented => "no_client_certificate",
        Error::PeerIncompatible(p) => match p {
            PeerIncompatible::Tls12NotOffered
            | PeerIncompatible::Tls12NotOfferedOrEnabled
            | PeerIncompatible::SupportedVersionsExtensionRequired
            | PeerIncompatible::ServerDoesNotSupportTls12Or13
            | PeerIncompatible::ServerTlsVersionIsDisabledByOurConfig => "protocol_version",
            _ => "incompatible",
        },
        Error::InvalidMessage(_) => "not_tls",
        Error::AlertReceived(_) => "alert_received",
        _ => "other",
    }
}

/// What the relay reads from a certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// Subject CN, else the first DNS/IP/email SAN, else `-`.
    pub subject: String,
    /// notAfter, Unix seconds.
    pub not_after: Option<u64>,
}

/// One DER element: (tag, contents, rest).
fn der(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, b) = b.split_first()?;
    let (&l, mut b) = b.split_first()?;
    let len = if l < 0x80 {
        usize::from(l)
    } else {
        let n = usize::from(l & 0x7f);
        if n == 0 || n > 4 || b.len() < n {
            return None;
        }
        let mut len = 0usize;
        for &x in &b[..n] {
            len = (len << 8) | usize::from(x);
        }
        b = &b[n..];
        len
    };
    (b.len() >= len).then(|| (tag, &b[..len], &b[len..]))
}

fn der_time(tag: u8, v: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(v).ok()?;
    let (year, rest) = match tag {
        0x17 => {
            let yy: i64 = s.get(..2)?.parse().ok()?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, s.get(2..)?)
        }
        0x18 => (s.get(..4)?.parse().ok()?, s.get(4..)?),
        _ => return None,
    };
    let f = |i: usize| -> Option<u32> { rest.get(i..i + 2)?.parse().ok() };
    crate::clock::from_civil(year, f(0)?, f(2)?, f(4)?, f(6)?, f(8)?)
}

/// Subject and notAfter of a DER certificate (`None` if it does not parse as X.509).
pub fn cert_info(cert: &[u8]) -> Option<CertInfo> {
    let (_, cert, _) = der(cert)?;
    let (_, tbs, _) = der(cert)?;
    let (tag, _, after_version) = der(tbs)?;
    let mut r = if tag == 0xa0 { after_version } else { tbs };
    for _ in 0..3 {
        r = der(r)?.2; // serial, signature algorithm, issuer
    }
    let (_, validity, r) = der(r)?;
    let (_, subject, r) = der(r)?;
    let (_, _, not_after) = der(validity)?;
    let (ttag, tval, _) = der(not_after)?;
    let not_after = der_time(ttag, tval);
    let mut cn = None;
    let mut rdns = subject;
    while let Some((_, set, rest)) = der(rdns) {
        rdns = rest;
        if let Some((_, atv, _)) = der(set) {
            if let Some((0x06, oid, rest)) = der(atv) {
                if oid == [0x55, 0x04, 0x03] {
                    cn = der(rest).map(|(_, v, _)| String::from_utf8_lossy(v).into_owned());
                }
            }
        }
    }
    let subject = match cn {
        Some(cn) => cn,
        None => first_san(r).unwrap_or_else(|| "-".to_string()),
    };
    Some(CertInfo { subject, not_after })
}

/// The first SAN of a certificate, from the TBS elements after the subject.
fn first_san(mut r: &[u8]) -> Option<String> {
    while let Some((tag, v, rest)) = der(r) {
        r = rest;
        if tag != 0xa3 {
            continue;
        }
        let (_, mut exts, _) = der(v)?;
        while let Some((_, ext, rest)) = der(exts) {
            exts = rest;
            let (_, oid, mut e) = der(ext)?;
            if oid != [0x55, 0x1d, 0x11] {
                continue;
            }
            if let Some((0x01, _, rest)) = der(e) {
                e = rest; // critical flag
            }
            let (_, octets, _) = der(e)?;
            let (_, names, _) = der(octets)?;
            let (t, name, _) = der(names)?;
            return Some(match t {
                0x87 if name.len() == 4 => {
                    std::net::Ipv4Addr::new(name[0], name[1], name[2], name[3]).to_string()
                }
                0x87 if name.len() == 16 => {
                    let a: [u8; 16] = name.try_into().ok()?;
                    std::net::Ipv6Addr::from(a).to_string()
                }
                _ => String::from_utf8_lossy(name).into_owned(),
            });
        }
    }
    None
}

/// Logs each already-expired certificate (a warning: the relay still starts): of the feed's
/// input, or of its output named `output`.
pub fn log_expired(feed: &str, output: Option<&str>, expired: &[Expired]) {
    for e in expired {
        match output {
            None => crate::log!(
                Level::Warn,
                "certificate_expired",
                feed = feed,
                side = "input",
                file = e.path.display(),
                subject = e.subject,
                not_after = e.not_after
            ),
            Some(output) => crate::log!(
                Level::Warn,
                "certificate_expired",
                feed = feed,
                side = "output",
                output = output,
                file = e.path.display(),
                subject = e.subject,
                not_after = e.not_after
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cert(cn: Option<&str>, sans: &[&str], not_after: (i32, u8, u8)) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let sans: Vec<String> = sans.iter().map(ToString::to_string).collect();
        let mut p = rcgen::CertificateParams::new(sans).unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = cn {
            p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        }
        p.distinguished_name
            .push(rcgen::DnType::OrganizationName, "Example Org");
        p.not_before = rcgen::date_time_ymd(2019, 1, 1);
        p.not_after = rcgen::date_time_ymd(not_after.0, not_after.1, not_after.2);
        p.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn cert_info_reads_the_cn_and_not_after() {
        let der = cert(Some("connector-1"), &["localhost"], (2020, 1, 1));
        let info = cert_info(&der).unwrap();
        assert_eq!(info.subject, "connector-1");
        assert_eq!(
            info.not_after,
            crate::clock::from_civil(2020, 1, 1, 0, 0, 0)
        );
        // notAfter from 2050 on is a GeneralizedTime.
        let der = cert(Some("x"), &[], (2051, 6, 30));
        assert_eq!(
            cert_info(&der).unwrap().not_after,
            crate::clock::from_civil(2051, 6, 30, 0, 0, 0)
        );
    }

    #[test]
    fn cert_info_falls_back_to_the_first_san() {
        let der = cert(None, &["10.1.2.3", "relay.example"], (2030, 1, 1));
        assert_eq!(cert_info(&der).unwrap().subject, "10.1.2.3");
        let der = cert(None, &["relay.example"], (2030, 1, 1));
        assert_eq!(cert_info(&der).unwrap().subject, "relay.example");
        let der = cert(None, &[], (2030, 1, 1));
        assert_eq!(cert_info(&der).unwrap().subject, "-");
    }

    #[test]
    fn handshake_errors_map_to_their_reasons() {
        let cases = [
            (
                Error::InvalidCertificate(CertificateError::UnknownIssuer),
                "unknown_ca",
            ),
            (
                Error::InvalidCertificate(CertificateError::Expired),
                "expired",
            ),
            (Error::NoCertificatesPresented, "no_client_certificate"),
            (
                Error::PeerIncompatible(PeerIncompatible::Tls12NotOffered),
                "protocol_version",
            ),
            (
                Error::PeerIncompatible(PeerIncompatible::NoCipherSuitesInCommon),
                "incompatible",
            ),
            (
                Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType),
                "not_tls",
            ),
            (Error::HandshakeNotComplete, "other"),
        ];
        for (e, reason) in cases {
            assert_eq!(failure_reason(&e), reason, "{e:?}");
            assert_eq!(FAILURE_REASONS[reason_index(reason)], reason);
        }
    }

    proptest! {
        /// The DER walk reads certificates from files and peers: no input makes it panic.
        #[test]
        fn cert_info_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = cert_info(&bytes);
        }

        #[test]
        fn cert_info_survives_truncation_and_bit_flips(cut in 0usize..2000, flip in 0usize..16000) {
            let der = cert(Some("connector-1"), &["127.0.0.1"], (2030, 1, 1));
            let _ = cert_info(&der[..cut.min(der.len())]);
            let mut d = der.clone();
            let i = flip % (d.len() * 8);
            d[i / 8] ^= 1 << (i % 8);
            let _ = cert_info(&d);
        }
    }
}
