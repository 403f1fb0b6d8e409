//! What `/metrics` says, and how: the plain snapshot of the server's counters
//! the server hands over at request time, the process figures read from
//! `/proc/self` at scrape time, and their rendering in the Prometheus text
//! format 0.0.4 (docs/protocol.md "Lame duck and health").
//!
//! It owns the metric names, their `# HELP` and `# TYPE` lines and the label
//! spellings of the close reasons. It does not own the counters: the server
//! keeps them and copies them into a [`MetricsSnapshot`] when a request is
//! answered, so this file knows nothing of the server's internals, and
//! nothing here is on the echo path (a scrape may allocate). The UDP drop
//! reasons are spelled by whoever counts them and passed in with their
//! counts.

use std::fmt::{self, Write};

use crate::drain::ServeState;

/// The `Content-Type` of a `/metrics` response: the text format 0.0.4.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// Why a client connection closed: the `reason` label of
/// `echod_connections_closed_total`, and the index of
/// [`MetricsSnapshot::closed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The peer closed and everything owed to it was sent.
    Peer,
    /// The socket failed (reset, broken pipe, ...).
    Error,
    /// `--idle-timeout` passed with nothing received or sent.
    Idle,
    /// Over `--max-connections-per-ip`: accepted and closed at once.
    PerIp,
    /// Still open at the drain's deadline.
    Deadline,
    /// Closed by a second drain signal.
    Forced,
}

impl CloseReason {
    /// How many reasons there are: the length of [`MetricsSnapshot::closed`].
    pub const COUNT: usize = 6;

    /// Every reason, in the order `/metrics` lists them; `ALL[r as usize] == r`.
    pub const ALL: [CloseReason; CloseReason::COUNT] = [
        CloseReason::Peer,
        CloseReason::Error,
        CloseReason::Idle,
        CloseReason::PerIp,
        CloseReason::Deadline,
        CloseReason::Forced,
    ];

    /// The reason as the `reason` label spells it.
    pub fn label(self) -> &'static str {
        match self {
            CloseReason::Peer => "peer",
            CloseReason::Error => "error",
            CloseReason::Idle => "idle",
            CloseReason::PerIp => "per_ip",
            CloseReason::Deadline => "deadline",
            CloseReason::Forced => "forced",
        }
    }
}

/// The UDP echo's counters, present only when `--udp` is configured.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UdpCounters {
    /// Datagrams received since start, whatever became of them.
    pub received: u64,
    /// Datagrams sent back whole since start.
    pub echoed: u64,
    /// Datagrams dropped since start, by reason: (label, count), in the order
    /// to list them. Labels are `[a-z_]+` (`low_port`, `bad_source`, `rate`,
    /// `kernel_full`, ...), spelled by the UDP module that counts them.
    pub dropped: Vec<(&'static str, u64)>,
}

/// The server's counters at one instant, copied by the server when a health
/// request is answered. Health connections appear in none of them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricsSnapshot {
    /// Serving, lame duck or draining.
    pub state: ServeState,
    /// Client connections open now.
    pub connections: u64,
    /// Client connections accepted since start (those closed at once for
    /// `--max-connections-per-ip` included).
    pub accepted: u64,
    /// Client connections closed since start, indexed by `CloseReason as usize`.
    pub closed: [u64; CloseReason::COUNT],
    /// Bytes read from clients and queued for echo since start.
    pub bytes_echoed: u64,
    /// Echo bytes read but not yet written, over all connections, now.
    pub pending_bytes: u64,
    /// Log lines dropped because stderr would not take them, since start.
    pub log_lines_dropped: u64,
    /// The UDP counters; `None` when no `--udp` address is configured, and
    /// then no UDP metric is emitted.
    pub udp: Option<UdpCounters>,
}

/// The standard `process_*` figures, read from `/proc/self` at scrape time.
/// A figure that cannot be read is `None` and its metric is left out.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcessStats {
    /// When the process started, in seconds since the Unix epoch.
    pub start_time_seconds: Option<f64>,
    /// Resident set size in bytes.
    pub resident_memory_bytes: Option<u64>,
    /// Open file descriptors (the one reading `/proc/self/fd` included, as
    /// every Prometheus client library counts it).
    pub open_fds: Option<u64>,
    /// User plus system CPU time, in seconds.
    pub cpu_seconds: Option<f64>,
}

