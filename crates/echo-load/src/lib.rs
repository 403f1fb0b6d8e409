//! echo-load: drive an echo server with many connections, verify every
//! echoed byte and measure throughput, latency and drains.
//!
//! The library is what the `echo-load` binary runs, and what echod's bench
//! and tests drive echod with. This file owns the run ([`run`]): splitting
//! connections and messages over worker threads, starting them together,
//! sampling progress and merging their results into a [`Report`].
//! `config.rs` owns the configuration ([`LoadConfig`]) and its bounds; each
//! worker (`worker.rs`) owns its own `mio::Poll` and connections;
//! `payload.rs` owns the bytes sent and their verification; `report.rs` the
//! summary and the JSON; `sys.rs` the few system calls. The UDP mode
//! ([`run_udp`]) is apart: `udp.rs` owns its one-thread run, `datagram.rs`
//! the wire format, `udp_flow.rs` each flow's loss, duplicate, reordering
//! and jitter accounting, `udp_report.rs` its [`UdpReport`], and
//! `udp_config.rs` its configuration ([`UdpConfig`]). Implements
//! docs/protocol.md "The load generator".
//!
//! ```no_run
//! use echo_load::{LoadConfig, Stop, run};
//!
//! let config = LoadConfig { stop: Stop::Messages(10_000), ..LoadConfig::default() };
//! let report = run(&config)?;
//! println!("{report}");
//! # Ok::<(), echo_load::LoadError>(())
//! ```
#![deny(missing_docs)]

mod config;
mod datagram;
mod payload;
mod report;
mod sys;
mod udp;
mod udp_config;
mod udp_flow;
mod udp_report;
mod worker;

use std::fmt;
use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

pub use config::{LoadConfig, MAX_CONNECTIONS, MAX_IN_FLIGHT, MAX_SECS, Payload, Stop};
pub use datagram::HEADER_LEN as UDP_HEADER_LEN;
pub use report::{Drain, Errors, Latency, Report};
pub use udp::{UdpProgress, run_udp, run_udp_with_progress};
pub use udp_config::{
    MAX_DATAGRAM_V4, MAX_DATAGRAM_V6, MAX_DATAGRAMS, MAX_FLOWS, MAX_UDP_RATE, UdpConfig,
};
pub use udp_report::UdpReport;

use payload::Pattern;
use report::{Meter, Output};

/// A progress sample, taken at each whole second of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Time since the load started.
    pub elapsed: Duration,
    /// Messages verified over the last second, warmup included.
    pub messages: u64,
    /// Connections open now.
    pub open: u64,
    /// Errors so far, every kind together.
    pub errors: u64,
}

/// Why a run could not happen. Per-connection failures are not here: they
/// are counted in the [`Report`].
#[derive(Debug)]
pub enum LoadError {
    /// A configuration field is out of range.
    InvalidConfig {
        /// The [`LoadConfig`] field (also the flag name, with `-` for `_`).
        field: &'static str,
        /// Why the value was rejected.
        reason: String,
    },
    /// A worker thread could not be started.
    Spawn(io::Error),
    /// A worker could not create or use its poll.
    Poll(io::Error),
    /// A worker could not be pinned to its CPU.
    Pin {
        /// The CPU asked for.
        cpu: usize,
        /// The OS reason.
        source: io::Error,
    },
    /// A worker thread panicked (a bug).
    Panicked,
    /// A UDP flow's socket could not be opened or connected.
    Socket {
        /// The server address.
        addr: SocketAddr,
        /// The OS reason.
        source: io::Error,
    },
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::InvalidConfig { field, reason } => write!(f, "invalid {field}: {reason}"),
            LoadError::Spawn(e) => write!(f, "cannot start a worker thread: {e}"),
            LoadError::Poll(e) => write!(f, "cannot poll for events: {e}"),
            LoadError::Pin { cpu, source } => {
                write!(f, "cannot pin a worker to cpu {cpu}: {source}")
            }
            LoadError::Panicked => write!(f, "a worker thread panicked"),
            LoadError::Socket { addr, source } => {
                write!(f, "cannot open a UDP socket to {addr}: {source}")
            }
        }
    }
}

impl std::error::Error for LoadError {}

/// What every worker shares, read-only.
#[derive(Debug)]
pub(crate) struct Shared {
    /// Server address.
    pub addr: SocketAddr,
    /// The bytes every connection sends.
    pub pattern: Pattern,
    /// The drain notice.
    pub notice: Vec<u8>,
    /// Messages in flight per connection.
    pub pipeline: usize,
    /// Connect timeout; also how long nothing may move while anything is awaited.
    pub connect_timeout: Duration,
    /// Unmeasured time at the start.
    pub warmup: Duration,
    /// Sending time after the warmup; `None` when a message budget stops the run.
    pub duration: Option<Duration>,
    /// Where workers meet before the load starts.
    pub gate: StartGate,
}

