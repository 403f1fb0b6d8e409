//! The command line as an operator meets it (SPEC "Command line"): usage
//! errors, start-up failures, `--help`/`--version`, the pid file, repeated
//! and IPv6 listeners, log levels and the shape of log lines.

mod common;

use std::io::Read;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// What a run of echod that is expected to exit by itself left behind.
struct Outcome {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Outcome {
    /// The stderr lines, without the trailing empty one.
    fn stderr_lines(&self) -> Vec<&str> {
        self.stderr.lines().collect()
    }
}

/// Runs echod with exactly `args` and waits (with a limit) for it to exit on
/// its own. A child still running at the limit is killed and the test fails.
#[track_caller]
fn run_to_exit(args: &[&str]) -> Outcome {
    run_to_exit_with_stdout(args, Stdio::piped())
}

/// [`run_to_exit`] with stdout going to `stdout` (captured only when piped).
#[track_caller]
fn run_to_exit_with_stdout(args: &[&str], stdout: Stdio) -> Outcome {
    let mut child = Command::new(env!("CARGO_BIN_EXE_echod"))
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn echod");
    // Readers on threads, so a chatty child never blocks on a full pipe.
    let out = child.stdout.take();
    let mut err = child.stderr.take().expect("stderr piped");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(mut out) = out {
            let _ = out.read_to_string(&mut s);
        }
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = err.join().unwrap_or_default();
            panic!("echod {args:?} did not exit within {LIMIT:?}\nstderr:\n{stderr}");
        }
        // Polling the exit status; there is no portable exit event to block on.
        std::thread::sleep(Duration::from_millis(10));
    };
    Outcome {
        status,
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
    }
}

/// A path under the temp dir that no other test (or run) uses.
fn unique_temp_path(name: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    std::env::temp_dir().join(format!("echod-test-{}-{nanos}-{name}", std::process::id()))
}

#[test]
fn every_kind_of_bad_argument_exits_2_with_one_line_naming_the_flag() {
    let cases: &[(&[&str], &str)] = &[
        (&["--bogus"], "--bogus"),
        (&["--drain-timeout", "-1"], "--drain-timeout"),
        (&["--drain-timeout", "abc"], "--drain-timeout"),
        (&["--max-connections", "0"], "--max-connections"),
        (&["--max-pending", "12Q"], "--max-pending"),
        (&["--listen", "nonsense"], "--listen"),
        (&["--listen"], "--listen"),
        (&["--max-pending"], "--max-pending"),
    ];
    for (args, flag) in cases {
        let outcome = run_to_exit(args);
        let lines = outcome.stderr_lines();
        assert_eq!(
            outcome.status.code(),
            Some(2),
            "{args:?}: exit status; stderr:\n{}",
            outcome.stderr
        );
        assert_eq!(
            lines.len(),
            1,
            "{args:?}: stderr must be one line:\n{}",
            outcome.stderr
        );
        assert!(
            lines[0].starts_with("echod: "),
            "{args:?}: {:?} lacks the `echod: ` prefix",
            lines[0]
        );
        assert!(
            lines[0].contains(flag),
            "{args:?}: {:?} does not name {flag}",
            lines[0]
        );
        for bad in ["panicked", "RUST_BACKTRACE", "backtrace"] {
            assert!(
                !outcome.stderr.contains(bad),
                "{args:?}: stderr mentions {bad:?}:\n{}",
                outcome.stderr
            );
        }
        assert!(
            outcome.stdout.is_empty(),
            "{args:?}: usage errors go to stderr, stdout had {:?}",
            outcome.stdout
        );
    }
}

#[test]
fn address_in_use_exits_1_with_one_line_naming_the_address() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind a port for the test");
    let addr = taken.local_addr().expect("local addr");
    let outcome = run_to_exit(&["--listen", &addr.to_string()]);
    assert_eq!(
        outcome.status.code(),
        Some(1),
        "exit status; stderr:\n{}",
        outcome.stderr
    );
    assert_eq!(
        outcome.stderr_lines(),
        vec![format!("echod: cannot listen on {addr}: address in use").as_str()],
        "stderr must be exactly the one error line"
    );
    drop(taken);
}