impl ProcessStats {
    /// Reads the figures from `/proc/self/stat`, `/proc/stat` (boot time)
    /// and `/proc/self/fd`.
    ///
    /// # Notes
    ///
    /// Linux only; elsewhere every figure is `None`.
    pub fn read() -> ProcessStats {
        let ticks = crate::sys::clock_ticks_per_second().ok();
        let page = crate::sys::page_size().ok();
        let stat = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|text| parse_stat(&text));
        let boot = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|text| parse_boot_time(&text));
        let open_fds = std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|dir| dir.count() as u64);
        ProcessStats {
            start_time_seconds: stat
                .zip(boot)
                .zip(ticks)
                .map(|((stat, boot), ticks)| boot as f64 + stat.start_ticks as f64 / ticks as f64),
            resident_memory_bytes: stat
                .zip(page)
                .map(|(stat, page)| stat.rss_pages.saturating_mul(page)),
            open_fds,
            cpu_seconds: stat
                .zip(ticks)
                .map(|(stat, ticks)| stat.cpu_ticks as f64 / ticks as f64),
        }
    }
}

/// The fields of `/proc/self/stat` that `/metrics` reports, in their raw units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    /// `utime + stime`, in clock ticks.
    cpu_ticks: u64,
    /// `starttime`: clock ticks after boot.
    start_ticks: u64,
    /// `rss`, in pages.
    rss_pages: u64,
}

/// Parses `/proc/<pid>/stat` (proc(5)). The command name (field 2) may hold
/// spaces and parentheses, so fields are counted from its last `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let (_, rest) = text.rsplit_once(')')?;
    // After the name: field 3 (state) is at index 0, so field N is at N - 3.
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    let field = |n: usize| -> Option<u64> { fields.get(n - 3)?.parse().ok() };
    Some(Stat {
        cpu_ticks: field(14)?.checked_add(field(15)?)?,
        start_ticks: field(22)?,
        rss_pages: field(24)?,
    })
}

/// The boot time (`btime`, seconds since the epoch) from `/proc/stat`.
fn parse_boot_time(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|value| value.trim().parse().ok())
}

/// Kinds of metric in the text format.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// Only goes up (names end in `_total`).
    Counter,
    /// Goes up and down.
    Gauge,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        }
    }
}

/// Appends the whole `/metrics` body for `snapshot` and `process` to `out`.
pub fn render(snapshot: &MetricsSnapshot, process: &ProcessStats, out: &mut String) {
    // Writing to a String cannot fail; the Result only carries fmt's signature.
    let _ = render_echod(snapshot, out).and_then(|()| render_process(process, out));
}

fn render_echod(s: &MetricsSnapshot, out: &mut String) -> fmt::Result {
    use Kind::{Counter, Gauge};
    let state_help = "Lifecycle state: 0 serving, 1 lame duck, 2 draining.";
    single(out, "echod_state", Gauge, state_help, s.state.as_metric())?;
    let help = "Client connections open now (health connections are not counted).";
    single(out, "echod_connections", Gauge, help, s.connections)?;
    let help = "Client connections accepted since start.";
    single(
        out,
        "echod_connections_accepted_total",
        Counter,
        help,
        s.accepted,
    )?;
    let name = "echod_connections_closed_total";
    header(
        out,
        name,
        Counter,
        "Client connections closed since start, by reason.",
    )?;
    for reason in CloseReason::ALL {
        let count = s.closed.get(reason as usize).copied().unwrap_or(0);
        writeln!(out, "{name}{{reason=\"{}\"}} {count}", reason.label())?;
    }
    let help = "Bytes read from clients and queued for echo since start.";
    single(
        out,
        "echod_bytes_echoed_total",
        Counter,
        help,
        s.bytes_echoed,
    )?;
    let help = "Echo bytes read but not yet written, over all connections.";
    single(out, "echod_pending_bytes", Gauge, help, s.pending_bytes)?;
    let help = "Log lines dropped because stderr would not take them.";
    single(
        out,
        "echod_log_lines_dropped_total",
        Counter,
        help,
        s.log_lines_dropped,
    )?;
    if let Some(udp) = &s.udp {
        let help = "UDP datagrams received since start.";
        single(
            out,
            "echod_udp_datagrams_received_total",
            Counter,
            help,
            udp.received,
        )?;
        let help = "UDP datagrams echoed back whole since start.";
        single(
            out,
            "echod_udp_datagrams_echoed_total",
            Counter,
            help,
            udp.echoed,
        )?;
        let name = "echod_udp_dropped_total";
        header(
            out,
            name,
            Counter,
            "UDP datagrams dropped since start, by reason.",
        )?;
        for (reason, count) in &udp.dropped {
            writeln!(out, "{name}{{reason=\"{}\"}} {count}", label_value(reason))?;
        }
    }
    Ok(())
}

