//! The SVG chart, written by hand: round trips per server-CPU-second and
//! raw round trips per second against connections (one line per server),
//! and a bar group of latency percentiles.

use std::fmt::Write as _;

use crate::results::{LatencyRow, Results};
use crate::scenarios::CONFIGS;
use crate::servers::Kind;

const W: f64 = 1000.0;
const H: f64 = 760.0;

/// A plotting area on the canvas.
struct Area {
    x: f64,
    y: f64,
    w: f64,
    h: f64,
}

/// The whole chart as an SVG document.
pub fn svg(r: &Results, title: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="24" font-size="16" text-anchor="middle">{}</text>"#,
        W / 2.0,
        esc(title)
    );
    let kinds = kinds(r);
    let left = Area {
        x: 80.0,
        y: 60.0,
        w: 380.0,
        h: 260.0,
    };
    let right = Area {
        x: 580.0,
        y: 60.0,
        w: 380.0,
        h: 260.0,
    };
    lines(
        &mut s,
        r,
        &kinds,
        &left,
        "Round trips per server-CPU-second",
        |t| t.per_cpu_sec(),
    );
    lines(&mut s, r, &kinds, &right, "Round trips per second", |t| {
        t.rtps()
    });
    let bottom = Area {
        x: 80.0,
        y: 450.0,
        w: 600.0,
        h: 240.0,
    };
    latency_bars(&mut s, &r.latency, &bottom, r.latency_rate);
    legend(&mut s, &kinds, 740.0, 470.0);
    s.push_str("</svg>\n");
    s
}

fn kinds(r: &Results) -> Vec<Kind> {
    let mut out = Vec::new();
    for t in &r.throughput {
        if !out.contains(&t.server) {
            out.push(t.server);
        }
    }
    out
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A round upper bound for an axis, and its tick step.
fn nice_max(max: f64) -> (f64, f64) {
    if max <= 0.0 || !max.is_finite() {
        return (1.0, 0.25);
    }
    let mag = 10f64.powf(max.log10().floor());
    let step = [0.2, 0.25, 0.5, 1.0, 2.0, 2.5, 5.0]
        .iter()
        .map(|m| m * mag)
        .find(|st| max / st <= 5.0)
        .unwrap_or(mag * 2.0);
    ((max / step).ceil() * step, step)
}

/// `123k`, `1.2M`.
fn short(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.0}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

/// Axes with a y grid; returns the y scale function's maximum.
fn axes(s: &mut String, a: &Area, title: &str, ymax: f64, step: f64, fmt: fn(f64) -> String) {
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" font-size="14" text-anchor="middle">{}</text>"#,
        a.x + a.w / 2.0,
        a.y - 12.0,
        esc(title)
    );
    let mut v = 0.0;
    while v <= ymax + step * 0.01 {
        let y = a.y + a.h - v / ymax * a.h;
        let _ = writeln!(
            s,
            r##"<line x1="{}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#ddd"/>"##,
            a.x,
            a.x + a.w
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{:.1}" text-anchor="end">{}</text>"#,
            a.x - 6.0,
            y + 4.0,
            fmt(v)
        );
        v += step;
    }
    let _ = writeln!(
        s,
        r#"<path d="M{} {} V{} H{}" fill="none" stroke="black"/>"#,
        a.x,
        a.y,
        a.y + a.h,
        a.x + a.w
    );
}

