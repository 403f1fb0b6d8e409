//! Integration tests for `echo-load`: the real binary against small servers
//! written here on real loopback sockets, each with one known behaviour
//! (correct echo, a flipped byte, a cut stream, a simulated drain).
//!
//! Nothing here needs echod: the tests that drive the real echod with the
//! echo-load library are echod's (`tests/echo_load.rs` at the repository
//! root). Tests wait for events (child exit, accept, EOF); the only time
//! limits are generous safety nets against hangs.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use serde_json::Value;

/// Safety net for one echo-load run; runs take well under a second.
const RUN_LIMIT: Duration = Duration::from_secs(60);

/// Starts a server on 127.0.0.1:0 that hands each connection to `serve` on
/// its own thread. The listener lives until the test process exits.
fn start_server(serve: fn(TcpStream) -> io::Result<()>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a test server");
    let addr = listener.local_addr().expect("test server address");
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            thread::spawn(move || serve(conn));
        }
    });
    addr
}

/// A correct echo.
fn echo(mut conn: TcpStream) -> io::Result<()> {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        conn.write_all(&buf[..n])?;
    }
}

/// Echoes, but flips one bit of the 100th byte of every connection.
fn flip_one_byte(mut conn: TcpStream) -> io::Result<()> {
    let mut buf = [0u8; 16 * 1024];
    let mut seen = 0usize;
    loop {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        if (seen..seen + n).contains(&99) {
            buf[99 - seen] ^= 0x01;
        }
        seen += n;
        conn.write_all(&buf[..n])?;
    }
}

/// Echoes the first `limit` bytes received, cutting a read in the middle
/// when needed. The last of them are not written but returned, so the
/// caller can send them in one write with what follows.
fn echo_prefix(conn: &mut TcpStream, limit: usize) -> io::Result<Vec<u8>> {
    let mut buf = [0u8; 16 * 1024];
    let mut echoed = 0;
    while echoed < limit {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            return Ok(Vec::new());
        }
        let take = n.min(limit - echoed);
        if echoed + take < limit {
            conn.write_all(&buf[..take])?;
        } else {
            // The last echo bytes go back with the caller's next write.
            return Ok(buf[..take].to_vec());
        }
        echoed += take;
    }
    Ok(Vec::new())
}

/// Reads and discards until the client closes, so that closing never finds
/// unread input (which would make the kernel send a reset).
fn discard_until_eof(mut conn: TcpStream) -> io::Result<()> {
    let mut buf = [0u8; 16 * 1024];
    while conn.read(&mut buf)? > 0 {}
    Ok(())
}

/// Echoes 1000 bytes, then ends the stream without a notice.
fn cut_mid_stream(mut conn: TcpStream) -> io::Result<()> {
    let last = echo_prefix(&mut conn, 1000)?;
    conn.write_all(&last)?;
    conn.shutdown(Shutdown::Write)?;
    discard_until_eof(conn)
}

/// Simulated drain: echoes 300 bytes (not a message boundary), then the
/// notice split over two writes, the first sharing a write with the last
/// echo bytes, then end-of-stream.
fn drain_after_300_bytes(mut conn: TcpStream) -> io::Result<()> {
    let mut last = echo_prefix(&mut conn, 300)?;
    last.extend_from_slice(b"SHU");
    conn.write_all(&last)?;
    conn.write_all(b"TDOWN")?;
    conn.shutdown(Shutdown::Write)?;
    discard_until_eof(conn)
}

/// Echoes every byte, slowly but steadily: 100 bytes every 25 ms.
fn echo_slowly(mut conn: TcpStream) -> io::Result<()> {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = conn.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        for chunk in buf[..n].chunks(100) {
            conn.write_all(chunk)?;
            // The server's pace, not a wait for anything.
            thread::sleep(Duration::from_millis(25));
        }
    }
}

