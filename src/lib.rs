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
//! - `per_ip.rs`: the `--max-connections-per-ip` table and its warning cadence (not yet wired).
//! - `idle.rs`: the `--idle-timeout` sweep epochs and the one-second linger (not yet wired).
//! - `handover.rs`: take-over: the wire format, the `--handover-socket` listener the
//!   loop polls, and [`take_over`], the new instance's side; `server/handover.rs` wires it in.
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
mod handover;
// The health listener is built and unit-tested ahead of its wiring into the
// server (issue 11, phase 2); until then nothing calls it or uses its
// re-exports.
#[allow(dead_code, unused_imports)]
mod health;
pub mod logging;
pub mod memory;
pub mod notify;
// Pure pieces not yet wired into the loop: the per-address limit
// (--max-connections-per-ip) and the idle sweep (--idle-timeout). Private
// until the server uses them; dead code until then.
#[allow(dead_code)]
mod idle;
#[allow(dead_code)]
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
pub use handover::{Confirmation, TAKE_OVER_TIMEOUT, TakenOver};
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

/// Takes the listening sockets over from the echod offering them at `path`
/// (its `--handover-socket`, [`Server::offer_take_over`]): connects,
/// receives every listening socket with its description (kind, family,
/// address) by `SCM_RIGHTS`, and checks each. Blocks for at most `timeout`.
///
/// Build the server from [`TakenOver::listeners`]
/// ([`Server::from_listeners`]), then [`Confirmation::confirm`]: the
/// running instance then drops its descriptors without disturbing the
/// shared sockets and drains its own connections, so no connect is lost
/// (docs/protocol.md "Operations", take-over). Until the confirmation it
/// serves on untouched.
///
/// # Errors
///
/// [`Error::TakeOver`], one line naming the path and what went wrong: no
/// socket there, nothing listening, another user, a peer that is not echod,
/// a refusal, a timeout, or a socket that does not match its description.
///
/// # Notes
///
/// Linux (Unix domain sockets, `SO_PEERCRED`). Only a process running as
/// the same user may take over. The received sockets share their open file
/// with the old instance's: options set on one are set on both.
pub fn take_over(path: &std::path::Path, timeout: std::time::Duration) -> Result<TakenOver, Error> {
    handover::take_over(path, timeout)
        .map(TakenOver::from)
        .map_err(Error::from)
}
