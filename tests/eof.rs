//! End-of-stream is never lost (docs/protocol.md "Running": a short read counts as "the
//! queue is empty" only when the event did not also report the peer's
//! end-of-stream; a half-closed client still gets the rest of its echo, then
//! the server closes). Regression tests for issue #8, item 1: an
//! end-of-stream reported together with more input than one event may read
//! was forgotten, the FIN was never read, and the socket sat in CLOSE-WAIT.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::thread;
use std::time::Duration;

use common::*;

/// How long a client waits for its echo and end-of-stream. Generous for a
/// loaded 2-core machine; a lost end-of-stream waits here forever.
const EOF_LIMIT: Duration = Duration::from_secs(20);

/// Reads until end-of-stream; an error unless the bytes are exactly `sent`.
fn echo_then_eof(mut conn: TcpStream, sent: &[u8]) -> Result<(), String> {
    conn.set_read_timeout(Some(EOF_LIMIT))
        .expect("read timeout");
    let mut got = Vec::with_capacity(sent.len());
    if let Err(e) = conn.read_to_end(&mut got) {
        return Err(format!(
            "no end-of-stream within {EOF_LIMIT:?} after {} of {} echo bytes: {e}",
            got.len(),
            sent.len()
        ));
    }
    if got != sent {
        let at = got.iter().zip(sent).position(|(a, b)| a != b);
        return Err(format!(
            "echo of {} bytes differs from the {} sent (first difference at {at:?})",
            got.len(),
            sent.len()
        ));
    }
    Ok(())
}

/// Fails with echod's stderr when any connection's result is an error.
#[track_caller]
fn assert_all_ok(echod: &Echod, results: Vec<(String, Result<(), String>)>) {
    let failed: Vec<String> = results
        .iter()
        .filter_map(|(what, r)| r.as_ref().err().map(|e| format!("{what}: {e}")))
        .collect();
    if !failed.is_empty() {
        echod.fail(&format!(
            "lost {} of {} end-of-streams or echoes:\n{}",
            failed.len(),
            results.len(),
            failed.join("\n")
        ));
    }
}

/// Sends `data` from another thread while reading its echo here.
#[track_caller]
fn echo_concurrently(conn: &mut TcpStream, data: &[u8]) {
    let mut writer = conn.try_clone().expect("clone");
    let mut back = vec![0; data.len()];
    thread::scope(|scope| {
        scope.spawn(|| writer.write_all(data).expect("write"));
        conn.read_exact(&mut back).expect("read echo");
    });
    assert!(back == data, "warm-up echo differs");
}

// Issue #8: SIGSTOP echod, write 1 MiB + 100 bytes and shut down the write
// side, SIGCONT. The event reports readable and end-of-stream; the first turn
// stops at the per-event read cap, the next took its short read for "empty"
// and never read the FIN (2 of 4 runs). Several connections and rounds, so
// a regression shows whatever the kernel's timing.
#[test]
fn end_of_stream_behind_a_megabyte_sent_while_the_server_was_stopped_is_read() {
    const ROUNDS: usize = 4;
    const CONNECTIONS: usize = 4;
    let echod = Echod::spawn(&[]);
    let mut fully_queued = 0;
    for round in 0..ROUNDS {
        let mut conns: Vec<TcpStream> = (0..CONNECTIONS).map(|_| echod.connect()).collect();
        // Megabytes through each connection first: the kernel grows the
        // server's receive buffer for a reader that keeps up, so that the
        // whole megabyte and the FIN then fit in its queue.
        for conn in &mut conns {
            echo_concurrently(conn, &random_bytes(8 << 20, round as u64));
        }
        echod.pause();
        let mut sent = Vec::new();
        for (i, conn) in conns.iter_mut().enumerate() {
            let data = random_bytes((1 << 20) + 100, (round * CONNECTIONS + i) as u64);
            conn.write_all(&data).expect("write while echod is stopped");
            conn.shutdown(Shutdown::Write).expect("shutdown(Write)");
            sent.push(data);
        }
        // The case of the issue: every byte and the FIN are in the server's
        // receive queue when it runs again (its socket is in CLOSE-WAIT).
        // Whether the kernel grew the buffer enough is its business: the
        // window only decides when to resume; the count is checked below.
        let server = echod.addr();
        let clients: Vec<_> = conns
            .iter()
            .map(|c| c.local_addr().expect("addr"))
            .collect();
        let queued = || {
            clients
                .iter()
                .filter(|&&c| tcp_state(server, c) == Some(TCP_CLOSE_WAIT))
                .count()
        };
        poll_until(Duration::from_secs(5), || queued() == CONNECTIONS);
        fully_queued += queued();
        echod.resume();
        let results = thread::scope(|scope| {
            let readers: Vec<_> = conns
                .into_iter()
                .zip(&sent)
                .map(|(conn, data)| scope.spawn(move || echo_then_eof(conn, data)))
                .collect();
            readers
                .into_iter()
                .enumerate()
                .map(|(i, r)| {
                    let what = format!("round {round} connection {i}");
                    (what, r.join().expect("reader"))
                })
                .collect()
        });
        assert_all_ok(&echod, results);
    }
    eprintln!(
        "note: {fully_queued} of {} connections had every byte and the FIN queued",
        ROUNDS * CONNECTIONS
    );
    assert!(
        fully_queued > 0,
        "no connection had its megabyte and FIN queued at the server: the test proved nothing"
    );
}