/// A drain that never ends: echoes 300 bytes and the notice, then keeps
/// the connection open, reading and discarding, until the client closes.
fn notice_without_end_of_stream(mut conn: TcpStream) -> io::Result<()> {
    let mut last = echo_prefix(&mut conn, 300)?;
    last.extend_from_slice(b"SHUTDOWN");
    conn.write_all(&last)?;
    discard_until_eof(conn)
}

/// A drain that ends much later: echoes 300 bytes and the notice, and ends
/// the stream only 5 s later, ten times the clients' --connect-timeout.
fn notice_then_end_of_stream_much_later(mut conn: TcpStream) -> io::Result<()> {
    let mut last = echo_prefix(&mut conn, 300)?;
    last.extend_from_slice(b"SHUTDOWN");
    conn.write_all(&last)?;
    // The server's behaviour under test, not a wait for anything.
    thread::sleep(Duration::from_secs(5));
    conn.shutdown(Shutdown::Write)?;
    discard_until_eof(conn)
}

/// Runs echo-load with `args` and waits for it to exit.
#[track_caller]
fn echo_load(args: &[&str]) -> Output {
    let child = Command::new(env!("CARGO_BIN_EXE_echo-load"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn echo-load");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || tx.send(child.wait_with_output()));
    match rx.recv_timeout(RUN_LIMIT) {
        Ok(output) => output.expect("wait for echo-load"),
        Err(_) => {
            // Do not leave a hung child behind the failed test.
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            panic!("echo-load {args:?} did not exit within {RUN_LIMIT:?}");
        }
    }
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The exit code, with the whole output in the failure message.
#[track_caller]
fn assert_exit(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "unexpected exit status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        stdout(out),
        stderr(out)
    );
}

/// The one JSON object echo-load printed on stdout, parsed.
#[track_caller]
fn json(out: &Output) -> Value {
    let text = stdout(out);
    assert_eq!(text.trim_end().lines().count(), 1, "not one line: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("invalid JSON ({e}): {text}"))
}

/// A count field: a whole number.
#[track_caller]
fn count(v: &Value) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("not a whole number: {v}"))
}

#[test]
fn message_count_is_exact_and_clean() {
    let addr = start_server(echo).to_string();
    let out = echo_load(&["-c", "4", "-n", "1000", "--json", &addr]);
    assert_exit(&out, 0);
    let v = json(&out);
    assert_eq!(v["messages"], 1000, "{v}");
    assert_eq!(v["bytes"], 64_000, "{v}");
    assert_eq!(v["latency_us"]["samples"], 1000, "{v}");
    assert_eq!(v["connections_opened"], 4, "{v}");
    assert_eq!(v["errors"]["total"], 0, "{v}");
    assert_eq!(v["clean"], true, "{v}");
}

#[test]
fn pipelined_literal_messages_over_threads_are_all_verified() {
    let addr = start_server(echo).to_string();
    let out = echo_load(&[
        "-c",
        "5",
        "-t",
        "2",
        "-p",
        "8",
        "-n",
        "2001",
        "-m",
        "hello, echo",
        "--json",
        &addr,
    ]);
    assert_exit(&out, 0);
    let v = json(&out);
    assert_eq!(v["messages"], 2001, "{v}");
    assert_eq!(v["bytes"], 2001 * 11, "{v}");
}

#[test]
fn large_messages_are_verified_across_many_reads() {
    let addr = start_server(echo).to_string();
    let out = echo_load(&[
        "-c", "2", "-p", "2", "-s", "300000", "-n", "20", "--json", &addr,
    ]);
    assert_exit(&out, 0);
    assert_eq!(json(&out)["messages"], 20);
}

#[test]
fn open_loop_rate_sends_the_requested_messages() {
    let addr = start_server(echo).to_string();
    let out = echo_load(&["-c", "3", "-r", "2000", "-n", "300", "--json", &addr]);
    assert_exit(&out, 0);
    assert_eq!(json(&out)["messages"], 300);
}

#[test]
fn duration_run_ends_clean_with_every_echo_verified() {
    let addr = start_server(echo).to_string();
    let out = echo_load(&["-c", "3", "-d", "0.3", "--warmup", "0.1", "--json", &addr]);
    assert_exit(&out, 0);
    let v = json(&out);
    assert!(count(&v["messages"]) > 0, "{v}");
    assert!(count(&v["warmup_messages"]) > 0, "{v}");
}

#[test]
fn flipped_byte_is_counted_as_mismatch_and_exits_1() {
    let addr = start_server(flip_one_byte).to_string();
    let out = echo_load(&["-c", "2", "-n", "1000", "--json", &addr]);
    assert_exit(&out, 1);
    let v = json(&out);
    assert_eq!(v["errors"]["mismatch"], 2, "{v}");
    assert_eq!(v["clean"], false, "{v}");
}

#[test]
fn stream_cut_without_notice_is_unexpected_eof_and_exits_1() {
    let addr = start_server(cut_mid_stream).to_string();
    let out = echo_load(&["-c", "3", "-n", "1000000", "-p", "2", "--json", &addr]);
    assert_exit(&out, 1);
    let v = json(&out);
    assert_eq!(v["errors"]["unexpected_eof"], 3, "{v}");
    assert_eq!(v["drain"]["cut_without_notice"], 3, "{v}");
    assert_eq!(v["drain"]["notices"], 0, "{v}");
}

#[test]
fn a_server_that_never_echoes_ends_the_run_with_timeouts() {
    // A count run against a server that reads but never answers used to
    // wait forever; now a whole --connect-timeout without progress ends it.
    let addr = start_server(discard_until_eof).to_string();
    let args = [
        "-c",
        "2",
        "-n",
        "100",
        "--connect-timeout",
        "0.5",
        "--json",
        &addr,
    ];
    let out = echo_load(&args);
    assert_exit(&out, 1);
    let v = json(&out);
    assert_eq!(v["errors"]["timeout"], 2, "{v}");
    assert_eq!(v["messages"], 0, "{v}");
}

#[test]
fn notice_then_end_of_stream_counts_as_drained_and_exits_0() {
    let addr = start_server(drain_after_300_bytes).to_string();
    let out = echo_load(&["-c", "4", "-n", "1000000", "-p", "3", "--json", &addr]);
    assert_exit(&out, 0);
    let v = json(&out);
    assert_eq!(v["drain"]["notices"], 4, "{v}");
    assert_eq!(v["errors"]["total"], 0, "{v}");
    // 300 echoed bytes hold 4 whole 64-byte messages per connection.
    assert_eq!(v["messages"], 16, "{v}");
    assert!(v["drain"]["fanout_secs"].is_f64(), "{v}");
}

#[test]
fn count_run_ends_clean_against_a_slow_but_steady_server() {
    // Issue #8: -n started its final wait when the last message was queued,
    // so a server that answered steadily but took longer than
    // --connect-timeout in all was reported NOT CLEAN. Here all 10 messages
    // (7,500 bytes) are queued at once and come back in about 1.9 s, twice
    // the timeout, a little every 25 ms.
    let addr = start_server(echo_slowly).to_string();
    let args = [
        "-c",
        "1",
        "-p",
        "10",
        "-n",
        "10",
        "-s",
        "750",
        "--connect-timeout",
        "1",
        "--json",
        &addr,
    ];
    let out = echo_load(&args);
    assert_exit(&out, 0);
    let v = json(&out);
    assert_eq!(v["messages"], 10, "{v}");
    assert_eq!(v["errors"]["total"], 0, "{v}");
}

#[test]
fn open_loop_gaps_longer_than_the_timeout_are_not_a_stall() {
    // Found with issue #8: the stall check looked only at echoes, so an
    // open-loop message sent after a quiet gap longer than --connect-timeout
    // ended the run at once with a timeout. Here a message every 0.5 s,
    // with a 0.3 s timeout, against a correct echo.
    let addr = start_server(echo).to_string();
    let args = [
        "-c",
        "1",
        "-r",
        "2",
        "-n",
        "3",
        "--connect-timeout",
        "0.3",
        "--json",
        &addr,
    ];
    let out = echo_load(&args);
    assert_exit(&out, 0);
    let v = json(&out);
    assert_eq!(v["messages"], 3, "{v}");
    assert_eq!(v["errors"]["total"], 0, "{v}");
}

#[test]
fn notice_without_end_of_stream_ends_the_run_unclean_after_the_timeout() {
    // Issue #8: with -n, echo-load waited forever for a server that sent the
    // notice and never closed; with -d it counted such a connection as
    // drained. A notice without end-of-stream is not a drain: once nothing
    // moves for --connect-timeout the run ends, and those connections count
    // as timeouts.
    let addr = start_server(notice_without_end_of_stream).to_string();
    for stop in [["-n", "1000000"], ["-d", "0.2"]] {
        let mut args = vec!["-c", "2", "-p", "3", "--connect-timeout", "0.5"];
        args.extend(stop);
        args.extend(["--json", &addr]);
        let out = echo_load(&args);
        assert_exit(&out, 1);
        let v = json(&out);
        assert_eq!(v["errors"]["timeout"], 2, "{stop:?}: {v}");
        assert_eq!(v["drain"]["notices"], 0, "{stop:?}: {v}");
        assert_eq!(v["clean"], false, "{stop:?}: {v}");
    }
}

#[test]
fn end_of_stream_long_after_the_notice_is_not_a_clean_drain() {
    // Issue #8: a -n run waited for as long as the server took to close
    // after its notice, then reported a clean drain. The run now ends,
    // unclean, --connect-timeout (0.5 s) after the notice, well before the
    // server's end-of-stream 5 s later.
    let addr = start_server(notice_then_end_of_stream_much_later).to_string();
    let args = [
        "-c",
        "2",
        "-p",
        "3",
        "-n",
        "1000000",
        "--connect-timeout",
        "0.5",
        "--json",
        &addr,
    ];
    let out = echo_load(&args);
    assert_exit(&out, 1);
    let v = json(&out);
    assert_eq!(v["errors"]["timeout"], 2, "{v}");
    assert_eq!(v["drain"]["notices"], 0, "{v}");
}

#[test]
fn refused_connections_are_counted_not_fatal() {
    // Bind then drop: nothing listens on this port any more.
    let addr = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("find a free port")
        .to_string();
    let out = echo_load(&["-c", "3", "-n", "10", "--json", &addr]);
    assert_exit(&out, 1);
    let v = json(&out);
    assert_eq!(v["errors"]["refused"], 3, "{v}");
    assert_eq!(v["connections_failed"], 3, "{v}");
}

/// The names of an object's fields, sorted.
#[track_caller]
fn keys(v: &Value) -> Vec<&str> {
    let object = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"));
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    keys
}

/// `names`, sorted, for comparing with [`keys`].
fn sorted<'a>(names: &[&'a str]) -> Vec<&'a str> {
    let mut names = names.to_vec();
    names.sort_unstable();
    names
}

