//! echod under load from the echo-load library: the two packages together.
//!
//! echo-load's own tests (`crates/echo-load/tests`) run its binary against
//! scripted servers; here the real echod binary is driven by the echo-load
//! library, in this process, through the `tests/common` harness.

mod common;

use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::{Echod, LIMIT};
use echo_load::{LoadConfig, Report, Stop};

#[test]
fn sighup_to_echod_mid_run_is_a_clean_drain_on_every_connection() {
    let mut echod = Echod::spawn(&["--drain-timeout", "2"]);
    let config = LoadConfig {
        addr: echod.addr(),
        connections: 20,
        pipeline: 2,
        // Far longer than the test: only the drain ends this run.
        stop: Stop::Duration(Duration::from_secs(120)),
        ..LoadConfig::default()
    };
    let (samples_tx, samples) = mpsc::channel();
    let (done_tx, done) = mpsc::channel();
    thread::spawn(move || {
        let report = echo_load::run_with_progress(&config, |sample| {
            // The receiver may have stopped listening; the run goes on.
            let _ = samples_tx.send(*sample);
        });
        let _ = done_tx.send(report);
    });
    // A sample with verified messages: every connection is open and traffic
    // flows, so the drain lands mid-run.
    let deadline = Instant::now() + LIMIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match samples.recv_timeout(left) {
            Ok(sample) if sample.messages > 0 => break,
            Ok(_) => {}
            Err(err) => echod.fail(&format!("echo-load showed no traffic: {err}")),
        }
    }
    echod.signal(libc::SIGHUP);
    let report: Report = match done.recv_timeout(LIMIT) {
        Ok(Ok(report)) => report,
        Ok(Err(err)) => echod.fail(&format!("echo-load could not run: {err}")),
        Err(err) => echod.fail(&format!("echo-load did not finish after SIGHUP: {err}")),
    };
    assert!(report.is_clean(), "not clean:\n{report}");
    assert_eq!(report.drain.notices, 20, "{report}");
    assert_eq!(report.connections_opened, 20, "{report}");
    assert_eq!(report.errors.total(), 0, "{report}");
    assert!(report.messages > 0, "{report}");
    let status = echod.wait_exit(LIMIT);
    assert_eq!(status.code(), Some(0), "echod stderr:\n{}", echod.stderr());
}

/// echod's UDP echo measured by echo-load's UDP mode, the pair the README
/// recommends for a path (issue 12): every datagram answered exactly, no
/// loss, duplicate or mismatch, over IPv4 and IPv6 and up to the largest
/// IPv4 datagram.
#[test]
fn echo_load_udp_measures_echod_udp_without_loss_or_mismatch() {
    let mut echod = Echod::spawn(&["--udp", "127.0.0.1:0", "--udp", "[::1]:0"]);
    // The largest datagrams go slowly: a reply the kernel will not take at
    // once is dropped by design (docs/protocol.md "UDP echo (RFC 862)"),
    // and a few 64 KiB replies fill a socket's send buffer.
    for (addr, size, rate) in [
        (echod.udp_addrs()[0], 64, 500.0),
        (echod.udp_addrs()[0], echo_load::MAX_DATAGRAM_V4, 50.0),
        (echod.udp_addrs()[1], 1400, 500.0),
    ] {
        let config = echo_load::UdpConfig {
            addr,
            flows: 2,
            rate,
            stop: Stop::Messages(300),
            size,
            // Below echod's default --udp-max-rate: nothing is held back.
            ..echo_load::UdpConfig::default()
        };
        let report = echo_load::run_udp(&config).expect("a UDP run");
        assert!(
            report.is_clean(),
            "{addr} {size} B: {}\n{}",
            report.to_json(),
            echod.stderr()
        );
        assert_eq!(
            report.received,
            300,
            "{addr} {size} B: {}",
            report.to_json()
        );
    }
    echod.signal(libc::SIGTERM);
    assert_eq!(echod.wait_exit(LIMIT).code(), Some(0), "{}", echod.stderr());
    let last = echod.wait_for_line("drain finished", LIMIT);
    assert!(last.contains("udp_echoed=900"), "{last}");
}
