//! Any bytes, split in two at a position taken from the first byte, through the HTTP output's
//! response reader: it never panics, keeps bounded bytes, and reads the same responses however
//! the stream is split. The HEC acknowledgement JSON readers get the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "bodies.rs"]
mod bodies;

fuzz_target!(|data: &[u8]| {
    bodies::http_response(data);
});
