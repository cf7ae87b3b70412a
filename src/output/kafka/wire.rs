//! The Kafka wire: size-prefixed frames, request headers, and the `kafka-protocol` crate's
//! message types encoded into (and decoded from) buffers the output keeps.
//!
//! A request is `i32 size | RequestHeader | body`, a response `i32 size | ResponseHeader |
//! body`, all big-endian. The crate encodes headers and bodies at any version; it writes
//! neither the size prefix nor the framing, which are here. A response frame is bounded by
//! [`MAX_RESPONSE`]: a larger size prefix fails the connection with an error that says so,
//! rather than buffering whatever a broker (or something that is not a broker) announces.
//! Inside a frame, [`get_response`] checks every array's length against the bytes left before
//! the crate decodes it (`lengths`): the crate reserves an announced count before reading any
//! element, and a count of 2^31 - 1 in a 10-byte answer would abort the process.
//!
//! See <https://kafka.apache.org/protocol#protocol_messages>.

use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, InitProducerIdResponse, MetadataResponse, ProduceResponse,
    RequestHeader, ResponseHeader, SaslAuthenticateResponse, SaslHandshakeResponse,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};

use super::lengths;

/// The largest response frame accepted. Our requests name one topic, so the largest answer
/// is a Metadata response: about 40 bytes a partition and 30 a broker, far below this.
pub const MAX_RESPONSE: usize = 1 << 20;

/// Appends one size-prefixed request frame to `out`.
pub fn put_request<T: Encodable + HeaderVersion>(
    out: &mut Vec<u8>,
    key: ApiKey,
    version: i16,
    correlation_id: i32,
    client_id: &StrBytes,
    body: &T,
) -> Result<(), String> {
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    RequestHeader::default()
        .with_request_api_key(key as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(client_id.clone()))
        .encode(out, T::header_version(version))
        .map_err(|e| format!("encode {key:?} v{version} header: {e}"))?;
    body.encode(out, version)
        .map_err(|e| format!("encode {key:?} v{version}: {e}"))?;
    let len = i32::try_from(out.len() - at - 4)
        .map_err(|_| format!("{key:?} request of {} bytes", out.len() - at))?;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

/// A response the output decodes, with the walk that checks its lengths before the crate
/// decodes it (see `lengths`: the crate reserves an array's announced count before reading
/// any element).
pub trait Bounded {
    /// `Err` when `body` (after the response header) at `version` announces an array longer
    /// than the bytes left, or is too short for its fields.
    fn check_lengths(body: &[u8], version: i16) -> Result<(), String>;
}

macro_rules! bounded {
    ($($t:ty => $walk:path,)*) => {$(
        impl Bounded for $t {
            fn check_lengths(body: &[u8], version: i16) -> Result<(), String> {
                $walk(body, version)
            }
        }
    )*};
}

bounded! {
    ApiVersionsResponse => lengths::api_versions,
    MetadataResponse => lengths::metadata,
    InitProducerIdResponse => lengths::init_producer_id,
    ProduceResponse => lengths::produce,
    SaslHandshakeResponse => lengths::sasl_handshake,
    SaslAuthenticateResponse => lengths::sasl_authenticate,
}

/// Decodes one response frame (without its size prefix) as a `T` at `version`, checking that
/// it answers `correlation_id`, and that its lengths are within the frame before the crate
/// reserves memory for them.
pub fn get_response<T: Decodable + HeaderVersion + Bounded>(
    mut frame: &[u8],
    version: i16,
    correlation_id: i32,
) -> Result<T, String> {
    let name = std::any::type_name::<T>()
        .rsplit("::")
        .next()
        .unwrap_or("response");
    let header = ResponseHeader::decode(&mut frame, T::header_version(version))
        .map_err(|e| format!("{name} v{version}: header: {e}"))?;
    if header.correlation_id != correlation_id {
        return Err(format!(
            "{name}: correlation id {} where {correlation_id} was expected: the connection is \
             out of step",
            header.correlation_id
        ));
    }
    T::check_lengths(frame, version).map_err(|e| format!("{name} v{version}: {e}"))?;
    T::decode(&mut frame, version).map_err(|e| format!("{name} v{version}: {e}"))
}

/// Collects response bytes into whole frames, bounded by [`MAX_RESPONSE`].
pub struct FrameReader {
    buf: Vec<u8>,
}

/// What [`FrameReader::frame`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// Not a whole frame yet.
    Partial,
    /// A whole frame of this many bytes (after the size prefix) is at the front.
    Whole(usize),
}

impl Default for FrameReader {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameReader {
    /// A reader whose buffer holds one largest frame (allocated once).
    pub fn new() -> FrameReader {
        FrameReader {
            buf: Vec::with_capacity(4 + MAX_RESPONSE),
        }
    }

    /// Forgets every byte (a new connection).
    pub fn reset(&mut self) {
        self.buf.clear();
    }

    /// Whether bytes of a frame are buffered.
    pub fn started(&self) -> bool {
        !self.buf.is_empty()
    }