// Issue #8, deterministic: with reads cut to 1 KiB by --max-pending, 32 KiB
// and the FIN queued at the server before it runs again are more than one
// event's 16 reads. The test waits until the server's socket is in
// CLOSE-WAIT (the FIN, and so every byte before it, is in its receive queue).
#[test]
fn end_of_stream_queued_behind_more_than_one_event_reads_is_read() {
    let echod = Echod::spawn(&["--max-pending", "1K"]);
    for round in 0..3u64 {
        let mut conn = echod.connect();
        assert_eq!(round_trip(&mut conn, b"up"), b"up");
        echod.pause();
        let data = random_bytes(32 * 1024 + 100, 40 + round);
        conn.write_all(&data).expect("write while echod is stopped");
        conn.shutdown(Shutdown::Write).expect("shutdown(Write)");
        let (server, client) = (echod.addr(), conn.local_addr().expect("local addr"));
        wait_until(LIMIT, "the FIN queued at the server (CLOSE-WAIT)", || {
            tcp_state(server, client) == Some(TCP_CLOSE_WAIT)
        });
        echod.resume();
        assert_all_ok(
            &echod,
            vec![(format!("round {round}"), echo_then_eof(conn, &data))],
        );
        // And the server closed its socket: no CLOSE-WAIT left behind.
        wait_until(LIMIT, "the server to close its socket", || {
            tcp_state(server, client) != Some(TCP_CLOSE_WAIT)
        });
    }
}

/// Streams `data` in pseudo-random chunks of 1 byte to 64 KiB, then shuts
/// down the write side.
fn stream_in_chunks(mut conn: TcpStream, data: &[u8], seed: u64) {
    let sizes = random_bytes(data.len() / 512 + 16, seed);
    let mut off = 0;
    for (i, &s) in sizes.iter().cycle().enumerate() {
        if off == data.len() {
            break;
        }
        // Mostly mid-sized chunks, now and then a tiny or a 64 KiB one.
        let len = match (s, i % 3) {
            (0..=15, _) => 1 + s as usize,
            (240..=255, _) => 64 * 1024,
            (_, 0) => 512 + s as usize * 97,
            _ => 4096 + s as usize * 61,
        };
        let end = (off + len).min(data.len());
        conn.write_all(&data[off..end]).expect("write chunk");
        off = end;
    }
    conn.shutdown(Shutdown::Write).expect("shutdown(Write)");
}

// Issue #8: clients that stream 2 MB in random chunks and half-close, with
// default flags and no SIGSTOP: 8 of 320 connections never got their
// end-of-stream.
#[test]
fn many_half_closing_streams_all_get_their_echo_and_end_of_stream() {
    const CONNECTIONS: usize = 64;
    const BYTES: usize = 2_000_000;
    let echod = Echod::spawn(&[]);
    let conns: Vec<TcpStream> = (0..CONNECTIONS).map(|_| echod.connect()).collect();
    let results = thread::scope(|scope| {
        let clients: Vec<_> = conns
            .into_iter()
            .enumerate()
            .map(|(i, conn)| {
                scope.spawn(move || {
                    let data = random_bytes(BYTES, 1000 + i as u64);
                    let writer = conn.try_clone().expect("clone");
                    thread::scope(|inner| {
                        inner.spawn(|| stream_in_chunks(writer, &data, i as u64));
                        echo_then_eof(conn, &data)
                    })
                })
            })
            .collect();
        clients
            .into_iter()
            .enumerate()
            .map(|(i, c)| (format!("connection {i}"), c.join().expect("client")))
            .collect()
    });
    assert_all_ok(&echod, results);
}

// Issue #8, as a drain: 20 clients push until --max-pending holds them back,
// then after SIGHUP half-close, read to EOF and close. The server must see
// every one leave (`end=emptied`), not wait out its deadline for a client
// whose end-of-stream it lost (`end=deadline`, 1 to 3 of 20 trials).
#[test]
fn a_drain_ends_as_soon_as_held_back_half_closing_clients_leave() {
    const CLIENTS: usize = 20;
    for trial in 0..2u64 {
        // The deadline is far away: a drain that reaches it has lost someone.
        let mut echod = Echod::spawn(&["--max-pending", "64K", "--drain-timeout", "60"]);
        let sent = payload_without_notice(8 << 20, 60 + trial);
        let conns: Vec<TcpStream> = (0..CLIENTS).map(|_| echod.connect()).collect();
        let mut clients: Vec<(TcpStream, usize)> = thread::scope(|scope| {
            let fills: Vec<_> = conns
                .into_iter()
                .map(|mut conn| {
                    let sent = &sent;
                    scope.spawn(move || {
                        let written = fill_until_blocked(&mut conn, sent);
                        (conn, written)
                    })
                })
                .collect();
            fills.into_iter().map(|f| f.join().expect("fill")).collect()
        });
        echod.signal(libc::SIGHUP);
        echod.wait_for_line("drain started", LIMIT);
        thread::scope(|scope| {
            for (i, (conn, written)) in clients.drain(..).enumerate() {
                let sent = &sent[..written];
                scope.spawn(move || {
                    conn.shutdown(Shutdown::Write).expect("shutdown(Write)");
                    let mut conn = conn;
                    let got = read_to_eof(&mut conn);
                    assert_prefix_then_notice(&got, sent, b"SHUTDOWN");
                    drop(conn);
                    i
                });
            }
        });
        let status = echod.wait_exit(Duration::from_secs(90));
        assert!(
            status.success(),
            "trial {trial}: {status:?}\n{}",
            echod.stderr()
        );
        let last = echod.wait_for_line("drain finished", LIMIT);
        assert!(
            last.contains("end=emptied") && last.contains(&format!("left={CLIENTS}")),
            "trial {trial}: {last}\n{}",
            echod.stderr()
        );
    }
}
