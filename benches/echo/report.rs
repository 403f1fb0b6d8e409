//! Turning [`Results`] into the Markdown tables (stdout and
//! `target/echo-bench/*.md`), the target verdicts and the JSON file.

use std::fmt::Write as _;

use crate::measure::{Machine, median};
use serde_json::{Value, json};

use crate::results::{Results, Throughput};
use crate::servers::Kind;

/// Facts about the run itself.
pub struct RunInfo {
    pub machine: Machine,
    pub date: String,
    pub mode: &'static str,
    pub command: String,
    pub pinning: String,
    pub secs: f64,
}

/// One target and whether this run meets it.
pub struct Target {
    pub name: String,
    pub figure: String,
    pub met: Option<bool>,
}

fn row(r: &Results, kind: Kind, conns: usize, size: usize) -> Option<&Throughput> {
    r.throughput
        .iter()
        .find(|t| t.server == kind && t.conns == conns && t.size == size)
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.digits$}"))
}

fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "met",
        Some(false) => "**not met**",
        None => "not measured",
    }
}

/// The Markdown tables of every result, then the targets.
pub fn markdown(r: &Results, info: &RunInfo, targets: &[Target]) -> String {
    let mut s = String::new();
    let m = &info.machine;
    let _ = writeln!(
        s,
        "Run {} ({} mode, {:.0} s): {} CPUs, {}, Linux {}. {}.\n",
        info.date, info.mode, info.secs, m.nproc, m.cpu_model, m.kernel, info.pinning
    );
    throughput_md(&mut s, r);
    latency_md(&mut s, r);
    resources_md(&mut s, r);
    targets_md(&mut s, targets);
    if !r.notes.is_empty() {
        s.push_str("\nNotes:\n\n");
        for n in &r.notes {
            let _ = writeln!(s, "- {n}");
        }
    }
    s
}

fn throughput_md(s: &mut String, r: &Results) {
    s.push_str("### Throughput and server CPU (closed loop, 1 load thread)\n\n");
    s.push_str("| connections | message | server | round trips/s | server CPU-s per M round trips | round trips per server-CPU-s | echod ÷ this (per CPU-s) | echod ÷ this (rt/s) | warning |\n");
    s.push_str("|---:|---:|---|---:|---:|---:|---:|---:|---|\n");
    for t in &r.throughput {
        let echod = row(r, Kind::Echod, t.conns, t.size);
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
            _ => "-".into(),
        };
        let _ = writeln!(
            s,
            "| {} | {} B | {} | {} | {} | {} | {} | {} | {} |",
            t.conns,
            t.size,
            t.server.name(),
            opt(t.rtps(), 0),
            opt(t.cpu_per_million(), 2),
            opt(t.per_cpu_sec(), 0),
            ratio(echod.and_then(Throughput::per_cpu_sec), t.per_cpu_sec()),
            ratio(echod.and_then(Throughput::rtps), t.rtps()),
            t.warning().unwrap_or_default(),
        );
    }
}

fn latency_md(s: &mut String, r: &Results) {
    let _ = writeln!(
        s,
        "\n### Latency (50 connections × 64 B, open loop at {:.0} msgs/s)\n",
        r.latency_rate
    );
    s.push_str("| server | p50 µs | p99 µs | p99.9 µs | achieved msgs/s | warning |\n|---|---:|---:|---:|---:|---|\n");
    for l in &r.latency {
        let _ = writeln!(
            s,
            "| {} | {:.0} | {:.0} | {:.0} | {:.0} | {} |",
            l.server.name(),
            l.p50,
            l.p99,
            l.p999,
            l.achieved,
            l.warning.clone().unwrap_or_default()
        );
    }
}

