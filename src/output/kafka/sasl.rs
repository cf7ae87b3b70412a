//! SASL client steps for the Kafka output: PLAIN and SCRAM-SHA-256/512, bytes in, bytes out.
//!
//! The session sends these bytes in SaslAuthenticate requests after a SaslHandshake naming the
//! mechanism (<https://kafka.apache.org/documentation/#security_sasl>, KIP-84 for SCRAM, KIP-152
//! for SaslAuthenticate). Nothing here does I/O or keeps a socket: the session feeds the
//! broker's answers in and sends what comes out.
//!
//! ## PLAIN (RFC 4616)
//! One message, `\0username\0password` (no authorization identity). Only over TLS: the
//! password travels as it is.
//!
//! ## SCRAM (RFC 5802, RFC 7677)
//! ```text
//! client-first  n,,n=<saslname>,r=<client nonce>
//! server-first  r=<client nonce + server nonce>,s=<base64 salt>,i=<iterations>
//! client-final  c=biws,r=<client nonce + server nonce>,p=<base64 ClientProof>
//! server-final  v=<base64 ServerSignature>   or   e=<error>
//! ```
//! `biws` is base64 of the GS2 header `n,,` (no channel binding, no authorization identity).
//! With `H` the hash and `HMAC` over it:
//!
//! ```text
//! SaltedPassword  = PBKDF2-HMAC-H(password, salt, iterations)
//! ClientKey       = HMAC(SaltedPassword, "Client Key")
//! StoredKey       = H(ClientKey)
//! AuthMessage     = client-first-bare "," server-first "," client-final-without-proof
//! ClientProof     = ClientKey XOR HMAC(StoredKey, AuthMessage)
//! ServerKey       = HMAC(SaltedPassword, "Server Key")
//! ServerSignature = HMAC(ServerKey, AuthMessage)
//! ```
//! The broker proves it knows the password by sending `ServerSignature`: a man in the middle
//! that does not know it is caught at [`Scram::verify_server_final`].
//!
//! As Kafka's own client (`ScramFormatter`), the password is used as its UTF-8 bytes without
//! SASLprep, and the username is escaped (`=` → `=3D`, `,` → `=2C`) without normalisation, so
//! credentials created with `kafka-configs.sh` match.
//!
//! PBKDF2 runs on the relay's one event-loop thread: the iteration count the broker asks for is
//! bounded ([`MIN_ITERATIONS`] is Kafka's own minimum, [`MAX_ITERATIONS`] ours), or a broker
//! (or whoever answers in its place) could stall every input and output for seconds. Measured
//! with ring on a shared 2-core Xeon VM: 4096 iterations take about 2 ms, 65536 about 65 ms
//! (SHA-256 and SHA-512 alike), once per connection.

use std::fmt;
use std::num::NonZeroU32;

use ring::rand::{SecureRandom, SystemRandom};
use ring::{digest, hmac, pbkdf2};

use crate::json::Base64;

/// The fewest PBKDF2 iterations accepted: Kafka's minimum for SCRAM-SHA-256 and -512.
pub const MIN_ITERATIONS: u32 = 4096;
/// The most PBKDF2 iterations accepted: PBKDF2 blocks the event loop while it runs.
pub const MAX_ITERATIONS: u32 = 65536;

/// `n,,` in base64: the GS2 header echoed in client-final.
const CHANNEL_BINDING: &str = "biws";

/// Appends PLAIN's one message (RFC 4616) to `out`: `\0username\0password`, no authorization
/// identity (the broker takes the username's).
pub fn plain(username: &str, password: &str, out: &mut Vec<u8>) {
    out.push(0);
    out.extend_from_slice(username.as_bytes());
    out.push(0);
    out.extend_from_slice(password.as_bytes());
}

