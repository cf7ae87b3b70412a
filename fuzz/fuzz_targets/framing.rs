//! Any bytes, split in two at a position taken from the first byte, through the input framer in
//! every mode: it never panics, never consumes more than it was given, never retains more than
//! `max_record + 16` bytes, and gives the same records however the stream is split.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "bodies.rs"]
mod bodies;

fuzz_target!(|data: &[u8]| {
    bodies::framing(data);
});
