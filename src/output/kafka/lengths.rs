//! Checks the lengths in a response body before `kafka-protocol` decodes it.
//!
//! The crate's array decoders (0.18, `protocol/types.rs`, `Array` and `CompactArray`) read an
//! element count off the wire and call `Vec::with_capacity(count)` before decoding the first
//! element: a count of 2^31 - 1 (or a compact count of 2^32 - 2) in a frame of a few bytes asks
//! the allocator for tens or hundreds of GiB, which fails and aborts the process. So before the
//! crate sees a body, this walks it as the crate's generated `decode` functions would (the same
//! fields at the same versions, tagged fields included) without allocating, and refuses it when
//! an array announces more elements than there are bytes left (every element takes at least
//! one), or when it is too short for its fields. A body that passes decodes with arrays no
//! longer than the frame has bytes for: what the crate allocates is a small multiple of the
//! frame (at most [`super::wire::MAX_RESPONSE`]).
//!
//! Strings and byte fields need no check: the crate decodes them with `try_get_bytes`, which
//! checks the bytes are there first. The walk is lenient where the crate is strict (UTF-8, a
//! null where none is allowed): the crate still refuses those.

/// What a walk found wrong.
pub type Result = std::result::Result<(), String>;

/// A cursor over a body.
pub struct Walk<'a> {
    buf: &'a [u8],
    /// Whether the body is in a flexible version (compact lengths, tagged fields).
    flex: bool,
}

