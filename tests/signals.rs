//! Real signals to a real echod (docs/protocol.md "Draining" 6, "Operations"): each of
//! the four drains, also for a background instance started by a shell; a
//! second forces; a third exits from the handler even with the loop stuck;
//! SIGUSR1 reports and disturbs nothing.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn drains_on(sig: i32, name: &str) {
    let mut echod = Echod::spawn(&["--drain-timeout", "30"]);
    let mut client = echod.connect();
    assert_eq!(round_trip(&mut client, b"hello"), b"hello");
    echod.signal(sig);
    assert_eq!(read_to_eof(&mut client), b"SHUTDOWN", "{}", echod.stderr());
    let line = echod.wait_for_line("drain started", LIMIT);
    assert!(line.contains(&format!("reason={name}")), "{line}");
    assert!(line.contains("connections=1"), "{line}");
    drop(client);
    let status = echod.wait_exit(LIMIT);
    assert_eq!(status.code(), Some(0), "{}", echod.stderr());
}

#[test]
fn sighup_drains() {
    drains_on(libc::SIGHUP, "SIGHUP");
}

#[test]
fn sigint_drains() {
    drains_on(libc::SIGINT, "SIGINT");
}

#[test]
fn sigterm_drains() {
    drains_on(libc::SIGTERM, "SIGTERM");
}

#[test]
fn sigquit_drains_like_sigterm() {
    drains_on(libc::SIGQUIT, "SIGQUIT");
}

/// A non-interactive shell starts `cmd &` with SIGINT and SIGQUIT ignored;
/// echod must still drain on them.
fn background_instance_drains_on(sig: i32) {
    let script = format!(
        "'{}' --listen 127.0.0.1:0 --drain-timeout 30 & wait",
        env!("CARGO_BIN_EXE_echod")
    );
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(script);
    let mut shell = Echod::spawn_command(cmd, 1);
    let line = shell.wait_for_line("listening on", LIMIT);
    let pid: i32 = line
        .split("pid=")
        .nth(1)
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| shell.fail("no pid= in the listening line"));
    let mut client = shell.connect();
    assert_eq!(round_trip(&mut client, b"bg"), b"bg");
    // SAFETY: kill(2) on the background echod's PID, read from its own log.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
    assert_eq!(read_to_eof(&mut client), b"SHUTDOWN", "{}", shell.stderr());
    drop(client);
    // The shell's `wait` returns when echod exits.
    let status = shell.wait_exit(LIMIT);
    assert!(status.success(), "{status:?}\n{}", shell.stderr());
    shell.wait_for_line("drain finished", LIMIT);
}

#[test]
fn background_instance_started_by_a_shell_drains_on_sigint() {
    background_instance_drains_on(libc::SIGINT);
}

#[test]
fn background_instance_started_by_a_shell_drains_on_sigquit() {
    background_instance_drains_on(libc::SIGQUIT);
}

#[test]
fn second_signal_closes_everything_now() {
    let mut echod = Echod::spawn(&["--drain-timeout", "60"]);
    let mut client = echod.connect();
    assert_eq!(round_trip(&mut client, b"x"), b"x");
    echod.signal(libc::SIGTERM);
    echod.wait_for_line("drain started", LIMIT);
    // The client stays, so only the second signal can end this before 60 s.
    echod.signal(libc::SIGINT);
    let status = echod.wait_exit(LIMIT);
    assert_eq!(status.code(), Some(0), "{}", echod.stderr());
    let last = echod.wait_for_line("drain forced", LIMIT);
    assert!(last.contains("closed_forced=1"), "{last}");
    let mut rest = Vec::new();
    let _ = client.read_to_end(&mut rest);
    assert!(rest.starts_with(b"SHUTDOWN"), "{rest:?}");
}

