//! Any bytes as a ring file (or patches over a valid ring of plain and lines entries, a bare
//! data area, or entries of that ring forged with correct CRCs): opening it read-only,
//! verifying, seeking and reading everything never panics or hangs, every record read is what
//! its entry holds, and a record of an entry no forgery touched comes back as written.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "bodies.rs"]
mod bodies;

fuzz_target!(|data: &[u8]| {
    bodies::ring_open(data);
});
