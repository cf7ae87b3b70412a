//! Any bytes as a request on an HTTP input: head parsing, gzip decoding and batch splitting
//! never panic and keep their bounds (see `bodies::http_request`).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "bodies.rs"]
mod bodies;

fuzz_target!(|data: &[u8]| {
    bodies::http_request(data);
});