/// A client nonce for [`Scram::new`]: 18 bytes from the system's random generator in base64,
/// 24 printable characters without `,`. Errors only if the system generator does.
pub fn nonce() -> Result<[u8; 24], ScramError> {
    let mut raw = [0u8; 18];
    SystemRandom::new()
        .fill(&mut raw)
        .map_err(|_| ScramError::Random)?;
    let mut out = [0u8; 24];
    // 18 bytes are exactly 24 characters, no padding.
    out.copy_from_slice(Base64(&raw).to_string().as_bytes());
    Ok(out)
}

/// The hash of a SCRAM mechanism.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScramHash {
    /// SCRAM-SHA-256 (RFC 7677).
    Sha256,
    /// SCRAM-SHA-512 (Kafka's KIP-84; the same steps over SHA-512).
    Sha512,
}

impl ScramHash {
    /// The mechanism's name in a SaslHandshake request.
    pub fn mechanism(self) -> &'static str {
        match self {
            ScramHash::Sha256 => "SCRAM-SHA-256",
            ScramHash::Sha512 => "SCRAM-SHA-512",
        }
    }

    fn pbkdf2(self) -> pbkdf2::Algorithm {
        match self {
            ScramHash::Sha256 => pbkdf2::PBKDF2_HMAC_SHA256,
            ScramHash::Sha512 => pbkdf2::PBKDF2_HMAC_SHA512,
        }
    }

    fn hmac(self) -> hmac::Algorithm {
        match self {
            ScramHash::Sha256 => hmac::HMAC_SHA256,
            ScramHash::Sha512 => hmac::HMAC_SHA512,
        }
    }

    fn digest(self) -> &'static digest::Algorithm {
        match self {
            ScramHash::Sha256 => &digest::SHA256,
            ScramHash::Sha512 => &digest::SHA512,
        }
    }
}

/// Why a SCRAM exchange failed. The broker's messages are untrusted input: every variant but
/// [`Random`](ScramError::Random) and [`OutOfOrder`](ScramError::OutOfOrder) is the broker's
/// doing (or that of whoever answers in its place).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScramError {
    /// server-first is not `r=..,s=..,i=..`: the broker speaks another mechanism or version,
    /// or the answer is corrupt. Names the part that is wrong.
    Malformed(&'static str),
    /// server-first starts with `m=`: an extension this client must understand and does not.
    MandatoryExtension,
    /// The broker's nonce does not start with ours: an answer to another exchange (a replay
    /// or a confused proxy).
    NonceMismatch,
    /// The broker asks for fewer PBKDF2 iterations than Kafka allows: a downgrade.
    IterationsTooLow(u32),
    /// The broker asks for more PBKDF2 iterations than the event loop can afford: the
    /// credential must be recreated with fewer (`kafka-configs.sh ... iterations=`).
    IterationsTooHigh(u32),
    /// server-final carries a signature that is not the one the password gives: the broker
    /// does not know the password (wrong credentials on its side, or not the real broker).
    ServerSignature,
    /// server-final is `e=...`: the broker refused the authentication, for the reason given.
    Server(String),
    /// The system random generator failed (no nonce could be made).
    Random,
    /// [`Scram::verify_server_final`] before [`Scram::client_final`]: a bug in the session.
    OutOfOrder,
}

impl fmt::Display for ScramError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScramError::Malformed(what) => {
                write!(f, "the broker's SCRAM message is malformed: {what}")
            }
            ScramError::MandatoryExtension => {
                f.write_str("the broker requires a SCRAM extension (m=) this client lacks")
            }
            ScramError::NonceMismatch => f.write_str(
                "the broker's SCRAM nonce does not extend ours (a foreign or replayed answer)",
            ),
            ScramError::IterationsTooLow(n) => {
                write!(f, "iteration count {n} below {MIN_ITERATIONS}")
            }
            ScramError::IterationsTooHigh(n) => write!(
                f,
                "iteration count {n} above {MAX_ITERATIONS} (PBKDF2 would stall the event loop; \
                 recreate the SCRAM credential with fewer iterations)"
            ),
            ScramError::ServerSignature => {
                f.write_str("the broker could not prove it knows the password")
            }
            ScramError::Server(e) => write!(f, "the broker refused the authentication: {e}"),
            ScramError::Random => f.write_str("the system random number generator failed"),
            ScramError::OutOfOrder => {
                f.write_str("SCRAM server-final checked before client-final (a bug)")
            }
        }
    }
}

