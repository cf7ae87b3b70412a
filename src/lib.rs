//! ringrelay: a durable log relay for security appliance VMs.
pub mod clock;
pub mod ring;
