//! Any bytes as a ring file (or patches over a valid ring, or a bare data area): opening it
//! read-only, verifying, seeking and reading everything never panics or hangs.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "bodies.rs"]
mod bodies;

fuzz_target!(|data: &[u8]| {
    bodies::ring_open(data);
});