#[test]
fn help_lists_every_option_and_exits_0() {
    let outcome = run_to_exit(&["--help"]);
    assert_eq!(
        outcome.status.code(),
        Some(0),
        "stderr:\n{}",
        outcome.stderr
    );
    assert!(
        outcome.stdout.contains("Usage: echod"),
        "no usage line in:\n{}",
        outcome.stdout
    );
    for option in [
        "--listen",
        "--drain-timeout",
        "--shutdown-message",
        "--max-connections",
        "--max-pending",
        "--backlog",
        "--reuse-port",
        "--pid-file",
        "--log-level",
        "--help",
        "--version",
    ] {
        assert!(
            outcome.stdout.contains(option),
            "--help does not list {option}:\n{}",
            outcome.stdout
        );
    }
    assert!(
        outcome.stderr.is_empty(),
        "--help wrote to stderr: {}",
        outcome.stderr
    );
}

#[test]
fn version_prints_name_and_semver_and_exits_0() {
    let outcome = run_to_exit(&["--version"]);
    assert_eq!(
        outcome.status.code(),
        Some(0),
        "stderr:\n{}",
        outcome.stderr
    );
    let lines: Vec<&str> = outcome.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one line expected: {:?}", outcome.stdout);
    let version = lines[0]
        .strip_prefix("echod ")
        .unwrap_or_else(|| panic!("{:?} does not start with `echod `", lines[0]));
    let parts: Vec<&str> = version.split('.').collect();
    assert!(
        parts.len() == 3 && parts.iter().all(|p| p.parse::<u32>().is_ok()),
        "{version:?} is not MAJOR.MINOR.PATCH"
    );
    assert_eq!(version, env!("CARGO_PKG_VERSION"));
}

#[test]
fn pid_file_holds_the_pid_while_running_and_is_removed_after_the_drain() {
    let path = unique_temp_path("echod.pid");
    let path_str = path.to_str().expect("utf-8 temp path").to_owned();
    let mut echod = Echod::spawn(&["--pid-file", &path_str]);
    // The pid file is written before the readiness line, so it is there now.
    let content = std::fs::read_to_string(&path).expect("read pid file");
    assert_eq!(content.trim(), echod.pid().to_string(), "pid file content");

    // Serving is unaffected by the pid file.
    let mut conn = echod.connect();
    assert_eq!(round_trip(&mut conn, b"pid"), b"pid");
    drop(conn);

    echod.signal(libc::SIGTERM);
    let status = echod.wait_exit(LIMIT);
    assert_eq!(status.code(), Some(0), "stderr:\n{}", echod.stderr());
    assert!(
        !path.exists(),
        "pid file {} still exists after exit",
        path.display()
    );
}

#[test]
fn pid_file_failure_is_reported_without_announcing_readiness() {
    // A directory that does not exist: the pid file cannot be written.
    let dir = unique_temp_path("no-such-dir");
    let path = dir.join("echod.pid");
    let path_str = path.to_str().expect("utf-8 temp path").to_owned();
    let outcome = run_to_exit(&["--listen", "127.0.0.1:0", "--pid-file", &path_str]);
    assert_eq!(
        outcome.status.code(),
        Some(1),
        "exit status; stderr:\n{}",
        outcome.stderr
    );
    // SPEC: errors are one clear line on stderr. A `listening on` line before
    // it would tell a supervisor (and Echod::spawn) that echod is ready
    // although it is about to exit.
    assert_eq!(
        outcome.stderr_lines(),
        vec![
            format!("echod: cannot write pid file {path_str}: no such file or directory").as_str()
        ],
        "stderr must be exactly the one error line"
    );
    assert!(!dir.exists());
}

#[test]
fn repeated_listen_opens_one_listener_per_address_and_both_echo() {
    let echod = Echod::spawn(&["--listen", "127.0.0.1:0", "--listen", "127.0.0.1:0"]);
    let addrs = echod.addrs().to_vec();
    assert_eq!(
        addrs.len(),
        2,
        "one `listening on` line per listener\nstderr:\n{}",
        echod.stderr()
    );
    assert_ne!(addrs[0].port(), addrs[1].port(), "two distinct ports");
    for (i, addr) in addrs.iter().enumerate() {
        let mut conn = connect(*addr);
        let data = random_bytes(1000, i as u64 + 1);
        assert_eq!(round_trip(&mut conn, &data), data, "echo via {addr}");
    }
}

#[test]
fn listen_on_ipv6_loopback_echoes() {
    match TcpListener::bind("[::1]:0") {
        Ok(probe) => drop(probe),
        Err(err) => {
            eprintln!("note: skipping, IPv6 loopback unavailable here: {err}");
            return;
        }
    }
    let echod = Echod::spawn(&["--listen", "[::1]:0"]);
    let addr = echod.addr();
    assert!(addr.is_ipv6(), "listening on {addr}");
    assert!(addr.ip().is_loopback());
    let mut conn = echod.connect();
    assert_eq!(round_trip(&mut conn, b"over v6"), b"over v6");
}

