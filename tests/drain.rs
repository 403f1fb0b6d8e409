//! The drain as clients see it (docs/protocol.md "Draining"): prefix, notice, EOF, no
//! reset; the backlog and the listener; exit at the last client or at the deadline.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;

const NOTICE: &[u8] = b"SHUTDOWN";

#[test]
fn idle_client_gets_notice_then_eof_and_server_exits_when_it_leaves() {
    let mut echod = Echod::spawn(&["--drain-timeout", "30"]);
    let mut client = echod.connect();
    assert_eq!(round_trip(&mut client, b"ping"), b"ping");
    echod.signal(libc::SIGTERM);
    let got = read_to_eof(&mut client);
    assert_eq!(got, NOTICE, "{}", echod.stderr());
    drop(client);
    // Well before the 30 s deadline: the last client leaving ends the drain.
    let started = Instant::now();
    let status = echod.wait_exit(LIMIT);
    assert!(status.success(), "{status:?}\n{}", echod.stderr());
    assert!(started.elapsed() < Duration::from_secs(15));
    let last = echod.wait_for_line("drain finished", LIMIT);
    assert!(last.contains("left=1"), "{last}");
    assert!(last.contains("closed_at_deadline=0"), "{last}");
    assert!(last.contains("accepted=1"), "{last}");
}

#[test]
fn custom_notice_is_sent_byte_exact_without_newline() {
    let echod = Echod::spawn(&["--shutdown-message", "bye now", "--drain-timeout", "30"]);
    let mut client = echod.connect();
    assert_eq!(round_trip(&mut client, b"x"), b"x");
    echod.signal(libc::SIGHUP);
    assert_eq!(read_to_eof(&mut client), b"bye now");
}

#[test]
fn client_sending_across_the_signal_gets_exact_prefix_then_notice_then_eof() {
    let mut echod = Echod::spawn(&["--drain-timeout", "30"]);
    let client = echod.connect();
    let sent = payload_without_notice(32 << 20, 7);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let mut stream = client.try_clone().unwrap();
        let (sent, stop) = (sent.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut off = 0;
            // Keep sending until the reader has seen EOF (or everything is sent).
            while off < sent.len() && !stop.load(Ordering::SeqCst) {
                match stream.write(&sent[off..(off + 4096).min(sent.len())]) {
                    Ok(n) => off += n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(_) => break,
                }
            }
            off
        })
    };
    let mut reader = client;
    let mut got = Vec::new();
    let mut chunk = vec![0; 65536];
    let mut signalled = false;
    loop {
        let n = match reader.read(&mut chunk) {
            Ok(n) => n,
            Err(e) => panic!("read failed after {} bytes (a reset?): {e}", got.len()),
        };
        if n == 0 {
            break;
        }
        got.extend_from_slice(&chunk[..n]);
        if !signalled && got.len() >= 256 * 1024 {
            // Echo is flowing: drain in the middle of the stream.
            echod.signal(libc::SIGTERM);
            signalled = true;
        }
    }
    stop.store(true, Ordering::SeqCst);
    let written = writer.join().unwrap();
    assert!(signalled, "the stream ended before the signal");
    let echoed = assert_prefix_then_notice(&got, &sent[..written], NOTICE);
    assert!(echoed >= 256 * 1024);
    drop(reader);
    assert!(echod.wait_exit(LIMIT).success(), "{}", echod.stderr());
}

#[test]
fn held_back_client_gets_every_byte_queued_at_the_server_before_the_notice() {
    let mut echod = Echod::spawn(&["--max-pending", "64K", "--drain-timeout", "60"]);
    let mut client = echod.connect();
    let sent = payload_without_notice(64 << 20, 11);
    let written = fill_until_blocked(&mut client, &sent);
    let delivered = written - unacked(&client);
    assert!(
        delivered >= 1 << 20,
        "want megabytes queued at the server, got {delivered} bytes delivered"
    );
    echod.signal(libc::SIGTERM);
    echod.wait_for_line("drain started", LIMIT);
    let got = read_to_eof(&mut client);
    let echoed = assert_prefix_then_notice(&got, &sent[..written], NOTICE);
    assert!(
        echoed >= delivered,
        "echoed {echoed} of {delivered} bytes the server had before the drain"
    );
    drop(client);
    assert!(echod.wait_exit(LIMIT).success(), "{}", echod.stderr());
}

#[test]
fn connect_after_the_signal_is_refused_and_the_port_is_free_at_once() {
    let mut echod = Echod::spawn(&["--drain-timeout", "30"]);
    let addr = echod.addr();
    // A connected client keeps the drain going while we probe the port.
    let mut client = echod.connect();
    assert_eq!(round_trip(&mut client, b"hi"), b"hi");
    echod.signal(libc::SIGTERM);
    echod.wait_for_line("drain started", LIMIT);
    assert!(
        is_refused(addr),
        "connect after the drain began was not refused"
    );
    let rebound = TcpListener::bind(addr);
    assert!(rebound.is_ok(), "port not free during drain: {rebound:?}");
    assert_eq!(read_to_eof(&mut client), NOTICE);
}

