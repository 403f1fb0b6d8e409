//! echod: a single-threaded TCP echo service on one `mio::Poll` that stops
//! gracefully, and `echo-load`, the load generator that measures it.
//!
//! The contract is SPEC.md; this crate is laid out so that each concern has
//! one file:
//!
//! - [`config`]: [`Config`], its defaults and validation, and echod's command line.
//! - [`server`]: [`Server::bind`] and [`Server::run`]: the one `Poll`, tokens, dispatch.
//! - `accept.rs`: listeners, admission at `--max-connections`, `EMFILE` back-off.
//! - [`connection`]: one socket, its unsent bytes and phase; the echo and notice steps.
//! - [`drain`]: the `Running -> Draining -> Stopped` state machine, pure and clock-free.
//! - [`shutdown`]: [`ShutdownHandle`], the programmatic drain trigger.
//! - [`signals`]: opt-in signal handling through signal-hook-mio.
//! - [`notify`]: systemd readiness and status, one datagram each, never waiting.
//! - [`logging`]: log lines on stderr that never wait or end the process; drops counted.
//! - [`sys`]: the only `unsafe`: rlimits, `FIONREAD`, affinity, inherited sockets, raw writes.
//! - [`error`]: [`Error`] for start-up and loop-fatal failures, with exit codes.
//! - [`load`]: the load generator's library half.
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
//! assert_eq!(summary.reason, Some(echod::DrainReason::Handle));
//! # Ok::<(), echod::Error>(())
//! ```
#![deny(missing_docs)]

mod accept;
pub mod config;
pub mod connection;
pub mod drain;
pub mod error;
pub mod load;
pub mod logging;
pub mod notify;
pub mod server;
pub mod shutdown;
pub mod signals;
pub mod sys;

pub use config::{Command, Config, UsageError};
pub use drain::{DrainEnd, DrainReason};
pub use error::Error;
pub use server::{Server, Stats, Summary};
pub use shutdown::ShutdownHandle;
pub use signals::SignalWatcher;
