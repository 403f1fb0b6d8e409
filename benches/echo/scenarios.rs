//! The closed-loop throughput and open-loop latency comparisons: every
//! server in every configuration, in rounds whose order alternates (forward,
//! then backward) so that drift over the run cancels out of the ratios.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::thread;
use std::time::Duration;

use echo_load::{LoadConfig, Payload, Report, Stop};

use crate::measure::{CpuSampler, Drops};
use crate::results::{LatencyRow, Run, Throughput, warning};
use crate::servers::{self, Kind, Launch, Server};

/// Connections and message size of each throughput configuration.
pub const CONFIGS: [(usize, usize); 5] = [(1, 64), (50, 64), (500, 64), (5000, 64), (500, 4096)];

/// What every scenario needs: the mode, the CPUs and the servers.
pub struct Ctx {
    pub quick: bool,
    pub server_cpu: Option<usize>,
    pub load_cpu: Option<usize>,
    pub servers: Vec<Server>,
    pub root: PathBuf,
}

impl Ctx {
    /// How servers are started: pinned to the server CPU.
    pub fn launch(&self) -> Launch {
        Launch::pinned(self.server_cpu)
    }

    /// A one-thread echo-load configuration pinned to the load CPU.
    pub fn load(
        &self,
        addr: SocketAddr,
        connections: usize,
        size: usize,
        stop: Stop,
    ) -> LoadConfig {
        LoadConfig {
            addr,
            connections,
            threads: 1,
            stop,
            payload: Payload::Size(size),
            pipeline: 1,
            rate: None,
            connect_timeout: Duration::from_secs(10),
            warmup: Duration::ZERO,
            progress: false,
            pin_cpus: self.load_cpu.into_iter().collect(),
            ..LoadConfig::default()
        }
    }

    /// Measured seconds and warmup of one throughput run.
    fn run_times(&self) -> (Duration, Duration) {
        if self.quick {
            (Duration::from_millis(400), Duration::from_millis(100))
        } else {
            (Duration::from_secs(2), Duration::from_millis(500))
        }
    }

    /// Indices into `servers` for round `round`: forward, then backward.
    pub fn order(&self, round: usize) -> Vec<usize> {
        let mut idx: Vec<usize> = (0..self.servers.len()).collect();
        if round % 2 == 1 {
            idx.reverse();
        }
        idx
    }

    pub fn rounds(&self) -> usize {
        2
    }
}

/// Every configuration of [`CONFIGS`] on every server.
pub fn throughput(ctx: &Ctx) -> Vec<Throughput> {
    let mut all = Vec::new();
    for (conns, size) in CONFIGS {
        println!("\n-- throughput: {conns} connections x {size} B, closed loop");
        let mut rows: Vec<Throughput> = ctx
            .servers
            .iter()
            .map(|s| Throughput {
                server: s.kind,
                conns,
                size,
                runs: Vec::new(),
            })
            .collect();
        for round in 0..ctx.rounds() {
            for i in ctx.order(round) {
                match one_run(ctx, &ctx.servers[i], conns, size) {
                    Ok(run) => {
                        print_run(ctx.servers[i].kind, round, &run);
                        rows[i].runs.push(run);
                    }
                    Err(e) => println!(
                        "  {:<9} round {}: FAILED: {e}",
                        ctx.servers[i].kind.name(),
                        round + 1
                    ),
                }
            }
        }
        print_ratios(&rows);
        all.extend(rows);
    }
    all
}

fn print_run(kind: Kind, round: usize, run: &Run) {
    let per_m = run.cpu.map(|c| c / run.msgs.max(1) as f64 * 1e6);
    println!(
        "  {:<9} round {}: {:>9.0} rt/s  server cpu {:>6} s  {:>7} cpu-s/M rt{}",
        kind.name(),
        round + 1,
        run.rtps,
        run.cpu.map_or("-".into(), |c| format!("{c:.2}")),
        per_m.map_or("-".into(), |c| format!("{c:.2}")),
        warning(run.errors, run.drops).map_or(String::new(), |w| format!("  WARNING {w}")),
    );
}