impl<'a> Walk<'a> {
    /// A walk over `buf`, flexible (KIP-482) or not.
    pub fn new(buf: &'a [u8], flex: bool) -> Walk<'a> {
        Walk { buf, flex }
    }

    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        if n > self.buf.len() {
            return Err(format!(
                "{n} bytes announced where {} are left",
                self.buf.len()
            ));
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }

    /// Skips `n` bytes (a fixed-size field).
    pub fn skip(&mut self, n: usize) -> Result {
        self.take(n).map(|_| ())
    }

    fn int16(&mut self) -> std::result::Result<i16, String> {
        let b = self.take(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    fn int32(&mut self) -> std::result::Result<i32, String> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// An unsigned varint as the crate reads it: at most 5 bytes, the high bits of the fifth
    /// dropped.
    fn varint(&mut self) -> std::result::Result<u32, String> {
        let mut value = 0u32;
        for i in 0..5 {
            let b = u32::from(self.take(1)?[0]);
            value |= (b & 0x7f) << (i * 7);
            if b < 0x80 {
                break;
            }
        }
        Ok(value)
    }

    /// A string (nullable or not): `i16` length, or varint length + 1 when flexible.
    pub fn string(&mut self) -> Result {
        if self.flex {
            let n = self.varint()?;
            return self.skip(n.saturating_sub(1) as usize);
        }
        match self.int16()? {
            -1 => Ok(()),
            n if n >= 0 => self.skip(n as usize),
            n => Err(format!("a string of length {n}")),
        }
    }

    /// Bytes (nullable or not): `i32` length, or varint length + 1 when flexible.
    pub fn bytes(&mut self) -> Result {
        if self.flex {
            let n = self.varint()?;
            return self.skip(n.saturating_sub(1) as usize);
        }
        match self.int32()? {
            -1 => Ok(()),
            n if n >= 0 => self.skip(n as usize),
            n => Err(format!("bytes of length {n}")),
        }
    }

    /// An array (compact when flexible, or when `compact`) whose elements `each` walks. Its
    /// count must not exceed the bytes left: every element takes at least one.
    pub fn array_of(
        &mut self,
        compact: bool,
        mut each: impl FnMut(&mut Walk<'a>) -> Result,
    ) -> Result {
        let count = if compact {
            match self.varint()? {
                0 => return Ok(()),
                n => u64::from(n - 1),
            }
        } else {
            match self.int32()? {
                -1 => return Ok(()),
                n if n >= 0 => n as u64,
                n => return Err(format!("an array of length {n}")),
            }
        };
        if count > self.buf.len() as u64 {
            return Err(format!(
                "an array of {count} elements where {} bytes are left",
                self.buf.len()
            ));
        }
        for _ in 0..count {
            each(self)?;
        }
        Ok(())
    }

    /// An array, compact when the body is flexible.
    pub fn array(&mut self, each: impl FnMut(&mut Walk<'a>) -> Result) -> Result {
        self.array_of(self.flex, each)
    }

    /// The tagged fields (when flexible): `known` walks a tag it knows and returns `true`;
    /// the others are skipped by their size, as the crate keeps them.
    pub fn tags(
        &mut self,
        mut known: impl FnMut(&mut Walk<'a>, u32) -> std::result::Result<bool, String>,
    ) -> Result {
        if !self.flex {
            return Ok(());
        }
        let n = self.varint()?;
        for _ in 0..n {
            let tag = self.varint()?;
            let size = self.varint()?;
            if !known(self, tag)? {
                self.skip(size as usize)?;
            }
        }
        Ok(())
    }

    /// Tagged fields none of which the crate decodes.
    pub fn no_tags(&mut self) -> Result {
        self.tags(|_, _| Ok(false))
    }
}

/// ApiVersionsResponse (the crate's `api_versions_response.rs`).
pub fn api_versions(body: &[u8], v: i16) -> Result {
    let w = &mut Walk::new(body, v >= 3);
    w.skip(2)?; // error_code
    w.array(|w| {
        w.skip(6)?; // api_key, min_version, max_version
        w.no_tags()
    })?;
    if v >= 1 {
        w.skip(4)?; // throttle_time_ms
    }
    // supported_features (0), finalized_features_epoch (1), finalized_features (2),
    // zk_migration_ready (3).
    w.tags(|w, tag| {
        match tag {
            0 | 2 => w.array(|w| {
                w.string()?;
                w.skip(4)?;
                w.no_tags()
            })?,
            1 => w.skip(8)?,
            3 => w.skip(1)?,
            _ => return Ok(false),
        }
        Ok(true)
    })
}

/// MetadataResponse (`metadata_response.rs`).
pub fn metadata(body: &[u8], v: i16) -> Result {
    let w = &mut Walk::new(body, v >= 9);
    if v >= 3 {
        w.skip(4)?; // throttle_time_ms
    }
    w.array(|w| {
        w.skip(4)?; // node_id
        w.string()?; // host
        w.skip(4)?; // port
        if v >= 1 {
            w.string()?; // rack
        }
        w.no_tags()
    })?;
    if v >= 2 {
        w.string()?; // cluster_id
    }
    if v >= 1 {
        w.skip(4)?; // controller_id
    }
    w.array(|w| {
        w.skip(2)?; // error_code
        w.string()?; // name
        if v >= 10 {
            w.skip(16)?; // topic_id
        }
        if v >= 1 {
            w.skip(1)?; // is_internal
        }
        w.array(|w| {
            w.skip(10)?; // error_code, partition_index, leader_id
            if v >= 7 {
                w.skip(4)?; // leader_epoch
            }
            w.array(|w| w.skip(4))?; // replica_nodes
            w.array(|w| w.skip(4))?; // isr_nodes
            if v >= 5 {
                w.array(|w| w.skip(4))?; // offline_replicas
            }
            w.no_tags()
        })?;
        if v >= 8 {
            w.skip(4)?; // topic_authorized_operations
        }
        w.no_tags()
    })?;
    if (8..=10).contains(&v) {
        w.skip(4)?; // cluster_authorized_operations
    }
    if v >= 13 {
        w.skip(2)?; // error_code
    }
    w.no_tags()
}

/// InitProducerIdResponse (`init_producer_id_response.rs`).
pub fn init_producer_id(body: &[u8], v: i16) -> Result {
    let w = &mut Walk::new(body, v >= 2);
    w.skip(4 + 2 + 8 + 2)?; // throttle_time_ms, error_code, producer_id, producer_epoch
    if v >= 6 {
        w.skip(8 + 2)?; // ongoing_txn_producer_id, ongoing_txn_producer_epoch
    }
    w.no_tags()
}

/// ProduceResponse (`produce_response.rs`).
pub fn produce(body: &[u8], v: i16) -> Result {
    let w = &mut Walk::new(body, v >= 9);
    w.array(|w| {
        if v <= 12 {
            w.string()?; // name
        }
        if v >= 13 {
            w.skip(16)?; // topic_id
        }
        w.array(|w| {
            w.skip(4 + 2 + 8 + 8)?; // index, error_code, base_offset, log_append_time_ms
            if v >= 5 {
                w.skip(8)?; // log_start_offset
            }
            if v >= 8 {
                w.array(|w| {
                    w.skip(4)?; // batch_index
                    w.string()?; // batch_index_error_message
                    w.no_tags()
                })?;
                w.string()?; // error_message
            }
            // current_leader (0), from v10; the crate refuses tag 0 before.
            w.tags(|w, tag| match tag {
                0 if v >= 10 => {
                    w.skip(8)?; // leader_id, leader_epoch
                    w.no_tags().map(|()| true)
                }
                0 => Err(format!("tag 0 in a ProduceResponse partition v{v}")),
                _ => Ok(false),
            })
        })?;
        w.no_tags()
    })?;
    w.skip(4)?; // throttle_time_ms
                // node_endpoints (0), from v10.
    w.tags(|w, tag| match tag {
        0 if v >= 10 => {
            w.array(|w| {
                w.skip(4)?; // node_id
                w.string()?; // host
                w.skip(4)?; // port
                w.string()?; // rack
                w.no_tags()
            })?;
            Ok(true)
        }
        0 => Err(format!("tag 0 in a ProduceResponse v{v}")),
        _ => Ok(false),
    })
}

/// SaslHandshakeResponse (`sasl_handshake_response.rs`): never flexible.
pub fn sasl_handshake(body: &[u8], _v: i16) -> Result {
    let w = &mut Walk::new(body, false);
    w.skip(2)?; // error_code
    w.array(|w| w.string()) // mechanisms
}

/// SaslAuthenticateResponse (`sasl_authenticate_response.rs`): no arrays.
pub fn sasl_authenticate(body: &[u8], v: i16) -> Result {
    let w = &mut Walk::new(body, v >= 2);
    w.skip(2)?; // error_code
    w.string()?; // error_message
    w.bytes()?; // auth_bytes
    if v >= 1 {
        w.skip(8)?; // session_lifetime_ms
    }
    w.no_tags()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_array_longer_than_the_bytes_left_is_refused_before_the_crate_reserves_it() {
        // ApiVersions v0: error 0, i32::MAX APIs; v3: a compact count of 2^32 - 2.
        let e = api_versions(&[0, 0, 0x7f, 0xff, 0xff, 0xff], 0).unwrap_err();
        assert!(e.contains("2147483647 elements where 0 bytes"), "{e}");
        let e = api_versions(&[0, 0, 0xff, 0xff, 0xff, 0xff, 0x0f, 0, 0], 3).unwrap_err();
        assert!(e.contains("4294967294 elements where 2 bytes"), "{e}");
        // SaslHandshake: two mechanisms announced, one there.
        let e = sasl_handshake(&[0, 0, 0, 0, 0, 2, 0, 1, b'X'], 1).unwrap_err();
        assert!(e.contains("announced where 0"), "{e}");
    }

    #[test]
    fn a_valid_body_passes() {
        // ApiVersions v0: one API (Produce 3..9); v3: the same, compact, tagged fields.
        api_versions(&[0, 0, 0, 0, 0, 1, 0, 0, 0, 3, 0, 9], 0).unwrap();
        api_versions(&[0, 0, 2, 0, 0, 0, 3, 0, 9, 0, 0, 0, 0, 0, 0], 3).unwrap();
        // SaslAuthenticate v2: no error message, auth bytes "ab", lifetime 0.
        let mut body = vec![0, 0, 0, 3, b'a', b'b'];
        body.extend_from_slice(&[0; 8]);
        body.push(0);
        sasl_authenticate(&body, 2).unwrap();
    }
}
