//! The health listener and the lame duck on the real binary
//! (docs/protocol.md "Lame duck and health"): `/livez`, `/readyz` through
//! the lame duck and the drain, `/metrics` read by a real Prometheus parser
//! with the values the test produced, the request limits (404, 405, 400, 8
//! KiB, 5 s, 16 connections), health connections kept apart from clients,
//! and the listener's life: up through the drain, gone at exit.
//!
//! `/metrics` is checked by `tests/prometheus_text.py` (the parser of the
//! Python package `prometheus_client`); where that package cannot be
//! imported, that check is skipped with a printed reason and the values are
//! still checked here.

mod common;

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::sync::mpsc::{RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use common::*;

/// docs/protocol.md "Lame duck and health": a request not complete 5 s after
/// its connection was accepted is closed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Health connections open at once.
const HEALTH_SLOTS: usize = 16;

/// echod with a health listener on a free port, and that listener's address.
#[track_caller]
fn spawn_with_health(args: &[&str]) -> (Echod, SocketAddr) {
    let mut full = vec!["--health", "127.0.0.1:0"];
    full.extend(args);
    let mut echod = Echod::spawn(&full);
    let health = echod.health_addr();
    (echod, health)
}

/// Every sample of a `/metrics` body, by series (`name{labels}`), as the
/// text says it; the real parser's reading is checked separately.
fn samples(body: &str) -> HashMap<String, f64> {
    body.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// Why the real parser cannot run here; `None` when it can.
fn prometheus_client_missing() -> Option<String> {
    match Command::new("python3")
        .args(["-c", "import prometheus_client"])
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("import failed")
                .to_owned(),
        ),
        Err(err) => Some(format!("python3: {err}")),
    }
}