fn resources_md(s: &mut String, r: &Results) {
    s.push_str("\n### Memory, system calls, start-up\n\n");
    s.push_str("| server | idle RSS KiB | RSS with idle conns KiB | bytes per idle conn | syscalls/msg (all) | epoll_wait/msg | syscalls/msg excl. epoll_wait | exec → first echo, median ms |\n");
    s.push_str("|---|---:|---:|---:|---:|---:|---:|---:|\n");
    for kind in kinds(r) {
        let rss = r.rss.iter().find(|x| x.server == kind);
        let sc = r.syscalls.iter().find(|x| x.server == kind);
        let st = r.startup.iter().find(|x| x.server == kind);
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            kind.name(),
            opt(rss.map(|x| x.idle as f64 / 1024.0), 0),
            rss.map_or("-".into(), |x| format!(
                "{} ({} conns)",
                opt(x.loaded.map(|b| b as f64 / 1024.0), 0),
                x.conns
            )),
            opt(rss.and_then(|x| x.per_conn()), 0),
            opt(sc.map(|x| x.per_msg()), 2),
            opt(sc.map(|x| x.epoll_per_msg()), 2),
            opt(sc.map(|x| x.other_per_msg()), 2),
            opt(st.map(|x| median(&x.samples_ms)), 2),
        );
    }
    if let Some(sc) = r.syscalls.first() {
        let _ = writeln!(
            s,
            "\nSystem calls counted with `{}` over {} echoed messages at 50 connections.",
            sc.tool, sc.msgs
        );
    }
    if !r.callgrind.is_empty() {
        s.push_str("\n| server | Ir at N1 | Ir at N2 | instructions per round trip |\n|---|---:|---:|---:|\n");
        for c in &r.callgrind {
            let _ = writeln!(
                s,
                "| {} | {} (N1 = {}) | {} (N2 = {}) | {:.1} |",
                c.server.name(),
                c.ir1,
                c.n1,
                c.ir2,
                c.n2,
                c.per_rt()
            );
        }
    }
    if let Some(d) = &r.drain {
        let ms = |v: Option<f64>| opt(v, 1);
        s.push_str("\n### Drain at scale (echod, SIGHUP mid-run)\n\n| clients connected | notices | errors | SIGHUP → last notice ms | fan-out ms | last close → exit ms | SIGHUP → exit ms | exit |\n|---:|---:|---:|---:|---:|---:|---:|---|\n");
        let _ = writeln!(
            s,
            "| {} of {} | {} | {} | {} | {} | {} | {} | {} |",
            d.opened,
            d.asked,
            d.notices,
            d.errors,
            ms(d.to_last_notice_ms),
            ms(d.fanout_ms),
            ms(d.close_to_exit_ms),
            ms(d.sighup_to_exit_ms),
            d.exit_status
        );
    }
    if let Some(v) = &r.vs_blocking {
        let _ = writeln!(
            s,
            "\n### Load generators (c-epoll server, 50 × 64 B)\n\n| echo-load rt/s | blocking-client rt/s | ratio | echo-load CPU % of a core |\n|---:|---:|---:|---:|\n| {} | {} | {} | {} |",
            opt(crate::results::mean(v.echo_load.iter().copied()), 0),
            opt(crate::results::mean(v.blocking.iter().copied()), 0),
            opt(load_ratio(r), 2),
            opt(crate::results::mean(v.echo_load_cpu_pct.iter().copied()), 0),
        );
    }
    if let Some(b) = r.binary_size {
        let _ = writeln!(
            s,
            "\nRelease binary `target/release/echod`: {b} bytes ({:.0} KiB).",
            b as f64 / 1024.0
        );
    }
}

/// Servers in the order they appear in the results.
fn kinds(r: &Results) -> Vec<Kind> {
    let mut out: Vec<Kind> = Vec::new();
    let all = r
        .throughput
        .iter()
        .map(|t| t.server)
        .chain(r.rss.iter().map(|x| x.server))
        .chain(r.startup.iter().map(|x| x.server));
    for k in all {
        if !out.contains(&k) {
            out.push(k);
        }
    }
    out
}

fn load_ratio(r: &Results) -> Option<f64> {
    let v = r.vs_blocking.as_ref()?;
    let a = crate::results::mean(v.echo_load.iter().copied())?;
    let b = crate::results::mean(v.blocking.iter().copied())?;
    (b > 0.0).then(|| a / b)
}

fn targets_md(s: &mut String, targets: &[Target]) {
    s.push_str("\n### Targets\n\n| target | this run | verdict |\n|---|---|---|\n");
    for t in targets {
        let _ = writeln!(s, "| {} | {} | {} |", t.name, t.figure, verdict(t.met));
    }
}

