//! echod's end-to-end benchmark (`harness = false`).
//!
//! ```sh
//! cargo bench --bench echo -- --quick        # under 2 minutes
//! cargo bench --bench echo                   # full run, under 10 minutes on 2 cores
//! cargo bench --bench echo -- --callgrind    # full run plus instruction counts
//! cargo bench --bench echo -- --quick --only rss,drain   # some phases, no file written
//! ```
//!
//! Phases for `--only`: throughput, latency, rss, syscalls, startup, drain,
//! load (echo-load against blocking-client), callgrind.
//!
//! Starts echod and its peers (benches/peers: a C epoll server, tokio
//! current_thread and multi-thread, canonical mio) as child processes pinned
//! to CPU 0, drives them with the in-process echo-load library pinned to
//! CPU 1, and compares them in the same run, in alternating rounds. Writes
//! `docs/bench/latest.{json,md}`, `docs/benchmarks.svg` and the generated
//! part of `docs/benchmarks.md` (a `--quick` run writes
//! `docs/bench/quick.{json,md}` and leaves the published figures alone).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

/// Everything printed on stdout, kept for the raw output in the docs.
static OUT: Mutex<String> = Mutex::new(String::new());

/// `println!` that also records the line.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {{
        let line = format!($($arg)*);
        println!("{line}");
        $crate::record(&line);
    }};
}

pub fn record(line: &str) {
    let mut out = OUT.lock().unwrap_or_else(PoisonError::into_inner);
    out.push_str(line);
    out.push('\n');
}

#[path = "echo/chart.rs"]
mod chart;
#[path = "echo/extra.rs"]
mod extra;
#[path = "echo/instrument.rs"]
mod instrument;
#[path = "echo/measure.rs"]
mod measure;
#[path = "echo/report.rs"]
mod report;
#[path = "echo/results.rs"]
mod results;
#[path = "echo/scenarios.rs"]
mod scenarios;
#[path = "echo/servers.rs"]
mod servers;

use report::RunInfo;
use results::Results;
use scenarios::Ctx;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // cargo passes --bench (and may pass filters): anything unknown is ignored.
    let quick = args.iter().any(|a| a == "--quick");
    let callgrind = args.iter().any(|a| a == "--callgrind");
    // --only PHASE[,PHASE..] runs part of the bench and writes no file.
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let started = Instant::now();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let machine = measure::machine();
    let (server_cpu, load_cpu, pinning) = pinning(machine.nproc);
    say!(
        "echod bench: {} mode{}; {} CPUs, {}, Linux {}",
        mode(quick),
        if callgrind { " + callgrind" } else { "" },
        machine.nproc,
        machine.cpu_model,
        machine.kernel
    );
    say!("{pinning}");
    let ctx = Ctx {
        quick,
        server_cpu,
        load_cpu,
        servers: servers::available(&root),
        root: root.clone(),
    };
    say!(
        "servers: {}",
        ctx.servers
            .iter()
            .map(|s| s.kind.name())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut r = run_all(&ctx, callgrind, only.as_deref());
    if server_cpu.is_none() {
        r.notes.push(pinning.clone());
    }
    r.notes.push("tokio-mt runs pinned to one CPU like every server, so its runtime starts one worker (tokio sizes the pool from the CPUs it may use).".into());
    let mut command = "cargo bench --bench echo".to_string();
    let flags: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| matches!(*a, "--quick" | "--callgrind"))
        .collect();
    if !flags.is_empty() {
        command = format!("{command} -- {}", flags.join(" "));
    }
    let info = RunInfo {
        machine,
        date: date(),
        mode: mode(quick),
        command,
        pinning,
        secs: started.elapsed().as_secs_f64(),
    };
    let targets = report::targets(&r);
    let md = report::markdown(&r, &info, &targets);
    say!("\n{md}");
    match only {
        Some(phases) => println!("--only {phases}: no file written"),
        None => write_outputs(&root, quick, &r, &info, &targets, &md),
    }
}

fn mode(quick: bool) -> &'static str {
    if quick { "quick" } else { "full" }
}