impl std::error::Error for ScramError {}

/// What client-final leaves for checking server-final.
struct Expected {
    /// HMAC key of ServerKey.
    server_key: hmac::Key,
    /// The AuthMessage ServerSignature is computed over.
    auth_message: Vec<u8>,
}

/// A SCRAM client exchange: [`client_first`](Scram::client_first), then
/// [`client_final`](Scram::client_final) of the broker's server-first, then
/// [`verify_server_final`](Scram::verify_server_final) of its server-final.
pub struct Scram {
    hash: ScramHash,
    /// `n=<saslname>,r=<nonce>`: client-first without the GS2 header.
    client_first_bare: Vec<u8>,
    /// The client nonce.
    nonce: Vec<u8>,
    password: Vec<u8>,
    /// Set by `client_final`.
    expected: Option<Expected>,
}

impl fmt::Debug for Scram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not the password.
        f.debug_struct("Scram")
            .field("hash", &self.hash)
            .field(
                "client_first_bare",
                &String::from_utf8_lossy(&self.client_first_bare),
            )
            .field("client_final_sent", &self.expected.is_some())
            .finish_non_exhaustive()
    }
}

impl Scram {
    /// An exchange for `username` and `password` with the client `nonce` (printable ASCII
    /// without `,`, from [`nonce`]; given so that tests can replay known exchanges).
    pub fn new(hash: ScramHash, username: &str, password: &str, nonce: &[u8]) -> Scram {
        let mut client_first_bare = Vec::with_capacity(username.len() + nonce.len() + 8);
        client_first_bare.extend_from_slice(b"n=");
        sasl_name(username, &mut client_first_bare);
        client_first_bare.extend_from_slice(b",r=");
        client_first_bare.extend_from_slice(nonce);
        Scram {
            hash,
            client_first_bare,
            nonce: nonce.to_vec(),
            password: password.as_bytes().to_vec(),
            expected: None,
        }
    }

    /// client-first: `n,,n=<saslname>,r=<nonce>`.
    pub fn client_first(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(3 + self.client_first_bare.len());
        out.extend_from_slice(b"n,,");
        out.extend_from_slice(&self.client_first_bare);
        out
    }

