//! The one-off measurements: memory with idle connections, start-up time,
//! echod's drain with many clients, and echo-load against the blocking
//! client.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use echo_load::Stop;

use crate::measure::{self, Drops, median, rss_bytes};
use crate::results::{DrainResult, RssRow, StartupRow, VsBlocking};
use crate::scenarios::{Ctx, errors};
use crate::servers::{self, Kind, Launch, Server};

/// Idle connections opened for the memory measurement.
const IDLE_CONNS: usize = 10_000;

/// RSS of every server idle and with [`IDLE_CONNS`] idle connections.
pub fn rss(ctx: &Ctx) -> Vec<RssRow> {
    println!("\n-- memory: VmRSS idle and with {IDLE_CONNS} idle connections");
    if let Err(e) = echod::raise_fd_limit() {
        println!("  cannot raise RLIMIT_NOFILE: {e}");
    }
    let mut rows = Vec::new();
    for server in &ctx.servers {
        match rss_one(ctx, server) {
            Ok(row) => {
                println!(
                    "  {:<9} idle {:>7.0} KiB   with {} conns {:>8} KiB   {:>6} B/conn",
                    server.kind.name(),
                    row.idle as f64 / 1024.0,
                    row.conns,
                    row.loaded
                        .map_or("-".into(), |b| format!("{:.0}", b as f64 / 1024.0)),
                    row.per_conn().map_or("-".into(), |b| format!("{b:.0}")),
                );
                rows.push(row);
            }
            Err(e) => println!("  {:<9} FAILED: {e}", server.kind.name()),
        }
    }
    rows
}

fn rss_one(ctx: &Ctx, server: &Server) -> Result<RssRow, String> {
    let running = servers::start(server, &ctx.launch())?;
    thread::sleep(Duration::from_millis(300));
    let idle = rss_bytes(running.pid).ok_or("cannot read VmRSS")?;
    let base_fds = measure::fd_count(running.pid).ok_or("cannot count fds")?;
    let mut streams = Vec::with_capacity(IDLE_CONNS);
    for i in 0..IDLE_CONNS {
        match TcpStream::connect(running.addr) {
            Ok(s) => streams.push(s),
            Err(e) => {
                println!(
                    "  {}: connect {i} failed: {e}; measuring with {i}",
                    server.kind.name()
                );
                break;
            }
        }
        // Keep the accept queue short: let the server catch up every 100.
        if i % 100 == 99 {
            measure::wait_fds(running.pid, base_fds + i + 1 - 100, Duration::from_secs(5));
        }
    }
    let want = base_fds + streams.len();
    let got = measure::wait_fds(running.pid, want, Duration::from_secs(15));
    if got < want {
        println!(
            "  {}: only {} of {} connections accepted",
            server.kind.name(),
            got - base_fds.min(got),
            streams.len()
        );
    }
    thread::sleep(Duration::from_millis(300));
    let loaded = rss_bytes(running.pid);
    drop(running);
    Ok(RssRow {
        server: server.kind,
        idle,
        loaded,
        conns: got.saturating_sub(base_fds),
    })
}

/// Median time from spawn to the first echoed byte, per server.
pub fn startup(ctx: &Ctx) -> Vec<StartupRow> {
    let reps = if ctx.quick { 5 } else { 20 };
    println!("\n-- start-up: spawn to first echoed byte, {reps} runs each, alternating");
    let mut rows: Vec<StartupRow> = ctx
        .servers
        .iter()
        .map(|s| StartupRow {
            server: s.kind,
            samples_ms: Vec::new(),
        })
        .collect();
    let mut failed = vec![false; ctx.servers.len()];
    for rep in 0..reps {
        for i in ctx.order(rep) {
            if failed[i] {
                continue;
            }
            match startup_once(&ctx.servers[i], &ctx.launch()) {
                Ok(ms) => rows[i].samples_ms.push(ms),
                Err(e) => {
                    println!("  {:<9} FAILED: {e}", ctx.servers[i].kind.name());
                    failed[i] = true;
                }
            }
        }
    }
    rows.retain(|r| !r.samples_ms.is_empty());
    for r in &rows {
        println!(
            "  {:<9} median {:>6.2} ms",
            r.server.name(),
            median(&r.samples_ms)
        );
    }
    rows
}

