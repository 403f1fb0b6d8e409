//! The outcome of a load run: merging the workers' results, the human
//! summary table and the JSON object.
//!
//! Owns the [`Report`] type and everything derived from it (percentiles,
//! rates, exit verdict). It does not measure anything itself; the workers
//! do (docs/protocol.md "The load generator": throughput, latency
//! percentiles, errors, connections that received the notice and
//! end-of-stream; a summary, or JSON with `--json`). The JSON goes through
//! serde: its fields are README's table, one for one.

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Serialize, Serializer};

/// Largest latency recorded, in microseconds (one hour); longer ones saturate.
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// Live counters one worker publishes and the main thread samples once a
/// second for [`Progress`](crate::Progress).
///
/// 32-bit atomics, so echo-load builds for targets without 64-bit ones:
/// the message counter wraps, and readers only ever take differences of it
/// (a second would need four billion messages to wrap twice).
#[derive(Debug, Default)]
pub(crate) struct Meter {
    /// Messages verified so far, warmup included, modulo 2^32.
    messages: AtomicU32,
    /// Connections open now.
    open: AtomicU32,
    /// Errors so far (at most one per connection, so no wrap in practice).
    errors: AtomicU32,
}

impl Meter {
    /// Stores a worker's counters.
    pub(crate) fn publish(&self, messages: u64, open: usize, errors: u64) {
        // Truncation wraps the count on purpose (see the type's doc).
        self.messages.store(messages as u32, Ordering::Relaxed);
        let saturate = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
        self.open.store(saturate(open as u64), Ordering::Relaxed);
        self.errors.store(saturate(errors), Ordering::Relaxed);
    }

    /// Messages verified (modulo 2^32), connections open, errors so far.
    pub(crate) fn read(&self) -> (u32, u32, u32) {
        (
            self.messages.load(Ordering::Relaxed),
            self.open.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
        )
    }
}

/// What one worker measured.
#[derive(Debug)]
pub(crate) struct Output {
    /// Latency of measured messages, microseconds.
    pub histogram: Histogram<u64>,
    /// Measured messages.
    pub messages: u64,
    /// Messages completed during the warmup.
    pub warmup_messages: u64,
    /// Payload bytes of measured messages.
    pub bytes: u64,
    /// Errors by kind.
    pub errors: Errors,
    /// Connections established.
    pub opened: u64,
    /// Connection attempts that failed.
    pub failed: u64,
    /// Drain observations.
    pub drain: Drain,
    /// The later of the last echo and the end of sending.
    pub end: Instant,
}

impl Output {
    /// Nothing measured yet; `end` starts at `now`.
    pub(crate) fn new(now: Instant) -> Output {
        Output {
            histogram: new_histogram(),
            messages: 0,
            warmup_messages: 0,
            bytes: 0,
            errors: Errors::default(),
            opened: 0,
            failed: 0,
            drain: Drain::default(),
            end: now,
        }
    }
}

impl Output {
    /// Records one verified message of `len` bytes sent (or, open loop,
    /// scheduled) at `sent_at` and completed at `now`. Messages completed
    /// before `measure_start` count as warmup only.
    pub(crate) fn record(
        &mut self,
        sent_at: Instant,
        now: Instant,
        measure_start: Instant,
        len: u64,
    ) {
        self.end = self.end.max(now);
        if now < measure_start {
            self.warmup_messages += 1;
            return;
        }
        self.messages += 1;
        self.bytes += len;
        let us = now.saturating_duration_since(sent_at).as_micros();
        self.histogram
            .saturating_record(u64::try_from(us).unwrap_or(u64::MAX));
    }
}

/// Why a connection failed: one [`Errors`] field each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The echo differed from what was sent.
    Mismatch,
    /// Reset by the peer.
    Reset,
    /// A connect, or the final wait for an echo, took too long.
    Timeout,
    /// Connect refused.
    Refused,
    /// Out of descriptors or socket memory.
    Emfile,
    /// Any other I/O error.
    Other,
    /// End-of-stream without the notice.
    UnexpectedEof,
}

/// Sorts an I/O error into a report category.
pub(crate) fn classify(err: &io::Error) -> Failure {
    use io::ErrorKind as K;
    if crate::sys::is_resource_exhausted(err) {
        return Failure::Emfile;
    }
    match err.kind() {
        K::ConnectionRefused => Failure::Refused,
        K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe => Failure::Reset,
        K::TimedOut => Failure::Timeout,
        _ => Failure::Other,
    }
}