/// Regression (issue #8): connections closed by a forced stop were counted
/// as `closed_at_deadline`, though no deadline had passed.
#[test]
fn connections_closed_by_a_forced_stop_are_not_counted_as_closed_at_the_deadline() {
    let mut echod = Echod::spawn(&["--drain-timeout", "60"]);
    let mut leaving = echod.connect();
    let mut staying = echod.connect();
    assert_eq!(round_trip(&mut leaving, b"a"), b"a");
    assert_eq!(round_trip(&mut staying, b"b"), b"b");
    echod.signal(libc::SIGTERM);
    assert_eq!(read_to_eof(&mut leaving), b"SHUTDOWN", "{}", echod.stderr());
    drop(leaving);
    // The close reaches echod's loop some time after drop(): ask again until
    // the statistics show it (a busy machine once took longer than one ask).
    let deadline = Instant::now() + LIMIT;
    loop {
        echod.signal(libc::SIGUSR1);
        let stats = echod.next_line_matching("stats: ", LIMIT);
        if stats.contains("connections=1 ") {
            break;
        }
        assert!(Instant::now() < deadline, "{stats}");
        std::thread::sleep(Duration::from_millis(10));
    }
    echod.signal(libc::SIGINT);
    assert_eq!(echod.wait_exit(LIMIT).code(), Some(0), "{}", echod.stderr());
    let last = echod.wait_for_line("drain forced", LIMIT);
    for want in ["left=1", "closed_at_deadline=0", "closed_forced=1"] {
        assert!(last.contains(want), "{last:?} lacks {want}");
    }
    assert_eq!(read_to_eof(&mut staying), b"SHUTDOWN");
}

#[test]
fn two_signals_at_once_still_force_the_exit() {
    // Sent back to back, signal-hook-mio may report them as one; the handler's
    // counter must not lose the second. The kernel itself merges a signal
    // sent while the same one is still pending, so wait until the first has
    // been delivered (no longer pending) before sending the second.
    let mut echod = Echod::spawn(&["--drain-timeout", "60"]);
    let mut client = echod.connect();
    assert_eq!(round_trip(&mut client, b"x"), b"x");
    echod.signal(libc::SIGTERM);
    let pid = echod.pid();
    wait_until(LIMIT, "SIGTERM to be delivered", || {
        !is_pending(pid, libc::SIGTERM)
    });
    echod.signal(libc::SIGTERM);
    let status = echod.wait_exit(LIMIT);
    assert_eq!(status.code(), Some(0), "{}", echod.stderr());
}

/// True while `sig` is pending for the process or its thread (`/proc/PID/status`).
fn is_pending(pid: i32, sig: i32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    let bit = 1u64 << (sig - 1);
    status
        .lines()
        .filter(|l| l.starts_with("SigPnd:") || l.starts_with("ShdPnd:"))
        .filter_map(|l| u64::from_str_radix(l.split_whitespace().nth(1)?, 16).ok())
        .any(|mask| mask & bit != 0)
}

/// Stops the child, sends it SIGHUP, SIGINT and SIGTERM, and lets it go on:
/// all three are delivered before its loop runs again, so the third is
/// handled by the handler itself, as when the loop is stuck.
fn three_signals_before_the_loop_can_look(pid: i32) {
    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    wait_until(LIMIT, "echod to stop", || is_stopped(pid));
    for sig in [libc::SIGHUP, libc::SIGINT, libc::SIGTERM] {
        // SAFETY: kill(2) on our own (stopped) child; the signals stay pending.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
    }
    wait_until(LIMIT, "the three signals to be pending", || {
        [libc::SIGHUP, libc::SIGINT, libc::SIGTERM]
            .iter()
            .all(|&sig| is_pending(pid, sig))
    });
    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
}

/// True while the process is stopped (state `T` in `/proc/PID/stat`).
fn is_stopped(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let rest = &stat[stat.rfind(')')? + 1..];
            rest.split_whitespace().next().map(|state| state == "T")
        })
        .unwrap_or(false)
}

#[test]
fn third_signal_exits_from_the_handler_and_says_so() {
    let mut echod = Echod::spawn(&["--drain-timeout", "60"]);
    let mut client = echod.connect();
    assert_eq!(round_trip(&mut client, b"x"), b"x");
    three_signals_before_the_loop_can_look(echod.pid());
    let status = echod.wait_exit(LIMIT);
    assert_eq!(status.code(), Some(0), "{}", echod.stderr());
    echod.wait_for_line("third signal: exiting now", LIMIT);
    // The loop never saw the signals: no drain, no notice.
    assert_eq!(read_to_eof(&mut client), b"", "{}", echod.stderr());
}

