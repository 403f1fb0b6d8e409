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
//! CPU 1, and compares them in the same run, in alternating rounds. Prints
//! every table and writes `target/echo-bench/{latest,quick}.{json,md}`; a
//! person copies the figures worth keeping into `docs/benchmarks.md`, with
//! the date, the machine and the command.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

mod extra;
mod instrument;
mod measure;
mod report;
mod results;
mod scenarios;
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
    println!(
        "echod bench: {} mode{}; {} CPUs, {}, Linux {}",
        mode(quick),
        if callgrind { " + callgrind" } else { "" },
        machine.nproc,
        machine.cpu_model,
        machine.kernel
    );
    println!("{pinning}");
    let ctx = Ctx {
        quick,
        server_cpu,
        load_cpu,
        servers: servers::available(&root),
        root: root.clone(),
    };
    println!(
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
    println!("\n{md}");
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
    match measure::pin_current_thread(1) {
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
    println!("  ({:.1} s)", start.elapsed().as_secs_f64());
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

/// Writes the run's JSON and Markdown under `target/echo-bench/`: results
/// are build output, not sources, so the bench never edits the repository.
fn write_outputs(
    root: &Path,
    quick: bool,
    r: &Results,
    info: &RunInfo,
    targets: &[report::Target],
    md: &str,
) {
    let dir = root.join("target/echo-bench");
    if let Err(e) = fs::create_dir_all(&dir) {
        println!("cannot create {}: {e}", dir.display());
        return;
    }
    let stem = if quick { "quick" } else { "latest" };
    let json = report::json(r, info, targets);
    match serde_json::to_string_pretty(&json) {
        Ok(text) => write(&dir.join(format!("{stem}.json")), &(text + "\n")),
        Err(e) => println!("cannot render the JSON results: {e}"),
    }
    write(&dir.join(format!("{stem}.md")), md);
}