/// Every target of the issue, judged against `r`.
pub fn targets(r: &Results) -> Vec<Target> {
    let mut out = Vec::new();
    let per_cpu_ratio = |peer: Kind, conns: usize, size: usize| {
        let e = row(r, Kind::Echod, conns, size)?.per_cpu_sec()?;
        let p = row(r, peer, conns, size)?.per_cpu_sec()?;
        Some(e / p)
    };
    for (peer, conns, size, want) in [
        (Kind::C, 50, 64, 1.0),
        (Kind::C, 500, 64, 1.0),
        (Kind::C, 500, 4096, 1.0),
        (Kind::TokioCt, 500, 64, 1.1),
    ] {
        let ratio = per_cpu_ratio(peer, conns, size);
        out.push(Target {
            name: format!(
                "round trips per server-CPU-s ≥ {want:.1}× {} at {conns} × {size} B",
                peer.name()
            ),
            figure: opt(ratio, 2) + "×",
            met: ratio.map(|x| x >= want),
        });
    }
    let cg = r
        .callgrind
        .iter()
        .find(|c| c.server == Kind::Echod)
        .map(|c| c.per_rt());
    let c_cg = r
        .callgrind
        .iter()
        .find(|c| c.server == Kind::C)
        .map(|c| c.per_rt());
    out.push(Target {
        name: "user-space instructions per round trip ≤ 200 (callgrind)".into(),
        figure: cg.map_or("run with --callgrind".into(), |x| {
            format!("{x:.0} (c-epoll {})", opt(c_cg, 0))
        }),
        met: cg.map(|x| x <= 200.0),
    });
    let sc = r.syscalls.iter().find(|x| x.server == Kind::Echod);
    out.push(Target {
        name: "≤ 2.05 syscalls per echoed message at 50 connections, excluding epoll_wait".into(),
        figure: sc.map_or("-".into(), |x| {
            format!(
                "{:.2} (+ {:.2} epoll_wait)",
                x.other_per_msg(),
                x.epoll_per_msg()
            )
        }),
        met: sc.map(|x| x.other_per_msg() <= 2.05),
    });
    memory_targets(r, &mut out);
    other_targets(r, &mut out);
    out
}

fn memory_targets(r: &Results, out: &mut Vec<Target>) {
    let rss = r.rss.iter().find(|x| x.server == Kind::Echod);
    let per = rss.and_then(|x| x.per_conn());
    out.push(Target {
        name: "RSS ≤ 128 bytes per idle connection at 10,000".into(),
        figure: rss.map_or("-".into(), |x| {
            format!("{} B ({} conns)", opt(per, 0), x.conns)
        }),
        met: per.map(|b| b <= 128.0),
    });
    let idle = rss.map(|x| x.idle as f64 / (1024.0 * 1024.0));
    out.push(Target {
        name: "idle RSS ≤ 1.5 MiB".into(),
        figure: opt(idle, 2) + " MiB",
        met: idle.map(|m| m <= 1.5),
    });
    let bin = r.binary_size.map(|b| b as f64 / (1024.0 * 1024.0));
    out.push(Target {
        name: "release binary ≤ 1 MiB stripped".into(),
        figure: opt(bin, 2) + " MiB",
        met: bin.map(|m| m <= 1.0),
    });
}

fn other_targets(r: &Results, out: &mut Vec<Target>) {
    let start = |k: Kind| {
        r.startup
            .iter()
            .find(|x| x.server == k)
            .map(|x| median(&x.samples_ms))
    };
    let ratio = start(Kind::Echod).zip(start(Kind::C)).map(|(e, c)| e / c);
    out.push(Target {
        name: "exec to first accepted connection ≤ 1.2× c-epoll's".into(),
        figure: format!(
            "{}× ({} ms vs {} ms)",
            opt(ratio, 2),
            opt(start(Kind::Echod), 2),
            opt(start(Kind::C), 2)
        ),
        met: ratio.map(|x| x <= 1.2),
    });
    let d = r.drain.as_ref();
    out.push(Target {
        name: "drain at scale: SIGHUP → last notice, fan-out, last close → exit".into(),
        figure: d.map_or("-".into(), |d| {
            format!(
                "{} ms, {} ms, {} ms ({} of {} clients, {} notices)",
                opt(d.to_last_notice_ms, 1),
                opt(d.fanout_ms, 1),
                opt(d.close_to_exit_ms, 1),
                d.opened,
                d.asked,
                d.notices
            )
        }),
        met: d.map(|d| d.errors == 0 && d.notices == d.opened && d.opened > 0),
    });
    let lr = load_ratio(r);
    out.push(Target {
        name: "echo-load ≥ 1.2× blocking-client (c-epoll, 50 × 64 B)".into(),
        figure: opt(lr, 2) + "×",
        met: lr.map(|x| x >= 1.2),
    });
}