/// The third signal's handler removed the pid file whatever it held: after a
/// take-over (or a `--reuse-port` hand-over) sharing the path, the old
/// instance's handler removed the new instance's file. It now removes it
/// only if it still holds this process's PID (issue 13).
#[test]
fn third_signal_leaves_a_pid_file_that_names_another_process() {
    let pid_file =
        std::env::temp_dir().join(format!("echod-third-other-{}.pid", std::process::id()));
    let path = pid_file.to_str().expect("utf-8 path");
    let mut echod = Echod::spawn(&["--drain-timeout", "60", "--pid-file", path]);
    assert_eq!(
        std::fs::read_to_string(&pid_file).expect("pid file"),
        format!("{}\n", echod.pid())
    );
    // What a newer instance does: its own file renamed over the path.
    let newer = pid_file.with_extension("newer");
    std::fs::write(&newer, "4194301\n").expect("write the newer file");
    std::fs::rename(&newer, &pid_file).expect("rename over the path");
    three_signals_before_the_loop_can_look(echod.pid());
    assert_eq!(echod.wait_exit(LIMIT).code(), Some(0), "{}", echod.stderr());
    assert_eq!(
        std::fs::read_to_string(&pid_file).expect("the newer instance's pid file is still there"),
        "4194301\n"
    );
    let _ = std::fs::remove_file(&pid_file);
}

/// Issue #8 item 4: the handler wrote its message to stderr before
/// `_exit`; with stderr a full blocking pipe that write blocked and the
/// process ran on, its pid file already gone.
#[test]
fn third_signal_exits_even_with_stderr_a_full_blocking_pipe() {
    let mut pipe = StalledPipe::new();
    pipe.fill();
    let pid_file = std::env::temp_dir().join(format!("echod-stuck-{}.pid", std::process::id()));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_echod"));
    cmd.args(["--listen", "127.0.0.1:0", "--drain-timeout", "60"])
        .arg("--pid-file")
        .arg(&pid_file)
        .stderr(pipe.writer());
    let mut echod = Unwatched::spawn_command(cmd);
    let mut client = echod.connect();
    // The full stderr does not stop the loop either (issue #8 item 3).
    assert_eq!(round_trip(&mut client, b"x"), b"x");
    assert_eq!(pipe.queued(), 4096, "the pipe is not full");
    three_signals_before_the_loop_can_look(echod.pid());
    let status = echod.wait_exit(LIMIT);
    assert_eq!(status.code(), Some(0), "exit status after the third signal");
    assert!(!pid_file.exists(), "the handler removes the pid file");
    assert_eq!(read_to_eof(&mut client), b"", "the loop saw the signals");
}

#[test]
fn sigusr1_logs_statistics_and_changes_nothing() {
    let mut echod = Echod::spawn(&[]);
    let mut client = echod.connect();
    assert_eq!(round_trip(&mut client, b"12345"), b"12345");
    echod.signal(libc::SIGUSR1);
    let line = echod.wait_for_line("stats:", LIMIT);
    for field in [
        "state=running",
        "connections=1",
        "accepted=1",
        "bytes_echoed=5",
        "uptime=",
    ] {
        assert!(line.contains(field), "{field} missing from {line}");
    }
    // Still serving, still accepting, not draining.
    assert_eq!(round_trip(&mut client, b"again"), b"again");
    let mut other = echod.connect();
    assert_eq!(round_trip(&mut other, b"new"), b"new");
    assert!(
        !echod.seen.iter().any(|l| l.contains("drain")),
        "{}",
        echod.stderr()
    );
}

#[test]
fn a_log_reader_that_went_away_does_not_kill_the_server() {
    // `echod 2>&1 | head -1`: once the reader exits, every log line would be
    // a write to a broken pipe. Regression: the SIGUSR1 line used to abort echod.
    let mut child = Command::new(env!("CARGO_BIN_EXE_echod"))
        .args(["--listen", "127.0.0.1:0", "--drain-timeout", "30"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn echod");
    let stderr = child.stderr.take().expect("piped");
    let mut first = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stderr), &mut first).unwrap();
    // The reader (and the pipe's only read end) is gone now.
    let addr = parse_listening(&first);
    let pid = child.id() as i32;
    let mut client = connect(addr);
    assert_eq!(round_trip(&mut client, b"one"), b"one");
    // SAFETY: kill(2) on our child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGUSR1) }, 0);
    assert_eq!(round_trip(&mut client, b"two"), b"two", "still serving");
    // SAFETY: kill(2) on our child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    assert_eq!(read_to_eof(&mut client), b"SHUTDOWN");
    drop(client);
    let Some(status) = wait_for_exit(&mut child, LIMIT) else {
        let _ = child.kill();
        panic!("echod did not exit within {LIMIT:?} of the third signal");
    };
    assert_eq!(status.code(), Some(0), "{status:?}");
}
