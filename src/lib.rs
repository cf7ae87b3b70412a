//! ringrelay: a durable log relay for security appliance VMs.
//!
//! # The path of one record
//! 1. **Socket to record** ([`input`]): the event loop ([`event_loop`]) wakes on a readable
//!    input connection and hands it to [`input::Inputs`], which reads it (through rustls for a
//!    `tls` input, [`input`]'s `TlsIn`) as the connection's sans-I/O [`input::session`] says,
//!    frames records by newline or octet count
//!    ([`input::framing`]), or parses an HTTP batch ([`input::http`], its request side in
//!    [`input::http::request`]).
//! 2. **Record to ring** ([`ring`]): records are appended to the feed's ring, a memory-mapped,
//!    CRC-checked file ([`ring::Ring`]; newline-framed reads land in the mapping directly, as one
//!    lines entry). Once appended, a crash of the process cannot take them; the feed's `sync`
//!    policy ([`input::FeedIn::appended`], [`feed::Feed::checkpoint_in_background`]) decides
//!    when they are on disk. An HTTP batch is answered 200 only then.
//! 3. **Ring to SIEM** ([`output`]): each output walks the ring from its own durable cursor and
//!    writes frames straight from the mapping (TCP, TLS, file: [`output::Output`], a shared core
//!    and a sink per kind; its connection's lifecycle in [`output::link`]; syslog
//!    headers by [`output::syslog`]; HTTP batches by [`output::http`], its wire format in
//!    [`output::http::protocol`]). The cursor moves only past what the receiver proved it took.
//! 4. **Around it**: [`feed`] ties one feed's ring, inputs and outputs together; [`ha`] decides
//!    who is active in a pair (lock file, fencing epochs); [`admin`] answers `/metrics`,
//!    `/health` and `/ready`; [`alert`] turns gaps into records an operator hears about.
//!
//! # The durability contract
//! - A record is *accepted* once it is in the ring's mapping: a crash of the relay loses none.
//! - It is on disk after the next sync (`sync = "always"`: before the sender hears back;
//!   `"interval"`: within one `sync_interval`; `"never"`: when the kernel writes it).
//! - A cursor moves only past records the receiver acknowledged (HTTP 2xx, a TCP/TLS connection
//!   that proved itself for `settle`); after a reconnect the replay window is sent again.
//! - Every record dropped, overwritten before delivery, truncated or damaged is counted, logged
//!   and, where it matters, alerted, across restarts too.
//! - The on-disk format is `buffer-spec.md` at the repository root; [`ring::format`] mirrors it.
//!
//! # Where the rest lives
//! [`config`] reads and validates the TOML; [`cli`] is the command line (`run`, `check`,
//! `inspect`, `size`, `selftest`); [`preflight`] checks what only the machine can tell;
//! [`inspect`] reads rings offline; [`size`] sizes buffers and VMs, and [`memory`] the relay's
//! own heap for a configuration, buffer by buffer; [`selftest`] relays through
//! a simulated SIEM outage; [`tls`] builds rustls configurations for inputs and outputs;
//! [`json`] reads and writes every small JSON (typed, in buffers of a known bound);
//! [`sync_helper`] is the helper process that syncs rings off the loop and, with a `lease`, keeps
//! it ([`ha::keeper`]); [`nfs`] reads what a mount promises; [`clock`] and [`log`] are the only
//! clock and the only log writer.
pub mod admin;
pub mod alert;
pub mod cli;
pub mod clock;
pub mod config;
pub mod event_loop;
pub mod feed;
pub mod ha;
pub mod input;
pub mod inspect;
pub mod json;
pub mod log;
pub mod memory;
pub mod nfs;
pub mod output;
pub mod preflight;
pub mod ring;
pub mod selftest;
pub mod size;
pub mod sync_helper;
pub mod tls;