/// The whole run as JSON (`serde_json` renders non-finite numbers as `null`).
pub fn json(r: &Results, info: &RunInfo, targets: &[Target]) -> Value {
    let m = &info.machine;
    let throughput: Vec<Value> = r
        .throughput
        .iter()
        .map(|t| {
            let runs: Vec<Value> = t
                .runs
                .iter()
                .map(|x| {
                    json!({
                        "rtps": x.rtps,
                        "msgs": x.msgs,
                        "server_cpu_secs": x.cpu,
                        "errors": x.errors,
                        "loopback_drops": x.drops,
                    })
                })
                .collect();
            json!({
                "server": t.server.name(),
                "connections": t.conns,
                "size": t.size,
                "rtps": t.rtps(),
                "server_cpu_secs_per_million": t.cpu_per_million(),
                "rt_per_server_cpu_sec": t.per_cpu_sec(),
                "warning": t.warning(),
                "runs": runs,
            })
        })
        .collect();
    let latency: Vec<Value> = r
        .latency
        .iter()
        .map(|l| {
            json!({
                "server": l.server.name(),
                "p50_us": l.p50,
                "p99_us": l.p99,
                "p999_us": l.p999,
                "achieved_msgs_per_sec": l.achieved,
                "warning": l.warning,
            })
        })
        .collect();
    let rss: Vec<Value> = r
        .rss
        .iter()
        .map(|x| {
            json!({
                "server": x.server.name(),
                "idle_bytes": x.idle,
                "loaded_bytes": x.loaded,
                "connections": x.conns,
                "bytes_per_conn": x.per_conn(),
            })
        })
        .collect();
    let syscalls: Vec<Value> = r
        .syscalls
        .iter()
        .map(|x| {
            json!({
                "server": x.server.name(),
                "tool": x.tool,
                "messages": x.msgs,
                "syscalls": x.total,
                "epoll_wait": x.epoll_wait,
                "per_msg": x.per_msg(),
                "per_msg_excl_epoll_wait": x.other_per_msg(),
            })
        })
        .collect();
    let startup: Vec<Value> = r
        .startup
        .iter()
        .map(|x| {
            json!({
                "server": x.server.name(),
                "median_ms": median(&x.samples_ms),
                "samples_ms": x.samples_ms,
            })
        })
        .collect();
    let callgrind: Vec<Value> = r
        .callgrind
        .iter()
        .map(|c| {
            json!({
                "server": c.server.name(),
                "n1": c.n1,
                "n2": c.n2,
                "ir1": c.ir1,
                "ir2": c.ir2,
                "ir_per_round_trip": c.per_rt(),
            })
        })
        .collect();
    let drain = r.drain.as_ref().map(|d| {
        json!({
            "clients_asked": d.asked,
            "clients_connected": d.opened,
            "notices": d.notices,
            "errors": d.errors,
            "sighup_to_last_notice_ms": d.to_last_notice_ms,
            "fanout_ms": d.fanout_ms,
            "last_close_to_exit_ms": d.close_to_exit_ms,
            "sighup_to_exit_ms": d.sighup_to_exit_ms,
            "exit_status": d.exit_status,
        })
    });
    let load_generators = r.vs_blocking.as_ref().map(|v| {
        json!({
            "echo_load_rtps": v.echo_load,
            "blocking_client_rtps": v.blocking,
            "echo_load_cpu_percent": v.echo_load_cpu_pct,
            "ratio": load_ratio(r),
        })
    });
    let targets: Vec<Value> = targets
        .iter()
        .map(|t| json!({"target": t.name, "figure": t.figure, "met": t.met}))
        .collect();
    json!({
        "date": info.date,
        "mode": info.mode,
        "command": info.command,
        "duration_secs": info.secs,
        "pinning": info.pinning,
        "machine": {"nproc": m.nproc, "kernel": m.kernel, "cpu_model": m.cpu_model},
        "throughput": throughput,
        "latency_rate_msgs_per_sec": r.latency_rate,
        "latency": latency,
        "rss": rss,
        "syscalls": syscalls,
        "startup": startup,
        "callgrind": callgrind,
        "drain": drain,
        "load_generators": load_generators,
        "binary_bytes": r.binary_size,
        "targets": targets,
        "notes": r.notes,
    })
}