/// `echod/peer` ratios for one configuration.
fn print_ratios(rows: &[Throughput]) {
    let Some(echod) = rows.iter().find(|r| r.server == Kind::Echod) else {
        return;
    };
    for peer in rows.iter().filter(|r| r.server != Kind::Echod) {
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
            _ => "-".into(),
        };
        println!(
            "  echod/{:<9} rt/s {:>6}   rt per server-cpu-s {:>6}",
            peer.server.name(),
            ratio(echod.rtps(), peer.rtps()),
            ratio(echod.per_cpu_sec(), peer.per_cpu_sec()),
        );
    }
}

/// Starts `server`, drives it closed-loop, and reads its CPU over the
/// measured window.
fn one_run(ctx: &Ctx, server: &Server, conns: usize, size: usize) -> Result<Run, String> {
    let running = servers::start(server, &ctx.launch())?;
    let (secs, warmup) = ctx.run_times();
    let mut config = ctx.load(running.addr, conns, size, Stop::Duration(secs));
    config.warmup = warmup;
    let sampler = CpuSampler::start(running.pid);
    let drops = Drops::start();
    let report = echo_load::run(&config).map_err(|e| format!("echo-load: {e}"))?;
    let drops = drops.since();
    let from = report.started + config.warmup;
    let to = from + report.elapsed;
    // Let the sampler take one more sample after the window.
    thread::sleep(Duration::from_millis(15));
    let cpu = sampler.window(from, to);
    Ok(Run {
        rtps: report.msgs_per_sec,
        msgs: report.messages,
        cpu,
        errors: errors(&report),
        drops,
    })
}

/// Errors and failed connections of a report.
pub fn errors(report: &Report) -> u64 {
    report.errors.total() + report.connections_failed
}

/// Open-loop latency at 50 connections; returns the rows and the rate.
pub fn latency(ctx: &Ctx) -> (Vec<LatencyRow>, f64) {
    let rate = 20_000.0;
    let (secs, warmup) = if ctx.quick {
        (Duration::from_secs(1), Duration::from_millis(200))
    } else {
        (Duration::from_secs(4), Duration::from_millis(500))
    };
    // Percentiles are medians over the rounds: one disturbed run must not
    // decide the figure.
    let rounds = if ctx.quick { 1 } else { 3 };
    println!(
        "\n-- latency: 50 connections x 64 B, open loop at {rate:.0} msgs/s, {secs:?} per run"
    );
    let mut samples: Vec<Vec<Report>> = vec![Vec::new(); ctx.servers.len()];
    let mut drops = vec![0; ctx.servers.len()];
    for round in 0..rounds {
        for i in ctx.order(round) {
            let server = &ctx.servers[i];
            let watch = Drops::start();
            match latency_run(ctx, server, rate, secs, warmup) {
                Ok(r) => {
                    println!(
                        "  {:<9} round {}: p50 {:>5} us  p99 {:>5} us  p99.9 {:>5} us  ({:.0} msgs/s)",
                        server.kind.name(),
                        round + 1,
                        r.latency.p50,
                        r.latency.p99,
                        r.latency.p999,
                        r.msgs_per_sec
                    );
                    samples[i].push(r);
                }
                Err(e) => println!(
                    "  {:<9} round {}: FAILED: {e}",
                    server.kind.name(),
                    round + 1
                ),
            }
            drops[i] += watch.since();
        }
    }
    let rows = ctx
        .servers
        .iter()
        .zip(samples.iter().zip(drops))
        .filter(|(_, (s, _))| !s.is_empty())
        .map(|(server, (s, d))| LatencyRow {
            server: server.kind,
            p50: median_of(s, |r| r.latency.p50 as f64),
            p99: median_of(s, |r| r.latency.p99 as f64),
            p999: median_of(s, |r| r.latency.p999 as f64),
            achieved: median_of(s, |r| r.msgs_per_sec),
            warning: warning(s.iter().map(errors).sum(), d),
        })
        .collect();
    (rows, rate)
}

fn median_of(reports: &[Report], f: fn(&Report) -> f64) -> f64 {
    crate::measure::median(&reports.iter().map(f).collect::<Vec<_>>())
}

fn latency_run(
    ctx: &Ctx,
    server: &Server,
    rate: f64,
    secs: Duration,
    warmup: Duration,
) -> Result<Report, String> {
    let running = servers::start(server, &ctx.launch())?;
    let mut config = ctx.load(running.addr, 50, 64, Stop::Duration(secs));
    config.rate = Some(rate);
    config.warmup = warmup;
    echo_load::run(&config).map_err(|e| format!("echo-load: {e}"))
}