    /// client-final for the broker's `server_first`: checks its nonce and iteration count,
    /// runs PBKDF2, and returns `c=biws,r=<nonce>,p=<base64 ClientProof>`.
    pub fn client_final(&mut self, server_first: &[u8]) -> Result<Vec<u8>, ScramError> {
        let first = parse_server_first(server_first)?;
        if !first.nonce.starts_with(&self.nonce) {
            return Err(ScramError::NonceMismatch);
        }
        if first.iterations < MIN_ITERATIONS {
            return Err(ScramError::IterationsTooLow(first.iterations));
        }
        if first.iterations > MAX_ITERATIONS {
            return Err(ScramError::IterationsTooHigh(first.iterations));
        }
        let iterations =
            NonZeroU32::new(first.iterations).ok_or(ScramError::IterationsTooLow(0))?;

        let len = self.hash.digest().output_len();
        let mut salted = [0u8; 64];
        let salted = &mut salted[..len];
        pbkdf2::derive(
            self.hash.pbkdf2(),
            iterations,
            &first.salt,
            &self.password,
            salted,
        );
        let salted = hmac::Key::new(self.hash.hmac(), salted);
        let client_key = hmac::sign(&salted, b"Client Key");
        let stored_key = digest::digest(self.hash.digest(), client_key.as_ref());

        let mut without_proof = Vec::with_capacity(16 + first.nonce.len() + 2 * len);
        without_proof.extend_from_slice(b"c=");
        without_proof.extend_from_slice(CHANNEL_BINDING.as_bytes());
        without_proof.extend_from_slice(b",r=");
        without_proof.extend_from_slice(first.nonce);

        let mut auth_message = Vec::with_capacity(
            self.client_first_bare.len() + server_first.len() + without_proof.len() + 2,
        );
        auth_message.extend_from_slice(&self.client_first_bare);
        auth_message.push(b',');
        auth_message.extend_from_slice(server_first);
        auth_message.push(b',');
        auth_message.extend_from_slice(&without_proof);

        let stored_key = hmac::Key::new(self.hash.hmac(), stored_key.as_ref());
        let client_signature = hmac::sign(&stored_key, &auth_message);
        let mut proof = [0u8; 64];
        let proof = &mut proof[..len];
        for ((p, k), s) in proof
            .iter_mut()
            .zip(client_key.as_ref())
            .zip(client_signature.as_ref())
        {
            *p = k ^ s;
        }

        let server_key = hmac::sign(&salted, b"Server Key");
        self.expected = Some(Expected {
            server_key: hmac::Key::new(self.hash.hmac(), server_key.as_ref()),
            auth_message,
        });

        let mut out = without_proof;
        out.extend_from_slice(b",p=");
        out.extend_from_slice(Base64(proof).to_string().as_bytes());
        Ok(out)
    }

    /// Checks the broker's server-final: `v=<base64 ServerSignature>` must be the signature
    /// the password gives (compared in constant time); `e=<error>` is the broker's refusal.
    pub fn verify_server_final(&self, server_final: &[u8]) -> Result<(), ScramError> {
        let expected = self.expected.as_ref().ok_or(ScramError::OutOfOrder)?;
        // Extensions may follow after a comma; neither attribute's value contains one.
        let first = server_final
            .split(|&b| b == b',')
            .next()
            .unwrap_or_default();
        if let Some(error) = first.strip_prefix(b"e=") {
            return Err(ScramError::Server(
                String::from_utf8_lossy(error).into_owned(),
            ));
        }
        let signature = first
            .strip_prefix(b"v=")
            .ok_or(ScramError::Malformed("server-final is neither v= nor e="))?;
        let signature = base64_decode(signature)
            .ok_or(ScramError::Malformed("server-final's v= is not base64"))?;
        hmac::verify(&expected.server_key, &expected.auth_message, &signature)
            .map_err(|_| ScramError::ServerSignature)
    }
}

/// Appends `username` as a SCRAM saslname: `=` as `=3D`, `,` as `=2C` (RFC 5802 §5.1).
fn sasl_name(username: &str, out: &mut Vec<u8>) {
    for &b in username.as_bytes() {
        match b {
            b'=' => out.extend_from_slice(b"=3D"),
            b',' => out.extend_from_slice(b"=2C"),
            _ => out.push(b),
        }
    }
}

/// The parts of server-first.
struct ServerFirst<'a> {
    /// Client nonce + server nonce.
    nonce: &'a [u8],
    salt: Vec<u8>,
    iterations: u32,
}