/// An empty latency histogram with the bounds every worker uses.
pub(crate) fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("constant histogram bounds are valid")
}

/// Latency percentiles over every measured message, in microseconds.
///
/// All zero when no message was measured (`samples == 0`). Serialized as
/// the `latency_us` object of the JSON report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Latency {
    /// Fastest round trip.
    pub min: u64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Slowest round trip (saturates at one hour).
    pub max: u64,
    /// Number of messages measured.
    pub samples: u64,
}

impl Latency {
    /// Reads the percentiles out of a histogram of microseconds.
    pub fn from_histogram(h: &Histogram<u64>) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        Latency {
            min: h.min(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            samples: h.len(),
        }
    }
}

/// Errors by kind. Connect failures and per-connection failures both count.
///
/// Serialized as its counts; the JSON report's `errors` object adds `total`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Errors {
    /// Connections whose echo differed from what was sent (or that received
    /// bytes after the notice, or an incomplete notice).
    pub mismatch: u64,
    /// Connections reset by the peer (`ECONNRESET`, `EPIPE`, `ECONNABORTED`).
    pub reset: u64,
    /// Connects that did not finish within the connect timeout, and
    /// connections whose in-flight echo had not arrived when the final wait
    /// ended.
    pub timeout: u64,
    /// Connects refused (`ECONNREFUSED`).
    pub refused: u64,
    /// Sockets that could not be created: out of descriptors or socket memory.
    pub emfile: u64,
    /// Any other I/O error.
    pub other: u64,
    /// Connections the peer ended without the notice while the run was going.
    pub unexpected_eof: u64,
}

impl Errors {
    /// Sum of every kind.
    pub fn total(&self) -> u64 {
        self.mismatch
            + self.reset
            + self.timeout
            + self.refused
            + self.emfile
            + self.other
            + self.unexpected_eof
    }

    /// Counts one failure.
    pub(crate) fn count(&mut self, failure: Failure) {
        let counter = match failure {
            Failure::Mismatch => &mut self.mismatch,
            Failure::Reset => &mut self.reset,
            Failure::Timeout => &mut self.timeout,
            Failure::Refused => &mut self.refused,
            Failure::Emfile => &mut self.emfile,
            Failure::Other => &mut self.other,
            Failure::UnexpectedEof => &mut self.unexpected_eof,
        };
        *counter += 1;
    }

    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &Errors) {
        self.mismatch += other.mismatch;
        self.reset += other.reset;
        self.timeout += other.timeout;
        self.refused += other.refused;
        self.emfile += other.emfile;
        self.other += other.other;
        self.unexpected_eof += other.unexpected_eof;
    }
}

/// What the run saw of a server drain.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Drain {
    /// Connections that received the notice and then end-of-stream.
    pub notices: u64,
    /// Connections the peer ended without a notice (also counted in
    /// [`Errors::unexpected_eof`]).
    pub cut_without_notice: u64,
    /// Messages sent on a drained connection whose echo never came: the
    /// server may discard bytes that arrive after its drain began, so these
    /// are reported but are not errors.
    pub unanswered: u64,
    /// When the first complete notice arrived.
    pub first_notice: Option<Instant>,
    /// When the last complete notice arrived.
    pub last_notice: Option<Instant>,
    /// When the last connection closed, whatever the cause.
    pub last_close: Option<Instant>,
}

impl Drain {
    /// Time from the first notice to the last: how long the server took to
    /// tell every connection. `None` without a notice.
    pub fn fanout(&self) -> Option<Duration> {
        Some(
            self.last_notice?
                .saturating_duration_since(self.first_notice?),
        )
    }

