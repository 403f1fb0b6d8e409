//! echod: a single-threaded TCP echo service on one `mio::Poll` that stops
//! gracefully. Its load generator, `echo-load`, is a package of its own
//! (`crates/echo-load`).
//!
//! The contract is SPEC.md; this crate is laid out so that each concern has
//! one file:
//!
//! - [`config`]: [`Config`], its defaults and validation, and echod's command line.
//! - [`server`]: [`Server::bind`] (or [`Server::from_listeners`]) and [`Server::run`]:
//!   the one `Poll`, tokens, dispatch.
//! - `accept.rs`: listeners, admission at `--max-connections`, `EMFILE` back-off.
//! - [`connection`]: one socket, its unsent bytes and phase; the echo and notice steps.
//! - [`memory`]: the memory budget (`--max-pending-total`) and the pending buffers charged to it.
//! - [`drain`]: the `Running -> (LameDuck) -> Draining -> Stopped` state machine, pure and clock-free.
//! - `episode.rs`: when a repeatable warning is said (once per episode), pure and clock-free.
//! - `per_ip.rs`: the `--max-connections-per-ip` table and its warning cadence, owned by the acceptor.
//! - `idle.rs`: the `--idle-timeout` sweep epochs and the one-second linger, pure and clock-free;
//!   `server/protections.rs` puts both to work in the loop.
//! - [`shutdown`]: [`ShutdownHandle`], the programmatic drain trigger.
//! - [`signals`]: opt-in signal handling through signal-hook-mio.
//! - [`notify`]: systemd readiness and status, one datagram each, never waiting.
//! - [`logging`]: log lines on stderr that never wait or end the process; drops counted.
//! - [`sys`]: the only `unsafe`: rlimits, `FIONREAD`, affinity, inherited sockets, raw writes.
//! - [`error`]: [`Error`] for start-up and loop-fatal failures, with exit codes.
//!
//! Embedding: bind, learn the addresses, hand the handle to whoever decides
//! when to stop, run on this thread.
//!
//! ```
//! let mut config = echod::Config::default();
//! config.listen = vec!["127.0.0.1:0".parse().unwrap()];
//! let server = echod::Server::bind(config)?;
//! println!("serving on {}", server.local_addrs()[0]);
//! let handle = server.shutdown_handle();
//! handle.drain(); // normally from another thread, later
//! let summary = server.run()?;
//! assert_eq!(summary.reason, echod::DrainReason::Handle);
//! # Ok::<(), echod::Error>(())
//! ```
#![deny(missing_docs)]

mod accept;
pub mod config;
pub mod connection;
pub mod drain;
mod episode;
pub mod error;
// Take-over (issue 13): built and unit-tested on its own first; the server
// loop and the binary use it in the next step, until then nothing calls it.
#[allow(dead_code, unused_imports)]
mod handover;
// The health listener is built and unit-tested ahead of its wiring into the
// server (issue 11, phase 2); until then nothing calls it or uses its
// re-exports.
#[allow(dead_code, unused_imports)]
mod health;
mod idle;
pub mod logging;
pub mod memory;
pub mod notify;
mod per_ip;
pub mod server;
pub mod shutdown;
pub mod signals;
mod stats;
pub mod sys;
// UDP echo (docs/protocol.md "UDP echo (RFC 862)"), phase 1 of issue 12: the
// sockets, guards and counters stand alone and are unit-tested; nothing
// calls them until server.rs registers the `--udp` sockets (phase 2).
#[allow(dead_code)]
mod udp;

pub use config::{Command, Config, UsageError};
pub use drain::{DrainEnd, DrainReason};
pub use error::Error;
pub use server::Server;
pub use shutdown::ShutdownHandle;
pub use signals::SignalWatcher;
pub use stats::{Stats, Summary};

/// Raises this process's soft limit on open descriptors (`RLIMIT_NOFILE`)
/// to its hard limit and returns the new soft limit: each connection is a
/// descriptor, and the usual soft limit (1024) is far below
/// `--max-connections`. The library never does this by itself; a program
/// that serves many connections calls it once at start.
///
/// # Errors
///
/// The OS error when the limit cannot be read or set.
///
/// # Notes
///
/// Process-wide, and Linux (or Unix) specific.
pub fn raise_fd_limit() -> std::io::Result<u64> {
    sys::raise_nofile_limit()
}