/// Parses `r=..,s=..,i=..[,extensions]` (RFC 5802 §7, attributes in this order).
fn parse_server_first(message: &[u8]) -> Result<ServerFirst<'_>, ScramError> {
    if message.starts_with(b"m=") {
        return Err(ScramError::MandatoryExtension);
    }
    let mut parts = message.split(|&b| b == b',');
    let mut attribute = |name: &[u8], missing: &'static str| {
        parts
            .next()
            .and_then(|part| part.strip_prefix(name))
            .ok_or(ScramError::Malformed(missing))
    };
    let nonce = attribute(b"r=", "server-first does not start with the nonce (r=)")?;
    let salt = attribute(b"s=", "no salt (s=) after the nonce")?;
    let iterations = attribute(b"i=", "no iteration count (i=) after the salt")?;
    let salt = base64_decode(salt).ok_or(ScramError::Malformed("the salt is not base64"))?;
    let iterations = std::str::from_utf8(iterations)
        .ok()
        .filter(|digits| digits.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|digits| digits.parse::<u32>().ok())
        .ok_or(ScramError::Malformed("the iteration count is not a number"))?;
    Ok(ServerFirst {
        nonce,
        salt,
        iterations,
    })
}

/// The value of a standard base64 character (RFC 4648 §4).
fn base64_value(c: u8) -> Option<u32> {
    let v = match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => return None,
    };
    Some(u32::from(v))
}

