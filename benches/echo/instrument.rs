//! Counting what a server does per message with outside tools: system calls
//! with `perf stat` (or `strace -c`), instructions with callgrind.

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::Duration;

use echo_load::Stop;

use crate::results::{CallgrindRow, SyscallRow};
use crate::scenarios::{Ctx, errors};
use crate::servers::{self, Kind, Launch, Server};

const EPOLL_EVENTS: [&str; 3] = [
    "syscalls:sys_enter_epoll_wait",
    "syscalls:sys_enter_epoll_pwait",
    "syscalls:sys_enter_epoll_pwait2",
];

/// System calls per echoed message at 50 connections, for every server.
pub fn syscalls(ctx: &Ctx) -> Vec<SyscallRow> {
    let perf = perf_works();
    let tool = if perf { "perf stat" } else { "strace -c -f" };
    let msgs: u64 = match (perf, ctx.quick) {
        (true, true) => 50_000,
        (true, false) => 200_000,
        (false, _) => 20_000,
    };
    println!("\n-- system calls: 50 connections x 64 B, {msgs} messages, counted with {tool}");
    let mut rows = Vec::new();
    for server in &ctx.servers {
        match syscall_run(ctx, server, perf, msgs) {
            Ok(row) => {
                println!(
                    "  {:<9} {:>5.2} syscalls/msg   epoll_wait {:>5.2}/msg   others {:>5.2}/msg",
                    server.kind.name(),
                    row.per_msg(),
                    row.epoll_per_msg(),
                    row.other_per_msg()
                );
                rows.push(row);
            }
            Err(e) => println!("  {:<9} FAILED: {e}", server.kind.name()),
        }
    }
    rows
}

/// Whether `perf stat` can count the syscall tracepoints here.
fn perf_works() -> bool {
    let mut events = vec!["raw_syscalls:sys_enter"];
    events.extend(EPOLL_EVENTS);
    Command::new("perf")
        .args(["stat", "-x,", "-e", &events.join(","), "--", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn counter(perf: bool, pid: i32) -> std::io::Result<Child> {
    let pid = pid.to_string();
    let mut cmd = if perf {
        let mut events = vec!["raw_syscalls:sys_enter"];
        events.extend(EPOLL_EVENTS);
        let mut c = Command::new("perf");
        c.args(["stat", "-x,", "-e", &events.join(","), "-p", &pid]);
        c
    } else {
        let mut c = Command::new("strace");
        c.args(["-c", "-f", "-p", &pid]);
        c
    };
    cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn()
}

fn syscall_run(ctx: &Ctx, server: &Server, perf: bool, msgs: u64) -> Result<SyscallRow, String> {
    let running = servers::start(server, &ctx.launch())?;
    let counter =
        counter(perf, running.pid).map_err(|e| format!("cannot start the counter: {e}"))?;
    // Neither tool says when it is attached.
    thread::sleep(Duration::from_millis(500));
    let config = ctx.load(running.addr, 50, 64, Stop::Messages(msgs));
    let report = echo_load::run(&config);
    thread::sleep(Duration::from_millis(50));
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(counter.id() as i32, libc::SIGINT) };
    let out = counter
        .wait_with_output()
        .map_err(|e| format!("counter: {e}"))?;
    let report = report.map_err(|e| format!("echo-load: {e}"))?;
    if errors(&report) > 0 {
        println!(
            "  {}: WARNING {} load errors",
            server.kind.name(),
            errors(&report)
        );
    }
    let text = String::from_utf8_lossy(&out.stderr);
    let (total, epoll_wait) = if perf {
        parse_perf(&text)
    } else {
        parse_strace(&text)
    }
    .ok_or_else(|| format!("cannot read the counts from: {}", text.trim()))?;
    Ok(SyscallRow {
        server: server.kind,
        tool: if perf {
            "perf stat -e raw_syscalls:sys_enter"
        } else {
            "strace -c -f"
        }
        .into(),
        msgs: report.messages + report.warmup_messages,
        total,
        epoll_wait,
    })
}

/// `perf stat -x,` lines: `COUNT,UNIT,EVENT,...`.
fn parse_perf(text: &str) -> Option<(u64, u64)> {
    let mut total = None;
    let mut epoll = 0;
    for line in text.lines() {
        let fields: Vec<&str> = line.split(',').collect();
        let (Some(count), Some(event)) = (fields.first(), fields.get(2)) else {
            continue;
        };
        let count: u64 = count.trim().parse().unwrap_or(0);
        if *event == "raw_syscalls:sys_enter" {
            total = Some(count);
        } else if EPOLL_EVENTS.contains(event) {
            epoll += count;
        }
    }
    Some((total?, epoll))
}

/// `strace -c` table: `% time seconds usecs/call calls [errors] syscall`.
fn parse_strace(text: &str) -> Option<(u64, u64)> {
    let mut total = None;
    let mut epoll = 0;
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(name), Some(calls)) = (fields.last(), fields.get(3)) else {
            continue;
        };
        let Ok(calls) = calls.parse::<u64>() else {
            continue;
        };
        match *name {
            "total" => total = Some(calls),
            n if n.starts_with("epoll_wait") || n.starts_with("epoll_pwait") => epoll += calls,
            _ => {}
        }
    }
    Some((total?, epoll))
}