/// Server and load CPUs, and a sentence saying so. Pins the bench itself
/// (and so every thread it starts) to the load CPU.
fn pinning(nproc: usize) -> (Option<usize>, Option<usize>, String) {
    if nproc < 2 {
        return (
            None,
            None,
            format!("NOT PINNED: only {nproc} CPU; server and load share it"),
        );
    }
    match echod::sys::pin_current_thread(1) {
        Ok(()) => (
            Some(0),
            Some(1),
            "servers pinned to CPU 0, echo-load (1 thread) and the bench to CPU 1".into(),
        ),
        Err(e) => (
            None,
            None,
            format!("NOT PINNED: cannot pin the bench to CPU 1: {e}"),
        ),
    }
}

/// Every measurement, in order (or only those named by `--only`); a
/// failed one is reported and skipped.
fn run_all(ctx: &Ctx, callgrind: bool, only: Option<&str>) -> Results {
    let mut r = Results::default();
    if ctx.servers.is_empty() {
        return r;
    }
    let on = |name: &str| only.is_none_or(|o| o.split(',').any(|x| x == name));
    if on("throughput") {
        r.throughput = timed(|| scenarios::throughput(ctx));
    }
    if on("latency") {
        (r.latency, r.latency_rate) = timed(|| scenarios::latency(ctx));
    }
    if on("rss") {
        r.rss = timed(|| extra::rss(ctx));
    }
    if on("syscalls") {
        r.syscalls = timed(|| instrument::syscalls(ctx));
    }
    if on("startup") {
        r.startup = timed(|| extra::startup(ctx));
    }
    if on("drain") {
        r.drain = timed(|| extra::drain(ctx));
    }
    if on("load") {
        r.vs_blocking = timed(|| extra::vs_blocking(ctx));
    }
    if callgrind || only.is_some_and(|o| o.split(',').any(|x| x == "callgrind")) {
        r.callgrind = timed(|| instrument::callgrind(ctx));
    }
    r.binary_size = fs::metadata(env!("CARGO_BIN_EXE_echod"))
        .ok()
        .map(|m| m.len());
    r
}

/// Runs one measurement and says how long it took.
fn timed<T>(f: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let out = f();
    say!("  ({:.1} s)", start.elapsed().as_secs_f64());
    out
}

fn date() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|_| "unknown date".into())
}

fn write(path: &Path, text: &str) {
    match fs::write(path, text) {
        Ok(()) => println!("wrote {}", path.display()),
        Err(e) => println!("cannot write {}: {e}", path.display()),
    }
}

fn write_outputs(
    root: &Path,
    quick: bool,
    r: &Results,
    info: &RunInfo,
    targets: &[report::Target],
    md: &str,
) {
    let bench = root.join("docs/bench");
    if let Err(e) = fs::create_dir_all(&bench) {
        println!("cannot create {}: {e}", bench.display());
        return;
    }
    let stem = if quick { "quick" } else { "latest" };
    write(
        &bench.join(format!("{stem}.json")),
        &report::json(r, info, targets).render(),
    );
    write(&bench.join(format!("{stem}.md")), md);
    let title = format!(
        "echod and peers, {} ({} CPUs, Linux {})",
        info.date, info.machine.nproc, info.machine.kernel
    );
    let svg = chart::svg(r, &title);
    if quick {
        let dir = root.join("target/echo-bench");
        if fs::create_dir_all(&dir).is_ok() {
            write(&dir.join("quick.svg"), &svg);
        }
        return;
    }
    write(&root.join("docs/benchmarks.svg"), &svg);
    update_doc(&root.join("docs/benchmarks.md"), info, md);
}

const BEGIN: &str =
    "<!-- bench:begin (generated by cargo bench --bench echo; edits here are overwritten) -->";
const END: &str = "<!-- bench:end -->";

/// Replaces the generated part of docs/benchmarks.md.
fn update_doc(path: &Path, info: &RunInfo, md: &str) {
    let Ok(doc) = fs::read_to_string(path) else {
        println!("{} not found: not updated", path.display());
        return;
    };
    let (Some(a), Some(b)) = (doc.find(BEGIN), doc.find(END)) else {
        println!("{} has no bench markers: not updated", path.display());
        return;
    };
    let raw = OUT.lock().unwrap_or_else(PoisonError::into_inner).clone();
    let generated = format!(
        "{BEGIN}\n\nCommand: `{}`\n\n{md}\n#### Raw output\n\n```text\n{}```\n\n",
        info.command, raw
    );
    let text = format!("{}{generated}{}", &doc[..a], &doc[b..]);
    write(path, &text);
}