#[test]
fn json_holds_every_documented_field_and_no_other() {
    let addr = start_server(echo).to_string();
    let out = echo_load(&["-c", "1", "-n", "10", "--json", &addr]);
    assert_exit(&out, 0);
    let v = json(&out);
    let top = [
        "clean",
        "elapsed_secs",
        "messages",
        "warmup_messages",
        "bytes",
        "msgs_per_sec",
        "mib_per_sec",
        "latency_us",
        "errors",
        "connections_opened",
        "connections_failed",
        "drain",
        "cpu_user_secs",
        "cpu_sys_secs",
        "cpu_percent",
    ];
    assert_eq!(keys(&v), sorted(&top), "{v}");
    let latency = ["min", "p50", "p90", "p99", "p999", "max", "samples"];
    assert_eq!(keys(&v["latency_us"]), sorted(&latency), "{v}");
    let errors = [
        "total",
        "mismatch",
        "reset",
        "timeout",
        "refused",
        "emfile",
        "other",
        "unexpected_eof",
    ];
    assert_eq!(keys(&v["errors"]), sorted(&errors), "{v}");
    let drain = [
        "notices",
        "cut_without_notice",
        "unanswered",
        "first_notice_secs",
        "last_notice_secs",
        "last_close_secs",
        "fanout_secs",
    ];
    assert_eq!(keys(&v["drain"]), sorted(&drain), "{v}");
    // Types as documented: counts are whole numbers, times are numbers,
    // instants that never happened are null.
    assert_eq!(v["clean"], true, "{v}");
    assert_eq!(v["messages"], 10, "{v}");
    assert_eq!(v["latency_us"]["samples"], 10, "{v}");
    assert!(v["elapsed_secs"].is_f64(), "{v}");
    assert!(v["cpu_percent"].is_f64(), "{v}");
    assert!(v["drain"]["fanout_secs"].is_null(), "{v}");
    assert!(v["drain"]["last_close_secs"].is_f64(), "{v}");
}

