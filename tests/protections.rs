//! Protections (docs/protocol.md "Protections"): `--idle-timeout` closes an
//! idle connection with a clean end-of-stream and no notice, pending echo
//! given up, while a talking one stays; `--max-connections-per-ip` closes a
//! source's connection past the limit at once with nothing sent, serves
//! other sources, reuses a freed slot and warns once per episode. Both show
//! in the SIGUSR1 line and in `--help`.

mod common;

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, TcpStream};
use std::process::Command;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use common::*;

/// The address the tests connect from by default.
const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// A second source on loopback (all of 127.0.0.0/8 is local on Linux).
const OTHER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// Asks for stats lines until the counter `key` reaches `want`; returns
/// that line.
#[track_caller]
fn wait_for_stat(echod: &mut Echod, key: &str, want: u64) -> String {
    let deadline = Instant::now() + LIMIT;
    loop {
        let line = echod.stats();
        if field(&line, key) >= want {
            return line;
        }
        if Instant::now() >= deadline {
            echod.fail(&format!("{key} did not reach {want}: {line}"));
        }
        // The pace of the asking, not a synchronisation: each answer is read.
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Count of stderr lines seen so far that contain `pattern`.
fn count_lines(echod: &Echod, pattern: &str) -> usize {
    echod.seen.iter().filter(|l| l.contains(pattern)).count()
}

#[test]
fn an_idle_connection_is_closed_with_a_clean_eof_while_a_talking_one_stays() {
    let mut echod = Echod::spawn(&["--idle-timeout", "1"]);
    let mut talking = echod.connect();
    let mut idle = echod.connect();
    assert_eq!(round_trip(&mut talking, b"hello"), b"hello");
    assert_eq!(round_trip(&mut idle, b"ping"), b"ping");
    let went_idle = Instant::now();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut got = Vec::new();
        let end = std::io::Read::read_to_end(&mut idle, &mut got);
        let _ = tx.send((end.map(|_| got), went_idle.elapsed()));
    });
    // The talking connection sends every 100 ms until the idle one ends.
    let mut sent = 0u32;
    let (end, after) = loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(outcome) => break outcome,
            Err(RecvTimeoutError::Timeout) => {
                sent += 1;
                let msg = format!("message {sent}");
                assert_eq!(round_trip(&mut talking, msg.as_bytes()), msg.as_bytes());
                if went_idle.elapsed() > LIMIT {
                    echod.fail("the idle connection was not closed");
                }
            }
            Err(RecvTimeoutError::Disconnected) => panic!("reader thread died"),
        }
    };
    let got = end.unwrap_or_else(|e| {
        echod.fail(&format!(
            "the idle connection ended with {e}, not end-of-stream"
        ))
    });
    assert!(got.is_empty(), "no notice, no byte: got {got:?}");
    // Its last event was just before `went_idle`: allow for that.
    assert!(
        after >= Duration::from_millis(900),
        "closed after {after:?}, before the timeout"
    );
    assert!(sent >= 5, "the talking connection talked throughout");
    assert_eq!(round_trip(&mut talking, b"still here"), b"still here");
    let line = echod.stats();
    assert_eq!(field(&line, "idle_closed"), 1, "{line}");
    assert_eq!(field(&line, "idle_timeout"), 1, "{line}");
}

#[test]
fn an_idle_connection_with_echo_it_does_not_read_is_closed_with_fin_after_what_was_sent() {
    // Made first: in a debug build on a loaded machine this takes long
    // enough for a connection opened before it to go idle.
    let sent = payload_without_notice(8 << 20, 11);
    let mut echod = Echod::spawn(&["--idle-timeout", "1", "--max-pending", "64K"]);
    let mut client = echod.connect();
    // Never reading: the server holds pending echo it cannot send, and
    // stops reading; then nothing happens on the connection.
    let written = fill_until_blocked(&mut client, &sent);
    let line = wait_for_stat(&mut echod, "idle_closed", 1);
    assert_eq!(field(&line, "pending"), 0, "pending echo given up: {line}");
    // What the kernel already had is delivered, then FIN: never a reset.
    let got = read_to_eof(&mut client);
    assert!(!got.is_empty(), "some echo was sent before the idle close");
    assert!(got.len() <= written, "{} echoed of {written}", got.len());
    assert!(
        got == sent[..got.len()],
        "what arrived is not an exact prefix of what was sent"
    );
}