/// One worker's share of the run.
#[derive(Debug)]
pub(crate) struct Plan {
    /// Worker number.
    pub index: usize,
    /// Global number of this worker's first connection (seeds its payload).
    pub first_conn_id: u64,
    /// Connections to open.
    pub connections: usize,
    /// Messages to send in total, when the run stops after a count.
    pub budget: Option<u64>,
    /// This worker's open-loop rate in messages per second.
    pub rate: Option<f64>,
    /// CPU to pin this thread to.
    pub cpu: Option<usize>,
}

/// Where workers wait until every one of them has finished connecting, so
/// that the load starts at one instant on all threads.
#[derive(Debug, Default)]
pub(crate) struct StartGate {
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct GateState {
    /// Workers that reached the gate.
    arrived: usize,
    /// Workers that reached it after failing to set up.
    failed: usize,
    /// `Some(Some(start))` to go, `Some(None)` to abort; `None` while waiting.
    verdict: Option<Option<Instant>>,
}

impl StartGate {
    /// Called by each worker once: reports whether it is ready, then waits
    /// for the verdict. Returns the common start, or `None` to abort.
    pub(crate) fn arrive(&self, ready: bool) -> Option<Instant> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.arrived += 1;
        state.failed += usize::from(!ready);
        self.changed.notify_all();
        loop {
            if let Some(verdict) = state.verdict {
                return verdict;
            }
            state = self
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Waits until `workers` have arrived; returns how many failed.
    fn wait_for(&self, workers: usize) -> usize {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        while state.arrived < workers {
            state = self
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        state.failed
    }

    fn open(&self, verdict: Option<Instant>) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.verdict = Some(verdict);
        self.changed.notify_all();
    }
}

/// Runs the load described by `config` and returns what it measured.
///
/// Connection failures, mismatches and resets do not stop the run; they are
/// counted in the report (see [`Report::is_clean`]). With
/// [`LoadConfig::progress`] set, prints one progress line a second on stderr.
///
/// # Errors
///
/// [`LoadError::InvalidConfig`] for a bad configuration; otherwise an error
/// when a worker thread cannot be started, pinned or poll.
///
/// # Notes
///
/// Raises the process's soft `RLIMIT_NOFILE` to its hard limit first.
pub fn run(config: &LoadConfig) -> Result<Report, LoadError> {
    run_with_progress(config, |p| {
        if config.progress {
            let line = format!(
                "echo-load: {:>4.0}s {:>10} msgs/s {:>6} open {:>6} errors\n",
                p.elapsed.as_secs_f64(),
                p.messages,
                p.open,
                p.errors
            );
            // Progress is best effort; a closed stderr must not stop the run.
            let _ = io::stderr().write_all(line.as_bytes());
        }
    })
}

/// [`run`], handing a [`Progress`] sample to `on_progress` at each whole
/// second of the load, on the calling thread.
///
/// # Errors
///
/// As [`run`].
///
/// # Notes
///
/// As [`run`].
pub fn run_with_progress(
    config: &LoadConfig,
    mut on_progress: impl FnMut(&Progress),
) -> Result<Report, LoadError> {
    let pattern = config.pattern()?;
    if let Err(err) = crate::sys::raise_nofile_limit() {
        log::debug!("cannot raise the descriptor limit: {err}");
    }
    let cpu_before = crate::sys::process_cpu_time();
    let threads = config.threads.min(config.connections);
    let shared = Arc::new(Shared {
        addr: config.addr,
        pattern,
        notice: config.shutdown_message.clone(),
        pipeline: config.pipeline,
        connect_timeout: config.connect_timeout,
        warmup: config.warmup,
        duration: match config.stop {
            Stop::Duration(d) => Some(d),
            Stop::Messages(_) => None,
        },
        gate: StartGate::default(),
    });
    let (tx, rx) = mpsc::channel();
    let mut handles = Vec::with_capacity(threads);
    let mut meters = Vec::with_capacity(threads);
    for plan in plans(config, threads) {
        let meter = Arc::new(Meter::default());
        let (worker_shared, tx, worker_meter) =
            (Arc::clone(&shared), tx.clone(), Arc::clone(&meter));
        let spawned = thread::Builder::new()
            .name(format!("echo-load-{}", plan.index))
            .spawn(move || {
                let result = worker::run(&worker_shared, &plan, &worker_meter);
                // The receiver only goes away once run() has returned.
                let _ = tx.send(result);
            });
        match spawned {
            Ok(handle) => {
                handles.push(handle);
                meters.push(meter);
            }
            Err(err) => {
                shared.gate.wait_for(handles.len());
                shared.gate.open(None);
                join_all(handles);
                return Err(LoadError::Spawn(err));
            }
        }
    }
    drop(tx);
    let failed = shared.gate.wait_for(handles.len());
    let start = Instant::now();
    shared.gate.open((failed == 0).then_some(start));
    let outputs = collect(&rx, &meters, start, &mut on_progress);
    join_all(handles);
    let outputs = outputs?;
    let cpu_after = crate::sys::process_cpu_time();
    Ok(merge(outputs, config, start, cpu_before, cpu_after))
}

/// Splits connections, messages and rate over `threads` workers.
fn plans(config: &LoadConfig, threads: usize) -> Vec<Plan> {
    let share = |total: u64, i: usize| {
        let t = threads as u64;
        total / t + u64::from((i as u64) < total % t)
    };
    let mut first_conn_id = 0;
    (0..threads)
        .map(|index| {
            let connections = share(config.connections as u64, index) as usize;
            let plan = Plan {
                index,
                first_conn_id,
                connections,
                budget: match config.stop {
                    Stop::Messages(n) => Some(share(n, index)),
                    Stop::Duration(_) => None,
                },
                rate: config
                    .rate
                    .map(|r| r * connections as f64 / config.connections as f64),
                cpu: (!config.pin_cpus.is_empty())
                    .then(|| config.pin_cpus[index % config.pin_cpus.len()]),
            };
            first_conn_id += connections as u64;
            plan
        })
        .collect()
}

/// Gathers every worker's output, sampling their meters each second.
fn collect(
    rx: &mpsc::Receiver<Result<Output, LoadError>>,
    meters: &[Arc<Meter>],
    start: Instant,
    on_progress: &mut dyn FnMut(&Progress),
) -> Result<Vec<Output>, LoadError> {
    let mut outputs = Vec::new();
    let mut first_error = None;
    let mut tick = start + Duration::from_secs(1);
    // Each worker's message count at the last sample (it wraps: see Meter).
    let mut last = vec![0u32; meters.len()];
    loop {
        match rx.recv_timeout(tick.saturating_duration_since(Instant::now())) {
            Ok(Ok(output)) => outputs.push(output),
            Ok(Err(err)) => {
                first_error.get_or_insert(err);
            }
            Err(RecvTimeoutError::Timeout) => {
                let mut sample = Progress {
                    elapsed: tick.saturating_duration_since(start),
                    messages: 0,
                    open: 0,
                    errors: 0,
                };
                for (meter, last) in meters.iter().zip(&mut last) {
                    let (messages, open, errors) = meter.read();
                    sample.messages += u64::from(messages.wrapping_sub(*last));
                    sample.open += u64::from(open);
                    sample.errors += u64::from(errors);
                    *last = messages;
                }
                on_progress(&sample);
                tick += Duration::from_secs(1);
            }
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    match first_error {
        Some(err) => Err(err),
        None => Ok(outputs),
    }
}

fn join_all(handles: Vec<thread::JoinHandle<()>>) {
    for handle in handles {
        // A panicked worker never sent its output; collect() noticed already.
        let _ = handle.join();
    }
}

/// Merges the workers' outputs into one report.
fn merge(
    outputs: Vec<Output>,
    config: &LoadConfig,
    start: Instant,
    cpu_before: (Duration, Duration),
    cpu_after: (Duration, Duration),
) -> Report {
    let mut histogram = report::new_histogram();
    let mut errors = Errors::default();
    let mut drain = Drain::default();
    let (mut messages, mut warmup_messages, mut bytes, mut opened, mut failed) = (0, 0, 0, 0, 0);
    let mut end = start + config.warmup;
    for out in &outputs {
        add_histogram(&mut histogram, &out.histogram);
        errors.add(&out.errors);
        drain.add(&out.drain);
        messages += out.messages;
        warmup_messages += out.warmup_messages;
        bytes += out.bytes;
        opened += out.opened;
        failed += out.failed;
        end = end.max(out.end);
    }
    let elapsed = end.saturating_duration_since(start + config.warmup);
    Report {
        started: start,
        elapsed,
        messages,
        warmup_messages,
        bytes,
        msgs_per_sec: report::ratio(messages as f64, elapsed),
        mib_per_sec: report::ratio(bytes as f64 / (1024.0 * 1024.0), elapsed),
        latency: Latency::from_histogram(&histogram),
        errors,
        connections_opened: opened,
        connections_failed: failed,
        drain,
        cpu_user: cpu_after.0.saturating_sub(cpu_before.0),
        cpu_sys: cpu_after.1.saturating_sub(cpu_before.1),
    }
}

fn add_histogram(into: &mut Histogram<u64>, from: &Histogram<u64>) {
    // Both histograms have the same bounds, so adding cannot fail.
    if let Err(err) = into.add(from) {
        log::warn!("cannot merge latency histograms: {err}");
    }
}