fn render_process(p: &ProcessStats, out: &mut String) -> fmt::Result {
    use Kind::{Counter, Gauge};
    // The names and help texts every Prometheus client library uses.
    if let Some(value) = p.cpu_seconds {
        let help = "Total user and system CPU time spent in seconds.";
        single(out, "process_cpu_seconds_total", Counter, help, value)?;
    }
    if let Some(value) = p.open_fds {
        single(
            out,
            "process_open_fds",
            Gauge,
            "Number of open file descriptors.",
            value,
        )?;
    }
    if let Some(value) = p.resident_memory_bytes {
        let help = "Resident memory size in bytes.";
        single(out, "process_resident_memory_bytes", Gauge, help, value)?;
    }
    if let Some(value) = p.start_time_seconds {
        let help = "Start time of the process since unix epoch in seconds.";
        single(out, "process_start_time_seconds", Gauge, help, value)?;
    }
    Ok(())
}

/// `# HELP` and `# TYPE` for `name`. Help texts here hold no `\` or newline,
/// the two characters the format would need escaped.
fn header(out: &mut String, name: &str, kind: Kind, help: &str) -> fmt::Result {
    writeln!(out, "# HELP {name} {help}")?;
    writeln!(out, "# TYPE {name} {}", kind.as_str())
}

/// A metric with one sample and no labels.
fn single(
    out: &mut String,
    name: &str,
    kind: Kind,
    help: &str,
    value: impl fmt::Display,
) -> fmt::Result {
    header(out, name, kind, help)?;
    writeln!(out, "{name} {value}")
}

/// A label value as the format allows it: `\`, `"` and newline escaped.
/// Labels passed in are plain words; this keeps a bad one from breaking
/// the whole scrape.
fn label_value(value: &str) -> std::borrow::Cow<'_, str> {
    if !value.contains(['\\', '"', '\n']) {
        return value.into();
    }
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
        .into()
}

