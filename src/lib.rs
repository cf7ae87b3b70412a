//! ringrelay: a durable log relay for security appliance VMs.
pub mod cli;
pub mod clock;
pub mod config;
pub mod framing;
pub mod http_batch;
pub mod inspect;
pub mod log;
pub mod preflight;
pub mod relay;
pub mod ring;
pub mod selftest;
pub mod size;
pub mod syslog;
pub mod tls;