fn startup_once(server: &Server, launch: &Launch) -> Result<f64, String> {
    let port = servers::free_port().map_err(|e| format!("no free port: {e}"))?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut cmd = servers::command(server, &addr.to_string(), launch);
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    let start = Instant::now();
    let child = cmd.spawn().map_err(|e| format!("cannot start: {e}"))?;
    let _guard = ChildGuard(child);
    let deadline = start + Duration::from_secs(10);
    loop {
        if let Ok(mut s) = TcpStream::connect(addr) {
            let mut byte = [0u8; 1];
            s.set_read_timeout(Some(Duration::from_secs(5)))
                .map_err(|e| e.to_string())?;
            s.write_all(b"x")
                .and_then(|()| s.read_exact(&mut byte))
                .map_err(|e| format!("echo: {e}"))?;
            return Ok(start.elapsed().as_secs_f64() * 1e3);
        }
        if Instant::now() > deadline {
            return Err("no connection accepted within 10 s".into());
        }
    }
}

/// Kills and reaps a child when dropped.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// echod with many connected clients, drained by SIGHUP mid-run.
pub fn drain(ctx: &Ctx) -> Option<DrainResult> {
    let conns = 10_000;
    println!(
        "\n-- drain at scale: echod with {conns} clients at 2000 msgs/s total, SIGHUP mid-run"
    );
    let server = ctx.servers.iter().find(|s| s.kind == Kind::Echod)?;
    match drain_run(ctx, server, conns) {
        Ok(d) => {
            let ms = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1} ms"));
            println!(
                "  connections {} of {} opened, {} notices, {} errors",
                d.opened, d.asked, d.notices, d.errors
            );
            println!(
                "  SIGHUP -> last client holds its notice   {}",
                ms(d.to_last_notice_ms)
            );
            println!(
                "  fan-out first -> last notice            {}",
                ms(d.fanout_ms)
            );
            println!(
                "  last client close -> echod exit         {}",
                ms(d.close_to_exit_ms)
            );
            println!(
                "  SIGHUP -> echod exit                    {}  ({})",
                ms(d.sighup_to_exit_ms),
                d.exit_status
            );
            Some(d)
        }
        Err(e) => {
            println!("  FAILED: {e}");
            None
        }
    }
}

fn drain_run(ctx: &Ctx, server: &Server, conns: usize) -> Result<DrainResult, String> {
    let mut launch = ctx.launch();
    launch.echod_args = ["--drain-timeout", "30", "--max-connections", "20000"]
        .map(String::from)
        .to_vec();
    let mut running = servers::start(server, &launch)?;
    let base_fds = measure::fd_count(running.pid).ok_or("cannot count fds")?;
    let mut config = ctx.load(
        running.addr,
        conns,
        64,
        Stop::Duration(Duration::from_secs(60)),
    );
    config.rate = Some(2000.0);
    config.connect_timeout = Duration::from_secs(20);
    let load = thread::spawn(move || echo_load::run(&config));
    // Wait until every connection is in, then let the load run a little.
    let seen = measure::wait_fds(running.pid, base_fds + conns, Duration::from_secs(40));
    thread::sleep(Duration::from_millis(if ctx.quick { 500 } else { 1500 }));
    let mut child = running.take_child().ok_or("no child")?;
    let (tx, rx) = mpsc::channel();
    let hup = Instant::now();
    running
        .signal(libc::SIGHUP)
        .map_err(|e| format!("SIGHUP: {e}"))?;
    thread::spawn(move || {
        let status = child.wait();
        let _ = tx.send((Instant::now(), status));
    });
    let exit = rx.recv_timeout(Duration::from_secs(60));
    if exit.is_err() {
        let _ = running.signal(libc::SIGKILL);
    }
    let report = load
        .join()
        .map_err(|_| "echo-load panicked")?
        .map_err(|e| e.to_string())?;
    let ms = |a: Instant, b: Instant| b.saturating_duration_since(a).as_secs_f64() * 1e3;
    let (exit_at, status) = match exit {
        Ok((t, s)) => (Some(t), s.map_or_else(|e| e.to_string(), |s| s.to_string())),
        Err(_) => (None, "did not exit within 60 s; killed".into()),
    };
    let d = &report.drain;
    if seen < base_fds + conns {
        println!(
            "  only {} connections reached echod before SIGHUP",
            seen.saturating_sub(base_fds)
        );
    }
    Ok(DrainResult {
        asked: conns,
        opened: report.connections_opened,
        notices: d.notices,
        errors: errors(&report),
        to_last_notice_ms: d.last_notice.map(|t| ms(hup, t)),
        fanout_ms: d.fanout().map(|f| f.as_secs_f64() * 1e3),
        close_to_exit_ms: d.last_close.zip(exit_at).map(|(c, e)| ms(c, e)),
        sighup_to_exit_ms: exit_at.map(|e| ms(hup, e)),
        exit_status: status,
    })
}