    /// Adds another worker's observations to these.
    pub fn add(&mut self, other: &Drain) {
        self.notices += other.notices;
        self.cut_without_notice += other.cut_without_notice;
        self.unanswered += other.unanswered;
        self.first_notice = earliest(self.first_notice, other.first_notice);
        self.last_notice = latest(self.last_notice, other.last_notice);
        self.last_close = latest(self.last_close, other.last_close);
    }
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn latest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// Everything a load run measured.
///
/// Messages, bytes, rates and latency cover the measured window only: from
/// the end of the warmup to the last echo.
#[derive(Debug, Clone)]
pub struct Report {
    /// When the load started (every connection attempt had finished).
    pub started: Instant,
    /// Length of the measured window: end of warmup to the last echo (or to
    /// the end of sending when no echo came).
    pub elapsed: Duration,
    /// Messages echoed and verified in the measured window.
    pub messages: u64,
    /// Messages echoed and verified during the warmup (not in `messages`).
    pub warmup_messages: u64,
    /// Payload bytes of `messages`, counted once (not both directions).
    pub bytes: u64,
    /// `messages` per second of `elapsed`.
    pub msgs_per_sec: f64,
    /// `bytes` in MiB per second of `elapsed`.
    pub mib_per_sec: f64,
    /// Round-trip latency of the measured messages.
    pub latency: Latency,
    /// Errors by kind.
    pub errors: Errors,
    /// Connections that were established.
    pub connections_opened: u64,
    /// Connection attempts that failed (their cause is in `errors`).
    pub connections_failed: u64,
    /// What the run saw of a server drain.
    pub drain: Drain,
    /// User CPU time echo-load itself used over the run.
    pub cpu_user: Duration,
    /// System CPU time echo-load itself used over the run.
    pub cpu_sys: Duration,
}

impl Report {
    /// True when every byte received was verified and nothing went wrong:
    /// no error of any kind and no failed connection. A drain announced by
    /// the notice is clean.
    pub fn is_clean(&self) -> bool {
        self.errors.total() == 0 && self.connections_failed == 0
    }

    /// echo-load's own CPU use over the measured window, in percent of one
    /// core (user plus system).
    pub fn cpu_percent(&self) -> f64 {
        ratio(
            (self.cpu_user + self.cpu_sys).as_secs_f64() * 100.0,
            self.elapsed,
        )
    }