#[test]
fn an_idle_server_with_an_idle_timeout_wakes_only_for_its_sweeps() {
    // Sweeps every second (a quarter of 4 s). The loop skips the clock on a
    // busy run of wake-ups (docs/design.md "Timers"): once the traffic
    // stops it must go back to sleeping until the next sweep, not poll
    // every few milliseconds.
    let mut echod = Echod::spawn(&["--idle-timeout", "4"]);
    let mut conn = echod.connect();
    for i in 0..200u32 {
        let msg = i.to_string();
        assert_eq!(round_trip(&mut conn, msg.as_bytes()), msg.as_bytes());
    }
    // A short explicit window (no OS event says "did not wake"): two sweeps
    // are about four wake-ups; polling every 3 ms would be hundreds.
    let before = voluntary_switches(echod.pid());
    std::thread::sleep(Duration::from_secs(2));
    let wakeups = voluntary_switches(echod.pid()) - before;
    eprintln!("note: {wakeups} wake-ups in 2 s");
    assert!(
        wakeups < 20,
        "echod woke {wakeups} times in 2 s with one quiet connection\n{}",
        echod.stderr()
    );
    // Quiet for less than the timeout: still served.
    assert_eq!(round_trip(&mut conn, b"still"), b"still");
    assert_eq!(field(&echod.stats(), "idle_closed"), 0);
}

#[test]
fn the_sixth_connection_from_one_address_is_closed_at_once_while_another_address_is_served() {
    let mut echod = Echod::spawn(&["--max-connections-per-ip", "5"]);
    let addr = echod.addr();
    let mut five: Vec<TcpStream> = (0..5)
        .map(|i| {
            let mut conn = connect_from(LOCAL, addr);
            let msg = format!("connection {i}");
            assert_eq!(round_trip(&mut conn, msg.as_bytes()), msg.as_bytes());
            conn
        })
        .collect();
    // Accepted and closed at once: end-of-stream with nothing before it.
    let mut sixth = connect_from(LOCAL, addr);
    assert_eq!(read_to_eof(&mut sixth), b"", "nothing is sent");
    echod.wait_for_line(
        "per-address limit reached: source=127.0.0.1 limit=5; new connections from it are closed",
        LIMIT,
    );
    let mut other = connect_from(OTHER, addr);
    assert_eq!(round_trip(&mut other, b"from .2"), b"from .2");
    // More from the same address in the same episode: closed, not warned again.
    for _ in 0..3 {
        let mut more = connect_from(LOCAL, addr);
        assert_eq!(read_to_eof(&mut more), b"");
    }
    let line = echod.stats();
    assert_eq!(count_lines(&echod, "per-address limit reached"), 1);
    assert_eq!(field(&line, "rejected_per_ip"), 4, "{line}");
    assert_eq!(field(&line, "max_connections_per_ip"), 5, "{line}");
    assert_eq!(field(&line, "connections"), 6, "{line}");
    // Those closed at once count as accepted: 5 + 1 + 4.
    assert_eq!(field(&line, "accepted"), 10, "{line}");
    // One of the five leaves: its slot is free for the address again.
    drop(five.pop());
    wait_until(LIMIT, "the server to see the connection leave", || {
        field(&echod.stats(), "connections") == 5
    });
    let mut again = connect_from(LOCAL, addr);
    assert_eq!(round_trip(&mut again, b"again"), b"again");
    assert_eq!(round_trip(&mut five[0], b"the rest"), b"the rest");
}

#[test]
fn input_a_rejected_connection_already_sent_is_read_off_so_it_ends_with_fin_not_a_reset() {
    let mut echod = Echod::spawn(&["--max-connections-per-ip", "1"]);
    let mut first = echod.connect();
    assert_eq!(round_trip(&mut first, b"one"), b"one");
    // Stopped, the server cannot accept before the bytes arrive: they are
    // queued on the connection when it is accepted and closed.
    echod.pause();
    let mut second = echod.connect();
    second.write_all(b"already sent").expect("write");
    echod.resume();
    assert_eq!(read_to_eof(&mut second), b"", "nothing is sent");
    let line = echod.stats();
    assert_eq!(field(&line, "rejected_per_ip"), 1, "{line}");
}

#[test]
fn help_describes_both_protections_with_their_defaults() {
    let out = Command::new(env!("CARGO_BIN_EXE_echod"))
        .arg("--help")
        .output()
        .expect("run echod --help");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "--idle-timeout SECS",
        "0 = never [default: 0]",
        "--max-connections-per-ip N",
        "0 = no limit [default: 0]",
    ] {
        assert!(help.contains(needle), "--help lacks {needle:?}:\n{help}");
    }
}