/// Decodes standard padded base64 (RFC 4648 §4), strictly: a length that is a multiple of 4,
/// padding only at the end, no other character, and zero bits after the last byte (the one
/// encoding [`Base64`] writes). `None` for anything else.
fn base64_decode(text: &[u8]) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let quads = text.chunks_exact(4);
    let last = quads.len().saturating_sub(1);
    for (i, quad) in quads.enumerate() {
        let padding = quad.iter().rev().take_while(|&&c| c == b'=').count();
        if padding > 2 || (padding > 0 && i != last) {
            return None;
        }
        let mut n = 0u32;
        for &c in &quad[..4 - padding] {
            n = n << 6 | base64_value(c)?;
        }
        n <<= 6 * padding;
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        let keep = 3 - padding;
        // Non-canonical: bits set beyond the last byte.
        if bytes[keep..].iter().any(|&b| b != 0) {
            return None;
        }
        out.extend_from_slice(&bytes[..keep]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // RFC 7677 §3: SCRAM-SHA-256, user "user", password "pencil".
    const RFC_NONCE: &[u8] = b"rOprNGfwEbeRWgbNEkqO";
    const RFC_SERVER_FIRST: &[u8] =
        b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    const RFC_CLIENT_FINAL: &[u8] = b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const RFC_SERVER_FINAL: &[u8] = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

    fn rfc_scram() -> Scram {
        Scram::new(ScramHash::Sha256, "user", "pencil", RFC_NONCE)
    }

    #[test]
    fn plain_is_nul_username_nul_password() {
        let mut out = Vec::new();
        plain("user", "pass", &mut out);
        assert_eq!(out, b"\0user\0pass");
    }

    #[test]
    fn scram_sha_256_reproduces_the_rfc_7677_exchange() {
        let mut scram = rfc_scram();
        assert_eq!(scram.client_first(), b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
        let client_final = scram.client_final(RFC_SERVER_FIRST).expect("client-final");
        assert_eq!(
            String::from_utf8_lossy(&client_final),
            String::from_utf8_lossy(RFC_CLIENT_FINAL)
        );
        scram
            .verify_server_final(RFC_SERVER_FINAL)
            .expect("server-final");
    }

    #[test]
    fn a_wrong_server_signature_is_refused() {
        let mut scram = rfc_scram();
        scram.client_final(RFC_SERVER_FIRST).expect("client-final");
        // The RFC's signature with its first character changed (still canonical base64).
        let wrong = b"v=7rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";
        let err = scram
            .verify_server_final(wrong)
            .expect_err("wrong signature");
        assert_eq!(err, ScramError::ServerSignature);
        assert_eq!(
            err.to_string(),
            "the broker could not prove it knows the password"
        );
        // A truncated signature too.
        let short = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl9";
        assert!(scram.verify_server_final(short).is_err());
    }

    #[test]
    fn a_server_error_is_reported_by_name() {
        let mut scram = rfc_scram();
        scram.client_final(RFC_SERVER_FIRST).expect("client-final");
        let err = scram
            .verify_server_final(b"e=invalid-proof")
            .expect_err("e=");
        assert_eq!(err, ScramError::Server("invalid-proof".into()));
        assert!(err.to_string().contains("invalid-proof"), "{err}");
    }

    #[test]
    fn server_final_before_client_final_is_a_bug_not_a_success() {
        let scram = rfc_scram();
        assert_eq!(
            scram.verify_server_final(RFC_SERVER_FINAL),
            Err(ScramError::OutOfOrder)
        );
    }

    #[test]
    fn a_server_nonce_not_extending_ours_is_refused() {
        let mut scram = rfc_scram();
        let foreign = b"r=XOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        assert_eq!(scram.client_final(foreign), Err(ScramError::NonceMismatch));
    }

    #[test]
    fn iteration_counts_outside_4096_to_65536_are_refused() {
        let server_first =
            |i: u32| format!("r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i={i}");
        let mut scram = rfc_scram();
        let err = scram
            .client_final(server_first(100).as_bytes())
            .expect_err("too few");
        assert_eq!(err, ScramError::IterationsTooLow(100));
        assert_eq!(err.to_string(), "iteration count 100 below 4096");
        assert_eq!(
            scram.client_final(server_first(4095).as_bytes()),
            Err(ScramError::IterationsTooLow(4095))
        );
        assert_eq!(
            scram.client_final(server_first(0).as_bytes()),
            Err(ScramError::IterationsTooLow(0))
        );
        let err = scram
            .client_final(server_first(65537).as_bytes())
            .expect_err("too many");
        assert_eq!(err, ScramError::IterationsTooHigh(65537));
        assert!(
            err.to_string()
                .starts_with("iteration count 65537 above 65536"),
            "{err}"
        );
        assert!(scram.client_final(server_first(65536).as_bytes()).is_ok());
    }

    #[test]
    fn malformed_server_first_messages_are_refused() {
        let mut scram = rfc_scram();
        for bad in [
            &b""[..],
            b"s=W22ZaJ0SNY7soEsUEjb6gQ==,r=rOprNGfwEbeRWgbNEkqO,i=4096",
            b"r=rOprNGfwEbeRWgbNEkqOx,i=4096",
            b"r=rOprNGfwEbeRWgbNEkqOx,s=W22ZaJ0SNY7soEsUEjb6gQ==",
            b"r=rOprNGfwEbeRWgbNEkqOx,s=not base64!,i=4096",
            b"r=rOprNGfwEbeRWgbNEkqOx,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=+4096",
            b"r=rOprNGfwEbeRWgbNEkqOx,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=99999999999",
        ] {
            assert!(
                matches!(scram.client_final(bad), Err(ScramError::Malformed(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            scram.client_final(b"m=ext,r=rOprNGfwEbeRWgbNEkqOx,s=AA==,i=4096"),
            Err(ScramError::MandatoryExtension)
        );
    }

    #[test]
    fn usernames_escape_equals_and_comma_in_client_first() {
        let scram = Scram::new(ScramHash::Sha512, "a=b,c", "pw", b"nonce");
        assert_eq!(scram.client_first(), b"n,,n=a=3Db=2Cc,r=nonce");
    }

    /// The broker's side of RFC 5802 §3, written from the spec: the StoredKey and ServerKey a
    /// broker keeps for the credential, its check of the proof, and its signature.
    fn broker_checks(
        hash: ScramHash,
        password: &str,
        salt: &[u8],
        iterations: u32,
        auth_message: &[u8],
        proof: &[u8],
    ) -> (bool, Vec<u8>) {
        let len = hash.digest().output_len();
        let mut salted = vec![0; len];
        let n = NonZeroU32::new(iterations).expect("iterations");
        pbkdf2::derive(hash.pbkdf2(), n, salt, password.as_bytes(), &mut salted);
        let salted = hmac::Key::new(hash.hmac(), &salted);
        let client_key = hmac::sign(&salted, b"Client Key");
        let stored_key = digest::digest(hash.digest(), client_key.as_ref());
        let signature = hmac::sign(
            &hmac::Key::new(hash.hmac(), stored_key.as_ref()),
            auth_message,
        );
        let recovered: Vec<u8> = proof
            .iter()
            .zip(signature.as_ref())
            .map(|(p, s)| p ^ s)
            .collect();
        let ok = digest::digest(hash.digest(), &recovered).as_ref() == stored_key.as_ref();
        let server_key = hmac::sign(&salted, b"Server Key");
        let server_signature = hmac::sign(
            &hmac::Key::new(hash.hmac(), server_key.as_ref()),
            auth_message,
        );
        (ok, server_signature.as_ref().to_vec())
    }

    #[test]
    fn scram_sha_512_completes_with_a_broker_following_the_rfc() {
        let nonce = nonce().expect("random");
        let mut scram = Scram::new(ScramHash::Sha512, "relay", "s3cret,=", &nonce);
        let client_first = scram.client_first();
        let server_first = format!(
            "r={}srvnonce,s={},i=4096",
            String::from_utf8_lossy(&nonce),
            Base64(b"salty salt")
        );
        let client_final = scram.client_final(server_first.as_bytes()).expect("final");
        let text = String::from_utf8(client_final.clone()).expect("ascii");
        let (without_proof, proof) = text.rsplit_once(",p=").expect("proof");
        let proof = base64_decode(proof.as_bytes()).expect("base64 proof");
        assert_eq!(proof.len(), 64);
        let auth_message = format!(
            "{},{server_first},{without_proof}",
            String::from_utf8_lossy(&client_first[3..])
        );
        let (ok, signature) = broker_checks(
            ScramHash::Sha512,
            "s3cret,=",
            b"salty salt",
            4096,
            auth_message.as_bytes(),
            &proof,
        );
        assert!(ok, "the broker accepts the proof");
        let server_final = format!("v={}", Base64(&signature));
        scram
            .verify_server_final(server_final.as_bytes())
            .expect("server signature");
        // A broker with another password cannot sign.
        let (ok, signature) = broker_checks(
            ScramHash::Sha512,
            "other",
            b"salty salt",
            4096,
            auth_message.as_bytes(),
            &proof,
        );
        assert!(!ok);
        let server_final = format!("v={}", Base64(&signature));
        assert_eq!(
            scram.verify_server_final(server_final.as_bytes()),
            Err(ScramError::ServerSignature)
        );
    }

    #[test]
    fn nonces_are_24_printable_characters_without_commas_and_differ() {
        let a = nonce().expect("random");
        let b = nonce().expect("random");
        assert_ne!(a, b);
        for c in a {
            assert!(c.is_ascii_graphic() && c != b',', "{c}");
        }
    }

    #[test]
    fn base64_decode_refuses_bad_input() {
        for bad in [
            &b"A"[..],
            b"AB=",
            b"A===",
            b"AB=A",
            b"AA==AAAA",
            b"AB==", // non-canonical: bits after the last byte
            b"AAB=", // idem
            b"AA!A",
            b"AA AA==",
        ] {
            assert_eq!(base64_decode(bad), None, "{}", String::from_utf8_lossy(bad));
        }
        assert_eq!(base64_decode(b""), Some(Vec::new()));
        assert_eq!(base64_decode(b"Zm9vYmFy").as_deref(), Some(&b"foobar"[..]));
        assert_eq!(base64_decode(b"Zm9vYg==").as_deref(), Some(&b"foob"[..]));
    }

    proptest! {
        #[test]
        fn base64_decodes_what_json_base64_encodes(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let text = Base64(&bytes).to_string();
            prop_assert_eq!(base64_decode(text.as_bytes()), Some(bytes));
        }

        #[test]
        fn base64_decode_never_panics(text in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = base64_decode(&text);
        }
    }
}