/// One panel: a line per server over the 64 B configurations, and the
/// 500 × 4 KiB point on its own at the right.
fn lines(
    s: &mut String,
    r: &Results,
    kinds: &[Kind],
    a: &Area,
    title: &str,
    value: fn(&crate::results::Throughput) -> Option<f64>,
) {
    let max = r.throughput.iter().filter_map(value).fold(0.0, f64::max);
    let (ymax, step) = nice_max(max * 1.05);
    axes(s, a, title, ymax, step, short);
    let n = CONFIGS.len() as f64;
    let xpos = |i: usize| a.x + a.w * (i as f64 + 0.5) / n;
    for (i, (conns, size)) in CONFIGS.iter().enumerate() {
        let label = if *size == 64 {
            conns.to_string()
        } else {
            format!("{conns} × {} KiB", size / 1024)
        };
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{label}</text>"#,
            xpos(i),
            a.y + a.h + 16.0
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">connections (64 B messages unless noted)</text>"#,
        a.x + a.w / 2.0,
        a.y + a.h + 34.0
    );
    for kind in kinds {
        let points: Vec<(usize, f64)> = CONFIGS
            .iter()
            .enumerate()
            .filter_map(|(i, (c, sz))| {
                let t = r
                    .throughput
                    .iter()
                    .find(|t| t.server == *kind && t.conns == *c && t.size == *sz)?;
                Some((i, a.y + a.h - value(t)? / ymax * a.h))
            })
            .collect();
        let path: Vec<String> = points
            .iter()
            .filter(|(i, _)| CONFIGS[*i].1 == 64)
            .map(|(i, y)| format!("{:.1},{y:.1}", xpos(*i)))
            .collect();
        let width = if *kind == Kind::Echod { 3 } else { 2 };
        let _ = writeln!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="{width}"/>"#,
            path.join(" "),
            kind.colour()
        );
        for (i, y) in points {
            let _ = writeln!(
                s,
                r#"<circle cx="{:.1}" cy="{y:.1}" r="4" fill="{}"/>"#,
                xpos(i),
                kind.colour()
            );
        }
    }
}

/// p50, p99 and p99.9 bars for each server, on a log scale.
fn latency_bars(s: &mut String, rows: &[LatencyRow], a: &Area, rate: f64) {
    let title = format!("Latency at 50 connections, open loop {rate:.0} msgs/s (µs, log scale)");
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" font-size="14" text-anchor="middle">{}</text>"#,
        a.x + a.w / 2.0,
        a.y - 12.0,
        esc(&title)
    );
    let max = rows.iter().map(|l| l.p999).fold(10.0, f64::max);
    let top = 10f64.powf(max.log10().ceil());
    let ypos = |v: f64| a.y + a.h - (v.max(1.0).log10() / top.log10()) * a.h;
    let mut v = 1.0;
    while v <= top {
        let y = ypos(v);
        let _ = writeln!(
            s,
            r##"<line x1="{}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#ddd"/>"##,
            a.x,
            a.x + a.w
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{:.1}" text-anchor="end">{v:.0}</text>"#,
            a.x - 6.0,
            y + 4.0
        );
        v *= 10.0;
    }
    let _ = writeln!(
        s,
        r#"<path d="M{} {} V{} H{}" fill="none" stroke="black"/>"#,
        a.x,
        a.y,
        a.y + a.h,
        a.x + a.w
    );
    let group = a.w / rows.len().max(1) as f64;
    let bar = group / 4.5;
    for (g, l) in rows.iter().enumerate() {
        let gx = a.x + g as f64 * group + group / 2.0;
        for (j, (v, opacity)) in [(l.p50, 0.45), (l.p99, 0.75), (l.p999, 1.0)]
            .iter()
            .enumerate()
        {
            let x = gx + (j as f64 - 1.5) * bar;
            let y = ypos(*v);
            let _ = writeln!(
                s,
                r#"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="{:.1}" fill="{}" fill-opacity="{opacity}"/>"#,
                bar - 2.0,
                a.y + a.h - y,
                l.server.colour()
            );
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{:.1}" font-size="10" text-anchor="middle">{v:.0}</text>"#,
                x + bar / 2.0 - 1.0,
                y - 3.0
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{gx:.1}" y="{}" text-anchor="middle">{}</text>"#,
            a.y + a.h + 16.0,
            l.server.name()
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">bars per server: p50 (light), p99, p99.9 (dark)</text>"#,
        a.x + a.w / 2.0,
        a.y + a.h + 34.0
    );
}

fn legend(s: &mut String, kinds: &[Kind], x: f64, y: f64) {
    let _ = writeln!(s, r#"<text x="{x}" y="{y}" font-size="14">Servers</text>"#);
    for (i, k) in kinds.iter().enumerate() {
        let yy = y + 22.0 + i as f64 * 22.0;
        let _ = writeln!(
            s,
            r#"<line x1="{x}" y1="{:.1}" x2="{}" y2="{:.1}" stroke="{}" stroke-width="3"/>"#,
            yy - 4.0,
            x + 24.0,
            yy - 4.0,
            k.colour()
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{yy:.1}">{}</text>"#,
            x + 32.0,
            k.name()
        );
    }
}