#[test]
fn connections_waiting_in_the_backlog_are_drained_too() {
    // With a limit of 1, the second client waits in the kernel backlog.
    let mut echod = Echod::spawn(&["--max-connections", "1", "--drain-timeout", "30"]);
    let mut first = echod.connect();
    assert_eq!(round_trip(&mut first, b"1"), b"1");
    let mut waiting = echod.connect();
    waiting.write_all(b"queued").unwrap();
    echod.wait_for_line("connection limit reached", LIMIT);
    echod.signal(libc::SIGTERM);
    // The waiting client is accepted at drain start: its bytes, then the notice.
    let got = read_to_eof(&mut waiting);
    assert_eq!(got, b"queuedSHUTDOWN");
    assert_eq!(read_to_eof(&mut first), NOTICE);
    let line = echod.wait_for_line("drain started", LIMIT);
    assert!(line.contains("connections=2"), "{line}");
}

#[test]
fn clients_that_stay_are_closed_at_the_deadline() {
    let mut echod = Echod::spawn(&["--drain-timeout", "0.3"]);
    let mut client = echod.connect();
    assert_eq!(round_trip(&mut client, b"stay"), b"stay");
    echod.signal(libc::SIGTERM);
    // The notice and FIN come at once; the client keeps its end open.
    let mut got = Vec::new();
    let mut buf = [0; 64];
    while got.len() < NOTICE.len() {
        let n = client.read(&mut buf).unwrap();
        assert!(n > 0, "EOF before the notice");
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(got, NOTICE);
    let status = echod.wait_exit(LIMIT);
    assert!(status.success(), "{status:?}");
    let last = echod.wait_for_line("drain finished", LIMIT);
    assert!(last.contains("closed_at_deadline=1"), "{last}");
    assert!(last.contains("end=deadline"), "{last}");
    assert_eq!(client.read(&mut buf).unwrap(), 0, "EOF after the notice");
}

#[test]
fn zero_timeout_writes_echo_and_notice_then_closes() {
    let mut echod = Echod::spawn(&["--drain-timeout", "0"]);
    let mut client = echod.connect();
    assert_eq!(round_trip(&mut client, b"abc"), b"abc");
    echod.signal(libc::SIGINT);
    assert_eq!(read_to_eof(&mut client), NOTICE);
    assert!(echod.wait_exit(LIMIT).success());
}

#[test]
fn half_closed_client_gets_the_rest_of_its_echo_and_the_notice() {
    let mut echod = Echod::spawn(&["--max-pending", "16K", "--drain-timeout", "30"]);
    let mut client = echod.connect();
    let sent = payload_without_notice(64 << 20, 5);
    // Fill without reading, so echo is certainly still owed, then half-close.
    let written = fill_until_blocked(&mut client, &sent);
    client.shutdown(std::net::Shutdown::Write).unwrap();
    let delivered = written - unacked(&client);
    echod.signal(libc::SIGQUIT);
    let got = read_to_eof(&mut client);
    let echoed = assert_prefix_then_notice(&got, &sent[..written], NOTICE);
    assert!(
        echoed >= delivered,
        "echoed {echoed} of {delivered} delivered"
    );
    drop(client);
    assert!(echod.wait_exit(LIMIT).success());
}

#[test]
fn many_clients_all_get_the_notice() {
    let mut echod = Echod::spawn(&["--drain-timeout", "30"]);
    let mut clients: Vec<_> = (0..100).map(|_| echod.connect()).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        let msg = format!("c{i}");
        assert_eq!(round_trip(c, msg.as_bytes()), msg.as_bytes());
    }
    echod.signal(libc::SIGTERM);
    for c in &mut clients {
        assert_eq!(read_to_eof(c), NOTICE);
    }
    drop(clients);
    assert!(echod.wait_exit(LIMIT).success());
    let last = echod.wait_for_line("drain finished", LIMIT);
    assert!(last.contains("left=100"), "{last}");
}

#[test]
fn the_drain_logs_a_countdown_once_a_second() {
    let mut echod = Echod::spawn(&["--drain-timeout", "2.5"]);
    let mut client = echod.connect();
    assert_eq!(round_trip(&mut client, b"count"), b"count");
    echod.signal(libc::SIGTERM);
    let remaining = |line: &str| -> f64 {
        let value = line
            .split("remaining=")
            .nth(1)
            .and_then(|r| r.split('s').next());
        value
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no remaining= in {line}"))
    };
    let first = echod.next_line_matching("drain countdown", LIMIT);
    assert!(first.contains("connections=1"), "{first}");
    let second = echod.next_line_matching("drain countdown", LIMIT);
    // About a second apart, counting down toward the 2.5 s deadline; the
    // exact values depend on scheduling, so only the order is asserted.
    assert!(remaining(&first) < 2.5 && remaining(&first) > remaining(&second));
    assert!(echod.wait_exit(LIMIT).success());
    let last = echod.wait_for_line("drain finished", LIMIT);
    assert!(last.contains("closed_at_deadline=1"), "{last}");
}