#[test]
fn human_summary_shows_every_section() {
    let addr = start_server(echo).to_string();
    let out = echo_load(&["-c", "2", "-n", "50", &addr]);
    assert_exit(&out, 0);
    let text = stdout(&out);
    for section in [
        "messages",
        "throughput",
        "latency",
        "errors",
        "drain",
        "cpu",
        "clean",
    ] {
        assert!(text.contains(section), "no {section} in:\n{text}");
    }
}

/// Usage errors: one line on stderr naming the problem, exit 2.
#[track_caller]
fn assert_usage_error(args: &[&str], mentions: &str) {
    let out = echo_load(args);
    assert_exit(&out, 2);
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "not one line: {err:?}");
    assert!(err.starts_with("echo-load: "), "{err:?}");
    assert!(
        err.contains(mentions),
        "{err:?} does not mention {mentions}"
    );
    assert!(
        err.trim_end().ends_with("(see echo-load --help)"),
        "{err:?} gives no hint"
    );
    assert!(out.stdout.is_empty(), "usage error printed to stdout");
}

#[test]
fn non_numeric_connections_is_a_usage_error() {
    assert_usage_error(&["-c", "abc"], "abc");
}

#[test]
fn unknown_flag_is_a_usage_error() {
    assert_usage_error(&["--bogus"], "--bogus");
}

