//! echod: a single-threaded TCP echo service on one `mio::Poll` that stops
//! gracefully, as a library. The contract is `docs/protocol.md`; the `echod`
//! binary (command line, logging, signals, pid file, systemd) is a thin user
//! of what is here, and the load generator, `echo-load`, is a package of its
//! own (`crates/echo-load`).
//!
//! An embedder gets a handful of types: [`Config`] (validated, its errors
//! naming the field: [`ConfigError`]), [`Server`] ([`Server::bind`], or
//! [`Server::from_listeners`] for TCP listeners the caller already has, or
//! [`Server::from_sockets`] for every kind of socket ([`Sockets`]), then
//! [`Server::run`] on the caller's thread), [`ShutdownHandle`] to start the
//! drain from any thread, [`SignalWatcher`] to let the four drain signals do
//! it, and what a run returns: [`Summary`], [`Stats`], [`DrainReason`],
//! [`DrainEnd`], or an [`Error`]; and for a take-over, [`take_over`] with
//! what it returns ([`TakenOver`], [`Confirmation`]). Nothing process-wide happens unless the
//! caller asks: the library reads no environment variable, raises no limit
//! and installs no signal handler by itself ([`raise_fd_limit`],
//! [`Server::notify_systemd`] and [`SignalWatcher::install`] are explicit).
//!
//! The modules, one concern each:
//!
//! - `config.rs`: [`Config`], its defaults and validation.
//! - `server.rs`: the one `Poll`, the token table, dispatch, the poll timeout.
//! - `accept.rs`: the listeners, admission at `max_connections`, the back-off.
//! - `connection.rs`: one socket, its unsent bytes and phase; the echo and notice steps.
//! - `memory.rs`: the memory budget and the pending buffers charged to it.
//! - `drain.rs`: `Running -> (LameDuck) -> Draining -> Stopped`, pure and clock-free.
//! - `episode.rs`: when a repeatable warning is said, pure and clock-free.
//! - `stats.rs`: the counters and the summary.
//! - `shutdown.rs`: [`ShutdownHandle`].
//! - `signals.rs`: opt-in signal handling through signal-hook-mio.
//! - `notify.rs`: systemd readiness and status, never blocking.
//! - `handover.rs` (and `server/handover.rs`): take-over: the wire format,
//!   the `--handover-socket` listener the loop polls, and [`take_over`], the
//!   new instance's side.
//! - `health.rs`: the `--health` listener (`/livez`, `/readyz`, `/metrics`)
//!   on the same `Poll`; `health/conn.rs` one exchange, `health/metrics.rs`
//!   the text format.
//! - `udp.rs`: UDP echo (`--udp`, RFC 862), its reflection guards and
//!   counters ([`UdpStats`]); `udp/sockets.rs`: a server's set of them.
//! - `idle.rs`, `per_ip.rs` (and `server/protections.rs`, `server/clock.rs`):
//!   the idle timeout, the per-address limit, and when the loop reads its
//!   clock.
//! - `sys.rs`: the only `unsafe` and libc-level code, and no policy.
//! - `error.rs`: [`Error`] for start-up and loop-fatal failures.
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
//!
//! # Notes
//!
//! Linux is the target. The loop relies on epoll's edge-triggered semantics
//! (see [`Server::run`]), `FIONREAD`, `SO_REUSEPORT` and `/proc`.
#![deny(missing_docs)]

mod accept;
mod config;
mod connection;
mod drain;
mod episode;
mod error;
mod handover;
mod health;
mod idle;
// The echod binary's logger. It shares stderr's never-waiting writer with
// the third signal's handler (signals.rs), and both keep their system calls
// in sys.rs, the crate's one module of unsafe code: so it lives here, only
// with the binary's `cli` feature, and is no part of the embedder's API.
#[cfg(feature = "cli")]
#[doc(hidden)]
pub mod logging;
mod memory;
mod notify;
mod per_ip;
mod server;
mod shutdown;
mod signals;
mod stats;
mod sys;
mod udp;

pub use config::{Config, ConfigError};
pub use drain::{DrainEnd, DrainReason};
pub use error::Error;
pub use handover::{Confirmation, TAKE_OVER_TIMEOUT, TakenOver};
pub use server::{Server, Sockets};
pub use shutdown::ShutdownHandle;
pub use signals::SignalWatcher;
pub use stats::{Stats, Summary};
pub use udp::{DropReason, UdpStats};

/// Raises this process's soft limit on open descriptors (`RLIMIT_NOFILE`)
/// to its hard limit and returns the new soft limit: each connection is a
/// descriptor, and the usual soft limit (1024) is far below
/// `max_connections`. The library never does this by itself; a program
/// that serves many connections calls it once at start.
///
/// # Errors
///
/// The OS error when the limit cannot be read or set.
///
/// # Notes
///
/// Process-wide; Linux (or Unix) specific.
pub fn raise_fd_limit() -> std::io::Result<u64> {
    sys::raise_nofile_limit()
}

/// Takes the listening sockets a service manager passed to this process
/// (socket activation: `LISTEN_PID` names this process, `LISTEN_FDS` counts
/// them from fd 3), for [`Server::from_listeners`]; `Ok(None)` when there
/// are none.
///
/// Call it first thing in `main`, before anything opens a descriptor: when
/// fd 3 is missing, the next descriptor opened would take its number and be
/// mistaken for a socket. The descriptors are taken once per process: a
/// later call answers `Ok(None)`, so no descriptor ever gets two owners.
///
/// # Errors
///
/// [`Error::Inherit`] when a variable is malformed or a descriptor is not
/// an open, listening TCP socket, naming which.
///
/// # Notes
///
/// Reads `LISTEN_PID` and `LISTEN_FDS` (and nothing else); leaves them as
/// they are (a child has another PID, so `LISTEN_PID` never names it).
pub fn take_inherited_listeners() -> Result<Option<Vec<std::net::TcpListener>>, Error> {
    sys::inherited_listeners().map_err(|detail| Error::Inherit { detail })
}

/// Log lines echod's own logger dropped (0 without it): the statistics
/// report them (docs/protocol.md "Logs and notifications are best effort").
fn log_lines_dropped() -> usize {
    #[cfg(feature = "cli")]
    {
        logging::lines_dropped()
    }
    #[cfg(not(feature = "cli"))]
    {
        0
    }
}

/// Takes the listening sockets over from the echod offering them at `path`
/// (its `--handover-socket`, [`Server::offer_take_over`]): connects,
/// receives every listening socket with its description (kind, family,
/// address) by `SCM_RIGHTS`, and checks each. Blocks for at most `timeout`.
///
/// Build the server from every socket received, [`TakenOver::sockets`]
/// ([`Server::from_sockets`]: the TCP listeners, the UDP sockets and the
/// health listener), then [`Confirmation::confirm`]: the running instance
/// then drops its descriptors without disturbing the shared sockets and
/// drains its own connections, so no connect is lost (docs/protocol.md
/// "Operations", take-over). Until the confirmation it serves on
/// untouched. A server built from some of them only would leave the rest
/// to close with the running instance.
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

/// Why `path` cannot name a take-over's Unix socket, if it cannot: it is
/// empty, or longer than a Unix socket address holds (107 bytes). With
/// `offered`, the path is for [`Server::offer_take_over`], which first binds
/// a temporary name beside it; that name must fit too. A program checks its
/// paths with this before it starts anything.
pub fn take_over_path_problem(path: &std::path::Path, offered: bool) -> Option<String> {
    handover::path_problem(path, offered)
}
