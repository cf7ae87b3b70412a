//! Any bytes, read in pieces whose sizes the first byte picks, through the Kafka output's frame
//! reader, and every whole frame decoded as each answer the output reads (ApiVersions,
//! Metadata, InitProducerId, Produce, SaslHandshake, SaslAuthenticate) at every version it may
//! ask for, then read as the output reads them: nothing panics, aborts or allocates more than a
//! small multiple of the frame.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "bodies.rs"]
mod bodies;

fuzz_target!(|data: &[u8]| {
    bodies::kafka_response(data);
});
