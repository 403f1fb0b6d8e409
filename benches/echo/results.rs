//! What the bench measured, one plain struct per measurement.

use crate::servers::Kind;

/// One closed-loop throughput run.
#[derive(Debug, Clone, Copy, Default)]
pub struct Run {
    /// Round trips per second over the measured window.
    pub rtps: f64,
    /// Round trips in the measured window.
    pub msgs: u64,
    /// Server CPU seconds (utime + stime) over the same window.
    pub cpu: Option<f64>,
    /// echo-load errors plus failed connections.
    pub errors: u64,
    /// Loopback packets dropped during the run.
    pub drops: u64,
}

/// All runs of one server in one configuration.
#[derive(Debug, Clone)]
pub struct Throughput {
    pub server: Kind,
    pub conns: usize,
    pub size: usize,
    pub runs: Vec<Run>,
}

impl Throughput {
    /// Mean round trips per second over the runs.
    pub fn rtps(&self) -> Option<f64> {
        mean(self.runs.iter().map(|r| r.rtps))
    }

    /// Server CPU seconds per million round trips, over all runs.
    pub fn cpu_per_million(&self) -> Option<f64> {
        let runs: Vec<&Run> = self.runs.iter().filter(|r| r.cpu.is_some()).collect();
        let msgs: u64 = runs.iter().map(|r| r.msgs).sum();
        let cpu: f64 = runs.iter().filter_map(|r| r.cpu).sum();
        (msgs > 0 && cpu > 0.0).then(|| cpu / msgs as f64 * 1e6)
    }

    /// Round trips per server-CPU-second.
    pub fn per_cpu_sec(&self) -> Option<f64> {
        self.cpu_per_million().map(|c| 1e6 / c)
    }

    /// Why the row should not be trusted, if anything went wrong.
    pub fn warning(&self) -> Option<String> {
        let errors: u64 = self.runs.iter().map(|r| r.errors).sum();
        let drops: u64 = self.runs.iter().map(|r| r.drops).sum();
        warning(errors, drops)
    }
}

/// `"N errors, M loopback drops"` when either is non-zero.
pub fn warning(errors: u64, drops: u64) -> Option<String> {
    let mut parts = Vec::new();
    if errors > 0 {
        parts.push(format!("{errors} load errors"));
    }
    if drops > 0 {
        parts.push(format!("{drops} loopback drops"));
    }
    (!parts.is_empty()).then(|| parts.join(", "))
}

pub fn mean(values: impl Iterator<Item = f64>) -> Option<f64> {
    let (sum, n) = values.fold((0.0, 0), |(s, n), v| (s + v, n + 1));
    (n > 0).then(|| sum / f64::from(n))
}

/// Open-loop latency at a fixed rate.
#[derive(Debug, Clone)]
pub struct LatencyRow {
    pub server: Kind,
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub achieved: f64,
    pub warning: Option<String>,
}

/// Memory with no client and with many idle clients.
#[derive(Debug, Clone)]
pub struct RssRow {
    pub server: Kind,
    pub idle: u64,
    pub loaded: Option<u64>,
    pub conns: usize,
}

impl RssRow {
    pub fn per_conn(&self) -> Option<f64> {
        let loaded = self.loaded?;
        (self.conns > 0).then(|| (loaded as f64 - self.idle as f64) / self.conns as f64)
    }
}

/// System calls over a fixed number of echoed messages.
#[derive(Debug, Clone)]
pub struct SyscallRow {
    pub server: Kind,
    pub tool: String,
    pub msgs: u64,
    pub total: u64,
    pub epoll_wait: u64,
}

impl SyscallRow {
    pub fn per_msg(&self) -> f64 {
        self.total as f64 / self.msgs.max(1) as f64
    }
    pub fn epoll_per_msg(&self) -> f64 {
        self.epoll_wait as f64 / self.msgs.max(1) as f64
    }
    pub fn other_per_msg(&self) -> f64 {
        (self.total - self.epoll_wait.min(self.total)) as f64 / self.msgs.max(1) as f64
    }
}

/// Exec to first echoed byte.
#[derive(Debug, Clone)]
pub struct StartupRow {
    pub server: Kind,
    pub samples_ms: Vec<f64>,
}

/// echod draining under many connections.
#[derive(Debug, Clone, Default)]
pub struct DrainResult {
    pub asked: usize,
    pub opened: u64,
    pub notices: u64,
    pub errors: u64,
    pub to_last_notice_ms: Option<f64>,
    pub fanout_ms: Option<f64>,
    pub close_to_exit_ms: Option<f64>,
    pub sighup_to_exit_ms: Option<f64>,
    pub exit_status: String,
}

/// echo-load against the thread-per-connection blocking client.
#[derive(Debug, Clone, Default)]
pub struct VsBlocking {
    pub echo_load: Vec<f64>,
    pub blocking: Vec<f64>,
    pub echo_load_cpu_pct: Vec<f64>,
}

/// Instructions per round trip under callgrind.
#[derive(Debug, Clone)]
pub struct CallgrindRow {
    pub server: Kind,
    pub n1: u64,
    pub n2: u64,
    pub ir1: u64,
    pub ir2: u64,
}

impl CallgrindRow {
    pub fn per_rt(&self) -> f64 {
        (self.ir2 as f64 - self.ir1 as f64) / (self.n2 - self.n1) as f64
    }
}

/// Everything from one bench run.
#[derive(Debug, Default)]
pub struct Results {
    pub throughput: Vec<Throughput>,
    pub latency: Vec<LatencyRow>,
    pub latency_rate: f64,
    pub rss: Vec<RssRow>,
    pub syscalls: Vec<SyscallRow>,
    pub startup: Vec<StartupRow>,
    pub drain: Option<DrainResult>,
    pub vs_blocking: Option<VsBlocking>,
    pub callgrind: Vec<CallgrindRow>,
    pub binary_size: Option<u64>,
    pub notes: Vec<String>,
}