/// echo-load and blocking-client, alternately, against the C server.
pub fn vs_blocking(ctx: &Ctx) -> Option<VsBlocking> {
    println!("\n-- load generators: echo-load vs blocking-client, c-epoll server, 50 x 64 B");
    let server = ctx.servers.iter().find(|s| s.kind == Kind::C);
    let client = servers::blocking_client(&ctx.root);
    let (Some(server), Some(client)) = (server, client) else {
        println!("  SKIP: needs c-epoll and blocking-client");
        return None;
    };
    let secs = if ctx.quick { 1 } else { 3 };
    let mut out = VsBlocking::default();
    for round in 0..ctx.rounds() {
        let running = match servers::start(server, &ctx.launch()) {
            Ok(r) => r,
            Err(e) => {
                println!("  FAILED: {e}");
                continue;
            }
        };
        let watch = Drops::start();
        let config = ctx.load(
            running.addr,
            50,
            64,
            Stop::Duration(Duration::from_secs(secs)),
        );
        match echo_load::run(&config) {
            Ok(r) => {
                println!(
                    "  round {}: echo-load       {:>9.0} rt/s  (its cpu {:.0}% of a core)",
                    round + 1,
                    r.msgs_per_sec,
                    r.cpu_percent()
                );
                out.echo_load.push(r.msgs_per_sec);
                out.echo_load_cpu_pct.push(r.cpu_percent());
            }
            Err(e) => println!("  round {}: echo-load FAILED: {e}", round + 1),
        }
        match blocking_run(&client, running.addr, secs, ctx.load_cpu) {
            Ok(rps) => {
                println!("  round {}: blocking-client {:>9.0} rt/s", round + 1, rps);
                out.blocking.push(rps);
            }
            Err(e) => println!("  round {}: blocking-client FAILED: {e}", round + 1),
        }
        if watch.since() > 0 {
            println!("  WARNING: loopback drops during round {}", round + 1);
        }
    }
    Some(out)
}

fn blocking_run(
    client: &std::path::Path,
    addr: SocketAddr,
    secs: u64,
    pin: Option<usize>,
) -> Result<f64, String> {
    let mut cmd = Command::new(client);
    cmd.args([
        "-a",
        &addr.to_string(),
        "-c",
        "50",
        "-l",
        "64",
        "-t",
        &secs.to_string(),
    ]);
    if let Some(cpu) = pin {
        cmd.args(["--pin", &cpu.to_string()]);
    }
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .split("\"rps\":")
        .nth(1)
        .and_then(|r| r.trim().trim_end_matches('}').trim().parse().ok());
    rps.ok_or_else(|| format!("no rps in its output ({}): {text}", out.status))
}