/// Seconds since the Unix epoch now, for tests that check the start time.
#[cfg(test)]
fn now_seconds() -> f64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A strict reading of the text format 0.0.4, enough to catch what a
    /// Prometheus server would reject or misread: every sample belongs to a
    /// family announced by one `# HELP` and one `# TYPE` line just before its
    /// samples, names and labels have the allowed syntax, values are numbers,
    /// counters end in `_total`, and the text ends with a newline.
    pub(crate) fn check_text_format(text: &str) -> Result<Vec<(String, f64)>, String> {
        if !text.ends_with('\n') {
            return Err("no trailing newline".into());
        }
        let mut samples = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut family: Option<(String, &str)> = None;
        let mut help_for: Option<String> = None;
        for (n, line) in text.lines().enumerate() {
            let at = |what: &str| format!("line {}: {what}: {line:?}", n + 1);
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest
                    .split_once(' ')
                    .ok_or_else(|| at("HELP without text"))?;
                if !is_metric_name(name) || help.is_empty() {
                    return Err(at("bad HELP"));
                }
                help_for = Some(name.to_owned());
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest
                    .split_once(' ')
                    .ok_or_else(|| at("TYPE without kind"))?;
                if help_for.as_deref() != Some(name) {
                    return Err(at("TYPE not right after its HELP"));
                }
                if !matches!(kind, "counter" | "gauge") {
                    return Err(at("unexpected kind"));
                }
                if kind == "counter" && !name.ends_with("_total") {
                    return Err(at("counter name without _total"));
                }
                if !seen.insert(name.to_owned()) {
                    return Err(at("family announced twice"));
                }
                family = Some((name.to_owned(), kind));
            } else if line.starts_with('#') || line.is_empty() {
                return Err(at("unexpected comment or empty line"));
            } else {
                let (series, value) = line.rsplit_once(' ').ok_or_else(|| at("no value"))?;
                let value: f64 = value.parse().map_err(|_| at("value is not a number"))?;
                let name = series.split('{').next().unwrap_or_default();
                if !is_metric_name(name) {
                    return Err(at("bad metric name"));
                }
                if family.as_ref().map(|(f, _)| f.as_str()) != Some(name) {
                    return Err(at("sample outside its family"));
                }
                if let Some(labels) = series.strip_prefix(name).filter(|l| !l.is_empty()) {
                    check_labels(labels).map_err(|why| at(&why))?;
                }
                if !value.is_finite() || value < 0.0 {
                    return Err(at("value not a finite non-negative number"));
                }
                samples.push((series.to_owned(), value));
            }
        }
        Ok(samples)
    }

    fn is_metric_name(name: &str) -> bool {
        let mut chars = name.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    }

    /// `{name="value",...}` with plain label names and escaped values.
    fn check_labels(labels: &str) -> Result<(), String> {
        let inner = labels
            .strip_prefix('{')
            .and_then(|l| l.strip_suffix('}'))
            .ok_or("labels not in braces")?;
        for pair in inner.split(',') {
            let (name, value) = pair.split_once('=').ok_or("label without =")?;
            if !is_metric_name(name) || name.contains(':') || name.starts_with("__") {
                return Err(format!("bad label name {name:?}"));
            }
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .ok_or("label value not quoted")?;
            let mut chars = value.chars();
            while let Some(c) = chars.next() {
                match c {
                    '"' | '\n' => return Err(format!("unescaped {c:?} in {value:?}")),
                    '\\' if !matches!(chars.next(), Some('\\' | '"' | 'n')) => {
                        return Err(format!("bad escape in {value:?}"));
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    fn value_of(samples: &[(String, f64)], series: &str) -> Option<f64> {
        samples.iter().find(|(s, _)| s == series).map(|&(_, v)| v)
    }

    pub(crate) fn sample_snapshot() -> MetricsSnapshot {
        MetricsSnapshot {
            state: ServeState::LameDuck,
            connections: 12,
            accepted: 345,
            closed: [300, 5, 4, 3, 2, 1],
            bytes_echoed: 1 << 40,
            pending_bytes: 4096,
            log_lines_dropped: 7,
            udp: Some(UdpCounters {
                received: 1000,
                echoed: 990,
                dropped: vec![
                    ("low_port", 4),
                    ("bad_source", 3),
                    ("rate", 2),
                    ("kernel_full", 1),
                ],
            }),
        }
    }

    fn sample_process() -> ProcessStats {
        ProcessStats {
            start_time_seconds: Some(1_700_000_000.25),
            resident_memory_bytes: Some(2_500_000),
            open_fds: Some(9),
            cpu_seconds: Some(0.37),
        }
    }

    #[test]
    fn every_metric_is_in_the_text_format_with_the_values_given() {
        let mut text = String::new();
        render(&sample_snapshot(), &sample_process(), &mut text);
        let samples = check_text_format(&text).unwrap_or_else(|why| panic!("{why}\n{text}"));
        let expect = [
            ("echod_state", 1.0),
            ("echod_connections", 12.0),
            ("echod_connections_accepted_total", 345.0),
            ("echod_connections_closed_total{reason=\"peer\"}", 300.0),
            ("echod_connections_closed_total{reason=\"error\"}", 5.0),
            ("echod_connections_closed_total{reason=\"idle\"}", 4.0),
            ("echod_connections_closed_total{reason=\"per_ip\"}", 3.0),
            ("echod_connections_closed_total{reason=\"deadline\"}", 2.0),
            ("echod_connections_closed_total{reason=\"forced\"}", 1.0),
            ("echod_bytes_echoed_total", (1u64 << 40) as f64),
            ("echod_pending_bytes", 4096.0),
            ("echod_log_lines_dropped_total", 7.0),
            ("echod_udp_datagrams_received_total", 1000.0),
            ("echod_udp_datagrams_echoed_total", 990.0),
            ("echod_udp_dropped_total{reason=\"low_port\"}", 4.0),
            ("echod_udp_dropped_total{reason=\"bad_source\"}", 3.0),
            ("echod_udp_dropped_total{reason=\"rate\"}", 2.0),
            ("echod_udp_dropped_total{reason=\"kernel_full\"}", 1.0),
            ("process_cpu_seconds_total", 0.37),
            ("process_open_fds", 9.0),
            ("process_resident_memory_bytes", 2_500_000.0),
            ("process_start_time_seconds", 1_700_000_000.25),
        ];
        for (series, value) in expect {
            assert_eq!(
                value_of(&samples, series),
                Some(value),
                "{series} in\n{text}"
            );
        }
        assert_eq!(samples.len(), expect.len(), "unexpected samples in\n{text}");
        assert!(text.contains("# TYPE echod_connections_closed_total counter\n"));
        assert!(text.contains("# TYPE echod_pending_bytes gauge\n"));
    }

    /// Not a check by itself: prints a rendered sample (real process figures)
    /// for `tests/prometheus_text.py`, the check by a real Prometheus parser.
    #[test]
    #[ignore = "feeds tests/prometheus_text.py; run by hand with --ignored --nocapture"]
    fn a_sample_for_an_external_parser() {
        let mut text = String::new();
        render(&sample_snapshot(), &ProcessStats::read(), &mut text);
        println!("--- metrics sample begin ---\n{text}--- metrics sample end ---");
    }

    #[test]
    fn udp_metrics_appear_only_when_udp_is_configured() {
        let snapshot = MetricsSnapshot {
            udp: None,
            ..sample_snapshot()
        };
        let mut text = String::new();
        render(&snapshot, &ProcessStats::default(), &mut text);
        check_text_format(&text).unwrap_or_else(|why| panic!("{why}\n{text}"));
        assert!(!text.contains("udp"), "{text}");
        assert!(
            !text.contains("process_"),
            "unreadable figures are left out: {text}"
        );
        assert!(text.contains("echod_state 1\n"));
    }

    #[test]
    fn the_state_gauge_counts_serving_lame_duck_draining() {
        assert_eq!(ServeState::default(), ServeState::Serving);
        assert_eq!(ServeState::Serving.as_metric(), 0);
        assert_eq!(ServeState::LameDuck.as_metric(), 1);
        assert_eq!(ServeState::Draining.as_metric(), 2);
    }

    #[test]
    fn close_reasons_index_their_own_counter() {
        for (index, reason) in CloseReason::ALL.into_iter().enumerate() {
            assert_eq!(reason as usize, index);
        }
        let labels: Vec<_> = CloseReason::ALL.map(CloseReason::label).to_vec();
        assert_eq!(
            labels,
            ["peer", "error", "idle", "per_ip", "deadline", "forced"]
        );
    }

    #[test]
    fn a_label_value_that_needs_escaping_is_escaped() {
        let snapshot = MetricsSnapshot {
            udp: Some(UdpCounters {
                dropped: vec![("odd\"\\\nreason", 1)],
                ..UdpCounters::default()
            }),
            ..MetricsSnapshot::default()
        };
        let mut text = String::new();
        render(&snapshot, &ProcessStats::default(), &mut text);
        check_text_format(&text).unwrap_or_else(|why| panic!("{why}\n{text}"));
        assert!(text.contains(r#"{reason="odd\"\\\nreason"} 1"#), "{text}");
    }

    #[test]
    fn proc_stat_is_read_past_a_command_name_with_spaces_and_parens() {
        // Fields 1-24 of proc(5) with the name "a) (b c"; utime 14 = 150,
        // stime 15 = 50, starttime 22 = 4200, rss 24 = 321.
        let text = "77 (a) (b c) S 1 77 77 0 -1 4194560 100 0 0 0 150 50 0 0 20 0 1 0 4200 9000000 321 18446744073709551615\n";
        assert_eq!(
            parse_stat(text),
            Some(Stat {
                cpu_ticks: 200,
                start_ticks: 4200,
                rss_pages: 321
            })
        );
        assert_eq!(parse_stat("77 (cut short) S 1 2"), None);
        assert_eq!(parse_stat("no parenthesis at all"), None);
        assert_eq!(
            parse_boot_time("cpu 1 2 3\nbtime 1700000000\nprocesses 9\n"),
            Some(1_700_000_000)
        );
        assert_eq!(parse_boot_time("cpu 1 2 3\n"), None);
    }

    #[test]
    fn process_figures_are_read_from_proc_self() {
        let stats = ProcessStats::read();
        let fds = stats.open_fds.expect("open fds from /proc/self/fd");
        assert!(fds >= 3, "open_fds={fds}");
        let rss = stats
            .resident_memory_bytes
            .expect("rss from /proc/self/stat");
        assert!(rss > 100_000, "rss={rss}");
        let cpu = stats.cpu_seconds.expect("cpu from /proc/self/stat");
        assert!(cpu >= 0.0, "cpu={cpu}");
        let start = stats.start_time_seconds.expect("start time from /proc");
        let now = now_seconds();
        // The test process started before now, and (on any sane machine)
        // within the last day; a tick of rounding either way is allowed.
        assert!(
            start <= now + 1.0 && start > now - 86_400.0,
            "start={start} now={now}"
        );
    }
}