/// Instructions per round trip under callgrind for echod and three peers.
pub fn callgrind(ctx: &Ctx) -> Vec<CallgrindRow> {
    let (n1, n2) = (10_000, 60_000);
    println!("\n-- callgrind: 1 connection x 64 B, Ir({n2}) - Ir({n1}) per round trip");
    let dir = ctx.root.join("target/callgrind");
    if let Err(e) = fs::create_dir_all(&dir) {
        println!("  SKIP: cannot create {}: {e}", dir.display());
        return Vec::new();
    }
    let wanted = [Kind::Echod, Kind::C, Kind::Mio, Kind::TokioCt];
    let mut rows = Vec::new();
    for server in ctx.servers.iter().filter(|s| wanted.contains(&s.kind)) {
        let run = |n| callgrind_run(ctx, server, &dir, n);
        match run(n1).and_then(|ir1| Ok((ir1, run(n2)?))) {
            Ok((ir1, ir2)) => {
                let row = CallgrindRow {
                    server: server.kind,
                    n1,
                    n2,
                    ir1,
                    ir2,
                };
                println!(
                    "  {:<9} {:>7.1} instructions per round trip",
                    server.kind.name(),
                    row.per_rt()
                );
                rows.push(row);
            }
            Err(e) => println!("  {:<9} FAILED: {e}", server.kind.name()),
        }
    }
    rows
}

/// One server run under callgrind with `n` messages; returns its total Ir.
fn callgrind_run(ctx: &Ctx, server: &Server, dir: &Path, n: u64) -> Result<u64, String> {
    let out = dir.join(format!("{}-{n}.out", server.kind.name()));
    let _ = fs::remove_file(&out);
    let launch = Launch {
        pin: ctx.server_cpu,
        wrapper: vec![
            "valgrind".into(),
            "-q".into(),
            "--tool=callgrind".into(),
            format!("--callgrind-out-file={}", out.display()),
        ],
        ready_timeout: Duration::from_secs(60),
        ..Launch::default()
    };
    let mut running = servers::start(server, &launch)?;
    let mut config = ctx.load(running.addr, 1, 64, Stop::Messages(n));
    config.connect_timeout = Duration::from_secs(30);
    let report = echo_load::run(&config).map_err(|e| format!("echo-load: {e}"))?;
    if !report.is_clean() || report.messages + report.warmup_messages != n {
        return Err(format!(
            "load not clean: {} of {n} messages",
            report.messages
        ));
    }
    running
        .signal(libc::SIGTERM)
        .map_err(|e| format!("SIGTERM: {e}"))?;
    if !running.wait_exit(Duration::from_secs(60)) {
        return Err("did not exit within 60 s of SIGTERM".into());
    }
    let text = fs::read_to_string(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    text.lines()
        .find_map(|l| {
            l.strip_prefix("summary:")
                .or_else(|| l.strip_prefix("totals:"))
        })
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| format!("no summary line in {}", out.display()))
}