/// Checks `body` with `tests/prometheus_text.py` (prometheus_client's
/// parser: every promised family with its type and labels, and each
/// `SERIES=VALUE` of `expect`); skipped, saying why, without the package.
#[track_caller]
fn check_with_prometheus_client(body: &str, expect: &[(&str, u64)]) {
    if let Some(why) = prometheus_client_missing() {
        eprintln!(
            "skipped: the prometheus_client check of /metrics ({why}); \
             install it with: python3 -m pip install prometheus_client==0.26.0"
        );
        return;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/prometheus_text.py");
    let mut cmd = Command::new("python3");
    cmd.arg(script);
    for (series, value) in expect {
        cmd.arg("--expect").arg(format!("{series}={value}"));
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run tests/prometheus_text.py");
    child
        .stdin
        .take()
        .expect("stdin piped")
        .write_all(body.as_bytes())
        .expect("feed the metrics text");
    let out = child.wait_with_output().expect("prometheus_text.py output");
    assert!(
        out.status.success(),
        "prometheus_client rejects /metrics:\n{}{}\n--- body ---\n{body}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Checks every `SERIES=VALUE` of `expect` against the text itself.
#[track_caller]
fn assert_samples(body: &str, expect: &[(&str, u64)]) {
    let samples = samples(body);
    for (series, value) in expect {
        assert_eq!(
            samples.get(*series).copied(),
            Some(*value as f64),
            "{series} in\n{body}"
        );
    }
}

/// Waits until echod holds `count` descriptors: the way to know, from
/// outside, that it accepted connections it has not answered yet.
#[track_caller]
fn wait_for_fds(echod: &Echod, count: usize, what: &str) {
    let pid = echod.pid();
    wait_until(LIMIT, what, || open_fds(pid) == count);
}

#[test]
fn probes_answer_200_while_serving_and_metrics_match_what_clients_did() {
    let (mut echod, health) = spawn_with_health(&[]);

    let live = http_get(health, "/livez");
    assert_eq!((live.status, live.body.as_str()), (200, "ok\n"));
    let ready = http_get(health, "/readyz");
    assert_eq!((ready.status, ready.body.as_str()), (200, "ready\n"));

    // Three clients echo 100, 200 and 300 bytes; the third leaves.
    let mut clients: Vec<TcpStream> = (0..3).map(|_| echod.connect()).collect();
    for (n, client) in clients.iter_mut().enumerate() {
        let payload = payload_without_notice(100 * (n + 1), n as u64);
        assert_eq!(round_trip(client, &payload), payload);
    }
    let mut leaving = clients.pop().expect("third client");
    leaving
        .shutdown(std::net::Shutdown::Write)
        .expect("shut the write side");
    // End-of-stream from echod: it counted the close before closing.
    assert_eq!(read_to_eof(&mut leaving), b"");
    // A health connection held open while the scrape runs: not a client.
    let _held = connect(health);

    let scrape = http_get(health, "/metrics");
    assert_eq!(scrape.status, 200, "{scrape:?}");
    assert_eq!(
        scrape.header("Content-Type"),
        Some("text/plain; version=0.0.4"),
        "{}",
        scrape.head
    );
    let expect = [
        ("echod_state", 0),
        ("echod_connections", 2),
        ("echod_connections_accepted_total", 3),
        ("echod_bytes_echoed_total", 600),
        ("echod_pending_bytes", 0),
        ("echod_connections_closed_total{reason=\"peer\"}", 1),
        ("echod_connections_closed_total{reason=\"error\"}", 0),
        ("echod_connections_closed_total{reason=\"idle\"}", 0),
        ("echod_connections_closed_total{reason=\"per_ip\"}", 0),
        ("echod_connections_closed_total{reason=\"deadline\"}", 0),
        ("echod_connections_closed_total{reason=\"forced\"}", 0),
        ("echod_log_lines_dropped_total", 0),
    ];
    assert_samples(&scrape.body, &expect);
    check_with_prometheus_client(&scrape.body, &expect);
    assert!(
        !scrape.body.contains("echod_udp_"),
        "no UDP metric without --udp:\n{}",
        scrape.body
    );

    // SIGUSR1 says the same closes.
    let stats = echod.stats();
    assert_eq!(field(&stats, "closed_by_peer"), 1, "{stats}");
    assert_eq!(field(&stats, "closed_on_error"), 0, "{stats}");
    assert_eq!(field(&stats, "idle_closed"), 0, "{stats}");
    assert_eq!(field(&stats, "rejected_per_ip"), 0, "{stats}");
    assert!(stats.contains("state=running"), "{stats}");
}

#[test]
fn during_the_lame_duck_readyz_is_503_while_new_clients_are_echoed_then_the_drain_sends_the_notice()
{
    let (mut echod, health) = spawn_with_health(&["--drain-delay", "2", "--drain-timeout", "30"]);
    let mut old = echod.connect();
    assert_eq!(round_trip(&mut old, b"before"), b"before");
    assert_eq!(http_get(health, "/readyz").status, 200);

    echod.signal(libc::SIGTERM);
    echod.wait_for_line("lame duck started: reason=SIGTERM delay=2s", LIMIT);
    // docs/protocol.md "Lame duck and health": not ready, still serving.
    let ready = http_get(health, "/readyz");
    assert_eq!(
        (ready.status, ready.body.as_str()),
        (503, "not ready: lame duck\n"),
        "{}",
        echod.stderr()
    );
    assert_eq!(http_get(health, "/livez").status, 200);
    let mut new = echod.connect();
    assert_eq!(
        round_trip(&mut new, b"during the lame duck"),
        b"during the lame duck"
    );
    assert_eq!(round_trip(&mut old, b"still served"), b"still served");
    let scrape = http_get(health, "/metrics");
    assert_samples(
        &scrape.body,
        &[("echod_state", 1), ("echod_connections", 2)],
    );
    let stats = echod.stats();
    assert!(stats.contains("state=lame_duck"), "{stats}");
    assert!(
        !echod.seen.iter().any(|l| l.contains("drain started")),
        "the lame duck ended before its checks were done (a very loaded machine?):\n{}",
        echod.stderr()
    );

    // The delay runs out on its own: the drain proper.
    echod.wait_for_line("drain started: reason=SIGTERM connections=2", LIMIT);
    assert_eq!(read_to_eof(&mut new), b"SHUTDOWN");
    assert_eq!(read_to_eof(&mut old), b"SHUTDOWN");
    // Both clients are still connected, so the drain goes on: the health
    // listener answers through it, and the echo listener is closed.
    let ready = http_get(health, "/readyz");
    assert_eq!(
        (ready.status, ready.body.as_str()),
        (503, "not ready: draining\n")
    );
    assert_eq!(http_get(health, "/livez").status, 200);
    let scrape = http_get(health, "/metrics");
    assert_samples(
        &scrape.body,
        &[
            ("echod_state", 2),
            ("echod_connections", 2),
            ("echod_connections_accepted_total", 2),
        ],
    );
    assert!(is_refused(echod.addr()), "the echo listener is closed");

    drop((old, new));
    let status = echod.wait_exit(LIMIT);
    assert_eq!(status.code(), Some(0), "{}", echod.stderr());
    echod.wait_for_line("drain finished: reason=SIGTERM end=emptied left=2", LIMIT);
    assert!(is_refused(health), "the health listener must close at exit");
}

/// A datagram socket standing in for systemd's `NOTIFY_SOCKET`, removed on drop.
struct NotifySocket {
    socket: UnixDatagram,
    path: std::path::PathBuf,
}

impl NotifySocket {
    fn bind() -> NotifySocket {
        let path = std::env::temp_dir().join(format!("echod-health-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
        socket.set_read_timeout(Some(LIMIT)).expect("read timeout");
        NotifySocket { socket, path }
    }

    #[track_caller]
    fn recv(&self, echod: &Echod, what: &str) -> String {
        let mut buf = [0; 4096];
        match self.socket.recv(&mut buf) {
            Ok(n) => String::from_utf8_lossy(&buf[..n]).into_owned(),
            Err(e) => echod.fail(&format!("sent no datagram ({what}): {e}")),
        }
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[test]
fn a_second_signal_during_the_lame_duck_starts_the_drain_at_once() {
    let notify = NotifySocket::bind();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_echod"));
    cmd.args(["--listen", "127.0.0.1:0", "--health", "127.0.0.1:0"])
        .args(["--drain-delay", "60", "--drain-timeout", "30"])
        .env("NOTIFY_SOCKET", &notify.path);
    let mut echod = Echod::spawn_command(cmd, 1);
    let health = echod.health_addr();
    assert!(notify.recv(&echod, "READY=1").starts_with("READY=1\n"));
    let mut client = echod.connect();
    assert_eq!(round_trip(&mut client, b"hello"), b"hello");

    echod.signal(libc::SIGTERM);
    echod.wait_for_line("lame duck started", LIMIT);
    // A serving status for the connect may come first, if a second passed.
    let mut stopping = notify.recv(&echod, "STOPPING=1");
    if stopping.starts_with("STATUS=serving ") {
        stopping = notify.recv(&echod, "STOPPING=1");
    }
    assert_eq!(stopping, "STOPPING=1\n");
    assert_eq!(
        notify.recv(&echod, "the lame duck's status"),
        "STATUS=stopping in 60s\n"
    );
    assert_eq!(http_get(health, "/readyz").status, 503);
    assert_eq!(round_trip(&mut client, b"still here"), b"still here");

    // docs/protocol.md "Lame duck and health": a second signal drains now,
    // not 60 s from the first.
    let second = Instant::now();
    echod.signal(libc::SIGTERM);
    echod.wait_for_line("drain started: reason=SIGTERM connections=1", LIMIT);
    assert_eq!(read_to_eof(&mut client), b"SHUTDOWN");
    let status = notify.recv(&echod, "the draining status");
    assert!(
        status.starts_with("STATUS=draining, 1 left, "),
        "{status:?}"
    );
    drop(client);
    assert_eq!(echod.wait_exit(LIMIT).code(), Some(0), "{}", echod.stderr());
    assert!(
        second.elapsed() < Duration::from_secs(60),
        "the drain waited for the delay"
    );
    echod.wait_for_line("drain finished: reason=SIGTERM end=emptied", LIMIT);
}

#[test]
fn unknown_paths_other_methods_and_malformed_requests_get_404_405_400_and_an_oversized_one_is_closed()
 {
    let (echod, health) = spawn_with_health(&[]);
    let ask = |request: &[u8]| {
        let raw = http_raw(health, request).unwrap_or_else(|e| panic!("{request:?}: {e}"));
        HttpAnswer::parse(&raw)
    };

    let answer = ask(b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!((answer.status, answer.body.as_str()), (404, "not found\n"));
    let answer = ask(b"POST /livez HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(answer.status, 405);
    assert_eq!(answer.header("Allow"), Some("GET, HEAD"), "{}", answer.head);
    // HTTP/1.1 without Host, and something that is not HTTP at all.
    assert_eq!(ask(b"GET /livez HTTP/1.1\r\n\r\n").status, 400);
    assert_eq!(ask(b"\x16\x03\x01\x02\x00 not http\r\n\r\n").status, 400);
    // HEAD: the headers of GET, no body.
    let answer = ask(b"HEAD /readyz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("Content-Length"), Some("6"));
    assert_eq!(answer.body, "");
    assert_eq!(answer.header("Connection"), Some("close"));

    // Over 8 KiB of head: closed without an answer (a reset is allowed, as
    // echod closes with the rest of the request unread).
    let mut big = b"GET /livez HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    big.resize(9 * 1024, b'a');
    let mut stream = connect(health);
    stream.write_all(&big).expect("send the oversized request");
    let mut answer = Vec::new();
    match stream.read_to_end(&mut answer) {
        Ok(_) => assert!(
            answer.is_empty(),
            "answered: {:?}",
            String::from_utf8_lossy(&answer)
        ),
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}"),
    }
    assert!(answer.is_empty());

    // None of it hurt the listener.
    assert_eq!(http_get(health, "/livez").status, 200);
    drop(echod);
}

#[test]
fn a_health_request_not_complete_5_s_after_accept_is_closed_while_other_probes_are_answered() {
    let (mut echod, health) = spawn_with_health(&[]);
    let before_connect = Instant::now();
    let mut slow = connect(health);
    slow.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n")
        .expect("send half a request");
    // The slow one holds a slot, not the listener.
    assert_eq!(http_get(health, "/livez").status, 200);
    let mut rest = Vec::new();
    let read = slow.read_to_end(&mut rest);
    let elapsed = before_connect.elapsed();
    // Closed with no answer, and with FIN: the half request was read off first.
    assert!(matches!(read, Ok(0)), "{read:?} {rest:?}");
    assert!(
        elapsed >= REQUEST_TIMEOUT,
        "closed after {elapsed:?}, before its 5 s"
    );
    assert!(elapsed < LIMIT, "closed after {elapsed:?}");
    assert_eq!(http_get(health, "/readyz").status, 200);
    echod.signal(libc::SIGTERM);
    assert_eq!(echod.wait_exit(LIMIT).code(), Some(0));
}

#[test]
fn the_seventeenth_health_connection_waits_until_one_of_sixteen_closes() {
    let (echod, health) = spawn_with_health(&[]);
    let base = open_fds(echod.pid());
    let mut held: Vec<TcpStream> = (0..HEALTH_SLOTS).map(|_| connect(health)).collect();
    wait_for_fds(
        &echod,
        base + HEALTH_SLOTS,
        "16 health connections accepted",
    );

    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let _ = tx.send(http_raw(health, b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n"));
    });
    // Nothing reports "not accepted": a short window in which the 17th must
    // stay unanswered while the 16 are held (their 5 s are far off).
    match rx.recv_timeout(Duration::from_millis(300)) {
        Err(RecvTimeoutError::Timeout) => {}
        other => panic!("the 17th was answered while 16 were open: {other:?}"),
    }
    drop(held.remove(0));
    let answer = match rx.recv_timeout(LIMIT) {
        Ok(Ok(raw)) => HttpAnswer::parse(&raw),
        other => echod.fail(&format!("the 17th got no answer: {other:?}")),
    };
    assert_eq!((answer.status, answer.body.as_str()), (200, "ok\n"));
    drop(held);
}

#[test]
fn health_connections_count_neither_against_max_connections_nor_toward_the_drains_end() {
    let (mut echod, health) =
        spawn_with_health(&["--max-connections", "1", "--drain-timeout", "60"]);
    let base = open_fds(echod.pid());
    let held: Vec<TcpStream> = (0..3).map(|_| connect(health)).collect();
    wait_for_fds(&echod, base + 3, "3 health connections accepted");
    let accepted = Instant::now();

    // At --max-connections 1, with three health connections open, a client
    // is still admitted and served, and is the only one counted.
    let mut client = echod.connect();
    assert_eq!(round_trip(&mut client, b"admitted"), b"admitted");
    let scrape = http_get(health, "/metrics");
    assert_samples(&scrape.body, &[("echod_connections", 1)]);
    client
        .shutdown(std::net::Shutdown::Write)
        .expect("shut the write side");
    assert_eq!(read_to_eof(&mut client), b"");

    // No client left: the drain ends at once, whatever health connections
    // are open. Had it waited for them, it would have ended no sooner than
    // their 5 s deadline (or the 60 s drain deadline).
    echod.signal(libc::SIGTERM);
    assert_eq!(echod.wait_exit(LIMIT).code(), Some(0), "{}", echod.stderr());
    assert!(
        accepted.elapsed() < REQUEST_TIMEOUT,
        "the drain ended {:?} after the health connections came",
        accepted.elapsed()
    );
    echod.wait_for_line("drain finished: reason=SIGTERM end=emptied left=0", LIMIT);
    drop(held);
}

#[test]
fn a_health_address_in_use_is_one_line_and_exit_1() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let out = Command::new(env!("CARGO_BIN_EXE_echod"))
        .args(["--listen", "127.0.0.1:0", "--health", &addr.to_string()])
        .stdin(Stdio::null())
        .output()
        .expect("run echod");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!("echod: cannot listen on {addr} (health): address in use\n")
    );
    drop(taken);
}

#[test]
fn help_describes_health() {
    let out = Command::new(env!("CARGO_BIN_EXE_echod"))
        .arg("--help")
        .output()
        .expect("run echod --help");
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("--health ADDR"), "{help}");
    assert!(help.contains("/readyz"), "{help}");
    assert!(help.contains("--drain-delay SECS"), "{help}");
}