#[test]
fn log_level_debug_logs_connection_opened() {
    let mut echod = Echod::spawn(&["--log-level", "debug"]);
    let mut conn = echod.connect();
    let local = conn.local_addr().expect("local addr");
    // The round trip proves the connection was accepted, so its log line exists.
    assert_eq!(round_trip(&mut conn, b"x"), b"x");
    let line = echod.wait_for_line(&format!("connection opened: peer={local}"), LIMIT);
    assert!(line.contains("DEBUG"), "{line:?} is not at debug level");
}

#[test]
fn rust_log_debug_without_log_level_logs_connection_opened() {
    // Echod::spawn_command sets RUST_LOG=info on the command when the test
    // process has none, overriding a cmd.env(); `env` sets it after that.
    let mut cmd = Command::new("env");
    cmd.args([
        "RUST_LOG=debug",
        env!("CARGO_BIN_EXE_echod"),
        "--listen",
        "127.0.0.1:0",
        "--drain-timeout",
        "0.5",
    ]);
    let mut echod = Echod::spawn_command(cmd, 1);
    let mut conn = echod.connect();
    let local = conn.local_addr().expect("local addr");
    assert_eq!(round_trip(&mut conn, b"x"), b"x");
    let line = echod.wait_for_line(&format!("connection opened: peer={local}"), LIMIT);
    assert!(line.contains("DEBUG"), "{line:?} is not at debug level");
}

#[test]
fn log_lines_start_with_a_timestamp_and_the_listening_line_names_the_pid() {
    let mut echod = Echod::spawn(&[]);
    let line = echod.wait_for_line("listening on ", LIMIT);
    let year = &line.as_bytes()[..line.len().min(5)];
    assert!(
        year.len() == 5 && year[..4].iter().all(u8::is_ascii_digit) && year[4] == b'-',
        "{line:?} does not start with a YYYY- timestamp"
    );
    assert!(
        line.contains(&format!("listening on {} ", echod.addr())),
        "{line:?} lacks `listening on IP:PORT`"
    );
    assert!(
        line.split_whitespace()
            .any(|word| word == format!("pid={}", echod.pid())),
        "{line:?} lacks pid={}",
        echod.pid()
    );
    for seen in &echod.seen {
        assert!(
            seen.as_bytes().iter().take(4).all(u8::is_ascii_digit),
            "{seen:?} does not start with a year"
        );
    }
}

/// Issue #8: `echod --help >/dev/full` printed nothing and exited 0.
#[test]
fn help_or_version_to_a_full_stdout_exits_1_with_one_line() {
    for flag in ["--help", "--version"] {
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .expect("open /dev/full");
        let outcome = run_to_exit_with_stdout(&[flag], Stdio::from(full));
        assert_eq!(outcome.status.code(), Some(1), "{flag}: {}", outcome.stderr);
        assert_eq!(
            outcome.stderr_lines(),
            ["echod: cannot write to stdout: no space left on device"],
            "{flag}"
        );
    }
}

/// Issue #8: `--log-level warn` hid the line scripts wait for.
#[test]
fn log_level_off_still_prints_the_readiness_line_and_nothing_else() {
    let mut echod = Echod::spawn(&["--log-level", "off"]);
    let mut conn = echod.connect();
    assert_eq!(round_trip(&mut conn, b"x"), b"x");
    drop(conn);
    echod.signal(libc::SIGTERM);
    let status = echod.wait_exit(LIMIT);
    assert_eq!(status.code(), Some(0), "{}", echod.stderr());
    assert_eq!(echod.seen.len(), 1, "{}", echod.stderr());
}

#[test]
fn rust_log_off_still_prints_the_readiness_line() {
    // Echod::spawn_command sets RUST_LOG=info on the command when the test
    // process has none, overriding a cmd.env(); `env` sets it after that.
    let mut cmd = Command::new("env");
    cmd.args([
        "RUST_LOG=off",
        env!("CARGO_BIN_EXE_echod"),
        "--listen",
        "127.0.0.1:0",
    ]);
    let echod = Echod::spawn_command(cmd, 1);
    assert_ne!(echod.addr().port(), 0);
}

#[test]
fn log_timestamps_off_starts_lines_with_the_level() {
    let mut echod = Echod::spawn(&["--log-timestamps", "off"]);
    let line = echod.wait_for_line("listening on ", LIMIT);
    assert!(line.starts_with("INFO  [echod] listening on "), "{line:?}");
}
