//! Logs and notifications are best effort (docs/protocol.md "Logs and
//! notifications are best effort"): a full log device, a log reader that
//! stalled and a service manager that does not read cost log lines and
//! datagrams, counted and reported once writing works again, never the
//! service or the drain. Regression tests for issue #8, items 2 and 3.

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::Command;

use common::*;

fn echod_command(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_echod"));
    cmd.args(["--listen", "127.0.0.1:0"]).args(args);
    cmd
}

/// A path under the temp dir that no other test (or run) uses.
fn unique_temp_path(name: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    std::env::temp_dir().join(format!("echod-{name}-{}-{nanos}", std::process::id()))
}

/// Issue #8 item 2: the first log line to `/dev/full` aborted echod (exit
/// 134) and left its pid file behind.
#[test]
fn a_full_log_device_neither_aborts_echod_nor_leaves_its_pid_file() {
    let pid_file = unique_temp_path("full.pid");
    let mut cmd = echod_command(&["--drain-timeout", "30", "--log-level", "debug"]);
    cmd.arg("--pid-file").arg(&pid_file);
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("open /dev/full");
    cmd.stderr(full);
    let mut echod = Unwatched::spawn_command(cmd);
    let mut client = echod.connect();
    assert_eq!(round_trip(&mut client, b"hello"), b"hello");
    assert!(pid_file.exists(), "no pid file while serving");
    echod.signal(libc::SIGTERM);
    // The `drain started` line used to abort it here, notice unsent.
    assert_eq!(read_to_eof(&mut client), b"SHUTDOWN");
    drop(client);
    let status = echod.wait_exit(LIMIT);
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert!(!pid_file.exists(), "the pid file outlived echod");
}

/// Issue #8 item 3: with stderr a pipe whose reader stalled, echod blocked
/// in its next log write once the pipe was full: no echo, and SIGTERM did
/// nothing until the reader came back.
#[test]
fn a_stalled_log_reader_neither_stops_echo_nor_the_drain_and_hears_what_was_dropped() {
    let mut pipe = StalledPipe::new();
    let mut cmd = echod_command(&["--drain-timeout", "30", "--log-level", "debug"]);
    cmd.stderr(pipe.writer());
    let mut echod = Unwatched::spawn_command(cmd);
    // Each connection logs two debug lines of about 90 bytes: 200 of them
    // overflow the one-page pipe many times over.
    for i in 0..200u32 {
        let mut conn = echod.connect();
        let msg = i.to_be_bytes();
        assert_eq!(round_trip(&mut conn, &msg), msg, "connection {i}");
    }
    assert!(
        pipe.queued() > 3000,
        "the pipe holds only {} bytes: did echod log at all?",
        pipe.queued()
    );
    let mut client = echod.connect();
    assert_eq!(round_trip(&mut client, b"still here"), b"still here");
    echod.signal(libc::SIGTERM);
    assert_eq!(read_to_eof(&mut client), b"SHUTDOWN");
    // The client stays, so the drain goes on and counts down once a second;
    // the first countdown line that gets through tells what was dropped.
    let lines = pipe.start_reading();
    let mut seen = Vec::new();
    let report = next_line_containing(&lines, &mut seen, "log lines dropped: count=", LIMIT);
    let count: usize = report
        .trim_end()
        .rsplit("count=")
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {report:?}"));
    assert!(count >= 100, "only {count} lines dropped: {report:?}");
    next_line_containing(&lines, &mut seen, "drain countdown", LIMIT);
    drop(client);
    let status = echod.wait_exit(LIMIT);
    assert_eq!(status.code(), Some(0), "{status:?}\n{}", seen.concat());
    let last = next_line_containing(&lines, &mut seen, "drain finished", LIMIT);
    assert!(
        last.contains(&format!("log_lines_dropped={count}")),
        "{last:?} does not count the {count} dropped lines"
    );
    let reports = seen
        .iter()
        .filter(|l| l.contains("log lines dropped"))
        .count();
    assert_eq!(
        reports,
        1,
        "dropped lines reported more than once:\n{}",
        seen.concat()
    );
}

/// Issue #8 item 3: a `NOTIFY_SOCKET` nobody reads. Once its queue held
/// `net.unix.max_dgram_qlen` datagrams the blocking send froze the loop.
#[test]
fn a_notify_socket_nobody_reads_neither_freezes_nor_stops_echod() {
    let path = unique_temp_path("unread.sock");
    let manager = UnixDatagram::bind(&path).expect("bind the notify socket");
    // Fill its queue before echod starts, so even READY=1 finds it full.
    let filler = UnixDatagram::unbound().expect("socket");
    filler.set_nonblocking(true).expect("nonblocking");
    let mut queued = 0;
    while filler.send_to(b"STATUS=filler\n", &path).is_ok() {
        queued += 1;
        assert!(queued < 100_000, "the notify socket's queue never filled");
    }
    let mut cmd = echod_command(&["--drain-timeout", "30"]);
    cmd.env("NOTIFY_SOCKET", &path);
    let mut echod = Echod::spawn_command(cmd, 1);
    let mut client = echod.connect();
    assert_eq!(round_trip(&mut client, b"hello"), b"hello");
    echod.wait_for_line("cannot notify the service manager", LIMIT);
    echod.signal(libc::SIGTERM);
    assert_eq!(read_to_eof(&mut client), b"SHUTDOWN", "{}", echod.stderr());
    // The manager catches up: the next countdown status gets through and
    // echod says how many it dropped (at least READY and STOPPING).
    manager.set_nonblocking(true).expect("nonblocking");
    let mut buf = [0; 4096];
    while manager.recv(&mut buf).is_ok() {}
    let report = echod.wait_for_line("notifications dropped: count=", LIMIT);
    let count: usize = report
        .rsplit("count=")
        .next()
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| echod.fail(&format!("no count in {report:?}")));
    assert!(count >= 2, "{report:?}");
    let warnings = echod
        .seen
        .iter()
        .filter(|l| l.contains("cannot notify"))
        .count();
    assert_eq!(warnings, 1, "warned more than once:\n{}", echod.stderr());
    drop(client);
    let status = echod.wait_exit(LIMIT);
    assert_eq!(status.code(), Some(0), "{}", echod.stderr());
    drop(manager);
    let _ = std::fs::remove_file(&path);
}
