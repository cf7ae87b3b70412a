//! The Kafka output (issue 20). (Placeholder: the sink and session come from another branch.)
#![allow(dead_code)]
pub mod batch;
pub mod partition;
pub mod sasl;
