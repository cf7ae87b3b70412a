//! Any bytes through the input framer in every mode, split in two at a position taken from the
//! first byte and into reads drawn from the third: it never panics, never consumes more than it
//! was given, never retains more than `max_record + 16` bytes, gives the same records however
//! the stream is split, and framing the reads in place as the relay does (`lines_in_place`,
//! then `decode` for the rest) gives the records, flags and counters `decode` alone gives.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "bodies.rs"]
mod bodies;

fuzz_target!(|data: &[u8]| {
    bodies::framing(data);
});