#[test]
fn message_containing_the_notice_is_a_usage_error() {
    assert_usage_error(&["-m", "xxSHUTDOWNxx"], "--message");
    assert_usage_error(&["-m", "bye", "--shutdown-message", "y"], "--message");
}

#[test]
fn zero_connections_and_conflicting_stops_are_usage_errors() {
    assert_usage_error(&["-c", "0"], "--connections");
    assert_usage_error(&["-d", "1", "-n", "5"], "--messages");
    assert_usage_error(&["-d", "-1"], "--duration");
}

#[test]
fn out_of_range_values_are_usage_errors_not_aborts() {
    // Issue #8: each of these aborted echo-load (exit 134: a panic on an
    // Instant or Duration overflow, or an allocation that cannot succeed).
    // A refused address, so that a value wrongly accepted ends the run fast.
    let refused = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("find a free port")
        .to_string();
    for (flag, value) in [
        ("-d", "1e19"),
        ("--warmup", "1e19"),
        ("--connect-timeout", "1e19"),
        ("-r", "1e-300"),
        ("-r", "5e-324"),
        ("-p", "18446744073709551615"),
        ("-p", "1000000000000"),
        ("-c", "18446744073709551615"),
        ("-c", "100000000000"),
    ] {
        let long = match flag {
            "-d" => "--duration",
            "-r" => "--rate",
            "-p" => "--pipeline",
            "-c" => "--connections",
            other => other,
        };
        assert_usage_error(&[flag, value, &refused], &format!("{long} \"{value}\""));
    }
}

#[test]
fn help_and_version_exit_0() {
    let help = echo_load(&["--help"]);
    assert_exit(&help, 0);
    assert!(stdout(&help).contains("Exit status"));
    let version = echo_load(&["--version"]);
    assert_exit(&version, 0);
    assert!(stdout(&version).starts_with("echo-load "));
}