    /// Where the next read goes: the free space up to the end of the frame being read (or of
    /// its size prefix), so that one read never takes bytes past the frame in hand.
    pub fn space(&mut self) -> Result<&mut [u8], String> {
        let want = match self.frame()? {
            Frame::Whole(_) => return Ok(&mut []),
            Frame::Partial if self.buf.len() < 4 => 4,
            Frame::Partial => 4 + self.announced(),
        };
        let have = self.buf.len();
        self.buf.resize(want, 0);
        Ok(&mut self.buf[have..])
    }

    /// `n` bytes were read into [`FrameReader::space`]; the rest of it is not data.
    pub fn filled(&mut self, n: usize, space: usize) {
        let len = self.buf.len() - space + n;
        self.buf.truncate(len);
    }

    fn announced(&self) -> usize {
        let size = i32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
        usize::try_from(size).unwrap_or(usize::MAX)
    }

    /// Whether a whole frame is buffered; an error for a size prefix that is negative or
    /// larger than [`MAX_RESPONSE`].
    pub fn frame(&self) -> Result<Frame, String> {
        if self.buf.len() < 4 {
            return Ok(Frame::Partial);
        }
        let size = self.announced();
        if size > MAX_RESPONSE {
            let raw = i32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
            return Err(format!(
                "a response frame announces {raw} bytes (at most {MAX_RESPONSE} accepted): not a \
                 Kafka broker, or a TLS/plaintext mismatch"
            ));
        }
        Ok(if self.buf.len() >= 4 + size {
            Frame::Whole(size)
        } else {
            Frame::Partial
        })
    }

    /// The whole frame at the front (after [`Frame::Whole`]).
    #[cfg(test)]
    pub fn body(&self) -> &[u8] {
        let size = self.announced();
        &self.buf[4..4 + size]
    }

    /// Takes the buffer with the whole frame at the front (its body from byte 4), to be
    /// given back with [`FrameReader::restore`]: the frame is read while the output changes.
    pub fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }

    /// Gives back the buffer [`FrameReader::take`] took, emptied: the frame is done.
    pub fn restore(&mut self, mut buf: Vec<u8>) {
        buf.clear();
        self.buf = buf;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::{ApiVersionsRequest, ApiVersionsResponse};

    fn feed(r: &mut FrameReader, mut bytes: &[u8]) -> Result<Frame, String> {
        while !bytes.is_empty() {
            if let Frame::Whole(n) = r.frame()? {
                return Ok(Frame::Whole(n));
            }
            let space = r.space()?;
            let len = space.len();
            let n = len.min(bytes.len());
            space[..n].copy_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            r.filled(n, len);
        }
        r.frame()
    }

    #[test]
    fn a_frame_split_anywhere_is_whole_only_once_every_byte_arrived() {
        // ApiVersions v0 answer: correlation id 7 (header v0), error 0, one API (Produce 3..9).
        let frame = [0, 0, 0, 7, 0, 0, 0, 0, 0, 1, 0, 0, 0, 3, 0, 9];
        let mut wire = (frame.len() as i32).to_be_bytes().to_vec();
        wire.extend_from_slice(&frame);
        for cut in 0..wire.len() {
            let mut r = FrameReader::new();
            assert_eq!(
                feed(&mut r, &wire[..cut]).unwrap(),
                Frame::Partial,
                "cut {cut}"
            );
            assert_eq!(
                feed(&mut r, &wire[cut..]).unwrap(),
                Frame::Whole(frame.len())
            );
            let got: ApiVersionsResponse = get_response(r.body(), 0, 7).unwrap();
            assert_eq!(got.error_code, 0);
            assert_eq!(got.api_keys[0].max_version, 9);
            assert!(get_response::<ApiVersionsResponse>(r.body(), 0, 8)
                .unwrap_err()
                .contains("out of step"));
        }
    }

    #[test]
    fn an_oversized_or_negative_size_prefix_is_an_error_not_a_buffer() {
        for size in [MAX_RESPONSE as i32 + 1, -1, i32::MAX] {
            let mut r = FrameReader::new();
            let e = feed(&mut r, &size.to_be_bytes()).unwrap_err();
            assert!(e.contains("at most"), "{e}");
        }
        // "HTTP" read as a size: a plaintext client at a TLS port or an HTTP server.
        let mut r = FrameReader::new();
        assert!(feed(&mut r, b"HTTP/1.1 400").is_err());
    }

    #[test]
    fn a_request_frame_carries_its_own_size() {
        let mut out = vec![9, 9];
        let id = StrBytes::from_static_str("ringrelay-test");
        put_request(
            &mut out,
            ApiKey::ApiVersions,
            3,
            42,
            &id,
            &ApiVersionsRequest::default(),
        )
        .unwrap();
        let size = i32::from_be_bytes([out[2], out[3], out[4], out[5]]) as usize;
        assert_eq!(size, out.len() - 6);
        // api key 18, version 3, correlation id 42.
        assert_eq!(&out[6..14], &[0, 18, 0, 3, 0, 0, 0, 42]);
    }
}
