//! Small JSON, typed and bounded: every JSON the relay reads or writes is a struct serialised
//! or parsed by `serde-json-core`, never escaped or searched by hand.
//!
//! # Bounds
//! Writing goes through [`append`] / [`to_vec`]: the value is serialised with
//! `serde_json_core::to_slice` into a buffer of a size the caller computes from the design
//! (the names' limits, a record's length, the number of feeds); a value that does not fit is
//! [`TooLarge`], never a reallocation or a panic. [`str_bound`] is the worst case of one string
//! field, [`U64`] and [`F64`] of one number, so a caller's bound is a sum of these and of the
//! constant keys. `serde-json-core` escapes `"`, `\`, and U+0000 to U+001F (`\b \t \n \f \r`
//! in their short form, the others as `\u00XX` upper case); everything else is copied.
//!
//! # Bytes that are not UTF-8
//! A record is bytes. [`Text`] writes them as a JSON string with each invalid sequence as
//! U+FFFD (what `String::from_utf8_lossy` does), for a person to read; [`Base64`] writes them
//! exactly, for a program to get them back. The dead-letter and export lines carry both when a
//! record is not valid UTF-8 (`record_base64`).
//!
//! # Reading
//! `serde-json-core` parses without allocating but recurses once per nesting level, also
//! through values it ignores; [`nesting_within`] refuses a body nested deeper than the shape we
//! expect before it is parsed, so a peer cannot exhaust the stack.

use std::fmt::{self, Write as _};

use serde::{Serialize, Serializer};

/// A JSON value did not fit in the bound its caller computed for it: the bound is wrong, a bug.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TooLarge {
    /// The bound, in bytes.
    pub bound: usize,
}

impl fmt::Display for TooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a JSON value is larger than its bound of {} bytes (a bug: please report it)",
            self.bound
        )
    }
}

impl std::error::Error for TooLarge {}

/// The most bytes an unsigned integer takes (`u64::MAX`).
pub const U64: usize = 20;
/// The most bytes a finite `f64` takes as ryu writes it (`-1.7976931348623157e308`), or `null`.
pub const F64: usize = 24;
/// The most bytes `true` or `false` takes.
pub const BOOL: usize = 5;

/// The most bytes a string field of `len` bytes takes: two quotes and each byte escaped to at
/// most 6 (`\u00XX`); an invalid UTF-8 byte becomes U+FFFD, 3 bytes.
pub const fn str_bound(len: usize) -> usize {
    2 + 6 * len
}

/// The most bytes [`Base64`] of `len` bytes takes, quotes included.
pub const fn base64_bound(len: usize) -> usize {
    2 + len.div_ceil(3) * 4
}

/// The most bytes a member `"key":` takes before its value, with its separating comma.
pub const fn key_bound(key: &str) -> usize {
    key.len() + 4
}

/// Serialises `value` at the end of `out` in at most `bound` bytes. On error `out` is as it
/// was. `out` grows to hold `bound` more bytes; a reused `Vec` stops allocating once it has.
pub fn append<T: Serialize + ?Sized>(
    out: &mut Vec<u8>,
    value: &T,
    bound: usize,
) -> Result<(), TooLarge> {
    let start = out.len();
    out.resize(start + bound, 0);
    match serde_json_core::to_slice(value, &mut out[start..]) {
        Ok(n) => {
            out.truncate(start + n);
            Ok(())
        }
        Err(_) => {
            out.truncate(start);
            Err(TooLarge { bound })
        }
    }
}

/// `value` as a new buffer of at most `bound` bytes.
pub fn to_vec<T: Serialize + ?Sized>(value: &T, bound: usize) -> Result<Vec<u8>, TooLarge> {
    let mut out = Vec::with_capacity(bound);
    append(&mut out, value, bound)?;
    Ok(out)
}