    /// The report as one JSON object on one line (fields in the README).
    pub fn to_json(&self) -> String {
        // Numbers, booleans and nulls into a String: serializing cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The JSON report: README's fields, names and nesting, one for one.
///
/// Instants become seconds since the load started; JSON has no NaN or
/// infinity, so a rate over an empty window is written as 0.
#[derive(Serialize)]
struct JsonReport {
    clean: bool,
    elapsed_secs: f64,
    messages: u64,
    warmup_messages: u64,
    bytes: u64,
    msgs_per_sec: f64,
    mib_per_sec: f64,
    latency_us: Latency,
    errors: JsonErrors,
    connections_opened: u64,
    connections_failed: u64,
    drain: JsonDrain,
    cpu_user_secs: f64,
    cpu_sys_secs: f64,
    cpu_percent: f64,
}

/// The `errors` object: the total, then each kind.
#[derive(Serialize)]
struct JsonErrors {
    total: u64,
    #[serde(flatten)]
    kinds: Errors,
}

/// The `drain` object; instants in seconds since the load started, `null`
/// when they never happened.
#[derive(Serialize)]
struct JsonDrain {
    notices: u64,
    cut_without_notice: u64,
    unanswered: u64,
    first_notice_secs: Option<f64>,
    last_notice_secs: Option<f64>,
    last_close_secs: Option<f64>,
    fanout_secs: Option<f64>,
}

impl From<&Report> for JsonReport {
    fn from(r: &Report) -> JsonReport {
        let d = &r.drain;
        let since = |t: Option<Instant>| t.map(|t| secs(t.saturating_duration_since(r.started)));
        JsonReport {
            clean: r.is_clean(),
            elapsed_secs: secs(r.elapsed),
            messages: r.messages,
            warmup_messages: r.warmup_messages,
            bytes: r.bytes,
            msgs_per_sec: finite(r.msgs_per_sec),
            mib_per_sec: finite(r.mib_per_sec),
            latency_us: r.latency,
            errors: JsonErrors {
                total: r.errors.total(),
                kinds: r.errors,
            },
            connections_opened: r.connections_opened,
            connections_failed: r.connections_failed,
            drain: JsonDrain {
                notices: d.notices,
                cut_without_notice: d.cut_without_notice,
                unanswered: d.unanswered,
                first_notice_secs: since(d.first_notice),
                last_notice_secs: since(d.last_notice),
                last_close_secs: since(d.last_close),
                fanout_secs: d.fanout().map(secs),
            },
            cpu_user_secs: secs(r.cpu_user),
            cpu_sys_secs: secs(r.cpu_sys),
            cpu_percent: finite(r.cpu_percent()),
        }
    }
}

/// Serializes as the JSON report README documents (see [`Report::to_json`]).
impl Serialize for Report {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        JsonReport::from(self).serialize(serializer)
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// `v`, or 0 where JSON has no number for it (NaN, infinity).
pub(crate) fn finite(v: f64) -> f64 {
    if v.is_finite() { v } else { 0.0 }
}

/// `value / elapsed` seconds, 0 when the window is empty.
pub(crate) fn ratio(value: f64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 { value / secs } else { 0.0 }
}

impl fmt::Display for Report {
    /// The human summary table.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let l = &self.latency;
        let e = &self.errors;
        let d = &self.drain;
        writeln!(f, "elapsed      {:.3} s", self.elapsed.as_secs_f64())?;
        writeln!(
            f,
            "messages     {} ({:.0} msgs/s; {} in warmup)",
            self.messages, self.msgs_per_sec, self.warmup_messages
        )?;
        writeln!(
            f,
            "throughput   {:.2} MiB/s ({} bytes echoed)",
            self.mib_per_sec, self.bytes
        )?;
        writeln!(
            f,
            "latency µs   min {}  p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  ({} samples)",
            l.min, l.p50, l.p90, l.p99, l.p999, l.max, l.samples
        )?;
        writeln!(
            f,
            "connections  {} opened, {} failed",
            self.connections_opened, self.connections_failed
        )?;
        writeln!(
            f,
            "errors       {} (mismatch {}, reset {}, timeout {}, refused {}, emfile {}, \
             other {}, unexpected eof {})",
            e.total(),
            e.mismatch,
            e.reset,
            e.timeout,
            e.refused,
            e.emfile,
            e.other,
            e.unexpected_eof
        )?;
        let fanout = d
            .fanout()
            .map_or_else(|| "-".to_string(), |t| format!("{:.3} s", t.as_secs_f64()));
        writeln!(
            f,
            "drain        {} notices, {} cut without notice, {} unanswered, fan-out {}",
            d.notices, d.cut_without_notice, d.unanswered, fanout
        )?;
        writeln!(
            f,
            "cpu          user {:.2} s, sys {:.2} s ({:.0}% of one core)",
            self.cpu_user.as_secs_f64(),
            self.cpu_sys.as_secs_f64(),
            self.cpu_percent()
        )?;
        let verdict = if self.is_clean() {
            "clean: every byte verified"
        } else {
            "NOT CLEAN: data wrong or lost"
        };
        write!(f, "result       {verdict}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        let now = Instant::now();
        Report {
            started: now,
            elapsed: Duration::from_secs(2),
            messages: 10,
            warmup_messages: 0,
            bytes: 640,
            msgs_per_sec: 5.0,
            mib_per_sec: 0.0003,
            latency: Latency::default(),
            errors: Errors::default(),
            connections_opened: 1,
            connections_failed: 0,
            drain: Drain::default(),
            cpu_user: Duration::from_millis(100),
            cpu_sys: Duration::from_millis(100),
        }
    }

    fn parse(report: &Report) -> serde_json::Value {
        let json = report.to_json();
        assert!(!json.contains('\n'), "not one line: {json}");
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("invalid JSON ({e}): {json}"))
    }

    #[test]
    fn json_is_one_line_with_null_fanout_without_notice() {
        let v = parse(&report());
        assert_eq!(v["clean"], true);
        assert!(v["drain"]["fanout_secs"].is_null(), "{v}");
        assert!(v["drain"]["first_notice_secs"].is_null(), "{v}");
        assert_eq!(v["messages"], 10);
        assert_eq!(v["errors"]["total"], 0);
        assert_eq!(v["elapsed_secs"], 2.0);
    }

    #[test]
    fn json_writes_rates_over_an_empty_window_as_zero() {
        let mut r = report();
        r.msgs_per_sec = f64::NAN;
        r.mib_per_sec = f64::INFINITY;
        let v = parse(&r);
        assert_eq!(v["msgs_per_sec"], 0.0);
        assert_eq!(v["mib_per_sec"], 0.0);
    }

    #[test]
    fn json_errors_carry_the_total_and_every_kind() {
        let mut r = report();
        r.errors.timeout = 2;
        r.errors.reset = 1;
        let v = parse(&r);
        assert_eq!(v["clean"], false);
        assert_eq!(v["errors"]["total"], 3);
        assert_eq!(v["errors"]["timeout"], 2);
        assert_eq!(v["errors"]["reset"], 1);
        assert_eq!(v["errors"]["unexpected_eof"], 0);
    }

    #[test]
    fn any_error_makes_the_report_unclean() {
        let mut r = report();
        r.errors.unexpected_eof = 1;
        assert!(!r.is_clean());
        assert_eq!(r.errors.total(), 1);
        assert!((r.cpu_percent() - 10.0).abs() < 1e-9);
    }
}