/// Whether the JSON text `s` nests arrays and objects at most `max` deep (strings, with their
/// escapes, are skipped). Malformed text may pass: the parser refuses it, within this depth.
pub fn nesting_within(s: &[u8], max: usize) -> bool {
    let (mut depth, mut in_str, mut escaped) = (0usize, false, false);
    for &b in s {
        if in_str {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return false;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    true
}

/// Bytes as a JSON string for a person: each invalid UTF-8 sequence becomes U+FFFD.
#[derive(Clone, Copy, Debug)]
pub struct Text<'a>(pub &'a [u8]);

impl fmt::Display for Text<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for chunk in self.0.utf8_chunks() {
            f.write_str(chunk.valid())?;
            if !chunk.invalid().is_empty() {
                f.write_char(char::REPLACEMENT_CHARACTER)?;
            }
        }
        Ok(())
    }
}

impl Serialize for Text<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(self.0) {
            Ok(text) => s.serialize_str(text),
            Err(_) => s.collect_str(self),
        }
    }
}

/// Bytes as a JSON string for a program: standard base64 (RFC 4648 §4, padded), exact.
#[derive(Clone, Copy, Debug)]
pub struct Base64<'a>(pub &'a [u8]);

impl fmt::Display for Base64<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        for group in self.0.chunks(3) {
            let n = group
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
            let mut quad = [b'='; 4];
            for (i, q) in quad.iter_mut().enumerate().take(group.len() + 1) {
                *q = ALPHABET[(n >> (18 - 6 * i) & 63) as usize];
            }
            // The quad is ASCII by construction.
            f.write_str(std::str::from_utf8(&quad).map_err(|_| fmt::Error)?)?;
        }
        Ok(())
    }
}

impl Serialize for Base64<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Bytes as [`Text`], and as [`Base64`] too when they are not UTF-8 (`None` when they are):
/// the pair of fields the dead-letter and export lines carry.
pub fn text_and_exact(bytes: &[u8]) -> (Text<'_>, Option<Base64<'_>>) {
    let exact = std::str::from_utf8(bytes).is_err().then_some(Base64(bytes));
    (Text(bytes), exact)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct One<'a> {
        s: Text<'a>,
        #[serde(skip_serializing_if = "Option::is_none")]
        b: Option<Base64<'a>>,
    }

    fn one(bytes: &[u8]) -> String {
        let (s, b) = text_and_exact(bytes);
        let bound = 8 + str_bound(bytes.len()) + 8 + base64_bound(bytes.len());
        String::from_utf8(to_vec(&One { s, b }, bound).unwrap()).unwrap()
    }

    #[test]
    fn text_is_escaped_and_invalid_utf8_is_replaced_and_kept_in_base64() {
        assert_eq!(
            one(b"a\"b\\c\n\t\x01\x1f\x7f"),
            "{\"s\":\"a\\\"b\\\\c\\n\\t\\u0001\\u001F\x7f\"}"
        );
        assert_eq!(
            one(b"\xff ok \xe2\x82"),
            r#"{"s":"� ok �","b":"/yBvayDigg=="}"#
        );
        assert_eq!(one(b""), r#"{"s":""}"#);
    }

    #[test]
    fn base64_matches_rfc_4648_test_vectors() {
        for (raw, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(Base64(raw.as_bytes()).to_string(), enc);
        }
    }

    #[test]
    fn the_worst_case_string_fits_its_bound_and_one_byte_less_is_an_error() {
        let worst = [0x01u8; 100];
        let bound = str_bound(worst.len());
        let v = to_vec(&Text(&worst), bound).unwrap();
        assert_eq!(v.len(), bound);
        let mut out = b"kept".to_vec();
        assert_eq!(
            append(&mut out, &Text(&worst), bound - 1),
            Err(TooLarge { bound: bound - 1 })
        );
        assert_eq!(out, b"kept");
        let invalid = [0xffu8; 100];
        assert!(to_vec(&Text(&invalid), str_bound(invalid.len())).is_ok());
    }

    #[test]
    fn nesting_is_counted_outside_strings_only() {
        assert!(nesting_within(br#"{"acks":{"0":true}}"#, 2));
        assert!(!nesting_within(br#"{"acks":{"0":[true]}}"#, 2));
        assert!(nesting_within(br#"{"a":"[[[[\"[[[["}"#, 1));
        assert!(!nesting_within(&[b'['; 100_000], 8));
    }
}
