//! The command line as an operator meets it (docs/protocol.md "Command line"): usage
//! errors, start-up failures, `--help`/`--version`, the pid file, repeated
//! and IPv6 listeners, log levels and the shape of log lines.

mod common;

use std::io::Read;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};

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
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_echod"));
    cmd.args(args);
    run_command_to_exit(cmd, stdout)
}

/// Runs a prepared command (echod, or a shell that `exec`s it) as
/// [`run_to_exit`] does, with stdout going to `stdout`.
#[track_caller]
fn run_command_to_exit(mut cmd: Command, stdout: Stdio) -> Outcome {
    let args = format!("{cmd:?}");
    let mut child = cmd
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
    let Some(status) = wait_for_exit(&mut child, LIMIT) else {
        let _ = child.kill();
        let _ = child.wait();
        let stderr = err.join().unwrap_or_default();
        panic!("{args} did not exit within {LIMIT:?}\nstderr:\n{stderr}");
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

/// Regression (issue #8): values out of range or empty were refused with
/// the wrong reason (`--drain-timeout inf`: "must be zero or more seconds";
/// `--backlog 4294967296`: "expected a whole number"), refused as a start-up
/// failure (`--pid-file ''` exited 1), or accepted (an empty notice, which a
/// client cannot tell from a crash).
#[test]
fn out_of_range_and_empty_values_are_usage_errors_that_say_why() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["--drain-timeout", "inf"],
            r#"--drain-timeout "inf": is too large"#,
        ),
        (
            &["--drain-timeout", "1e400"],
            r#"--drain-timeout "1e400": is too large"#,
        ),
        (
            &["--max-pending", "99999999999999999999G"],
            r#"--max-pending "99999999999999999999G": is too large"#,
        ),
        (
            &["--backlog", "4294967296"],
            r#"--backlog "4294967296": is too large"#,
        ),
        (&["--pid-file", ""], r#"--pid-file "": must name a file"#),
        (
            &["--shutdown-message", ""],
            r#"--shutdown-message "": must not be empty"#,
        ),
    ];
    for (args, expected) in cases {
        let outcome = run_to_exit(args);
        assert_eq!(
            outcome.status.code(),
            Some(2),
            "{args:?}: exit status; stderr:\n{}",
            outcome.stderr
        );
        let lines = outcome.stderr_lines();
        assert_eq!(lines.len(), 1, "{args:?}: one line:\n{}", outcome.stderr);
        assert!(
            lines[0].starts_with(&format!("echod: {expected}")),
            "{args:?}: {:?} is not `echod: {expected}...`",
            lines[0]
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
        "--max-pending-total",
        "--backlog",
        "--reuse-port",
        "--handover-socket",
        "--take-over",
        "--pid-file",
        "--log-level",
        "--udp",
        "--udp-max-rate",
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
    // docs/protocol.md "Command line": errors are one clear line on stderr. A `listening on` line before
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

/// A fresh, empty directory under the temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = unique_temp_path(name);
        std::fs::create_dir(&dir).expect("create temp dir");
        TempDir(dir)
    }

    /// The names in the directory, sorted.
    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.0)
            .expect("read temp dir")
            .map(|e| {
                e.expect("dir entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        names.sort();
        names
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Regression (issue #8): the pid file was written with a plain truncating
/// write into whatever file was at the path. It is now a new file renamed
/// over the path, so a reader never sees it empty or half written: a hard
/// link to the old file keeps the old content, and no temporary is left.
#[test]
fn pid_file_is_replaced_by_rename_not_rewritten_in_place() {
    let dir = TempDir::new("pid-atomic");
    let path = dir.0.join("echod.pid");
    let old = dir.0.join("old-link");
    std::fs::write(&path, "999999999\nstale\n").expect("write a stale pid file");
    std::fs::hard_link(&path, &old).expect("hard link");
    let mut echod = Echod::spawn(&["--pid-file", path.to_str().expect("utf-8 path")]);
    let content = std::fs::read_to_string(&path).expect("read pid file");
    assert_eq!(content, format!("{}\n", echod.pid()), "pid file content");
    assert_eq!(
        std::fs::read_to_string(&old).expect("read old link"),
        "999999999\nstale\n",
        "the old file was rewritten in place"
    );
    assert_eq!(
        dir.names(),
        ["echod.pid", "old-link"],
        "a temporary file was left"
    );
    echod.signal(libc::SIGTERM);
    assert_eq!(echod.wait_exit(LIMIT).code(), Some(0), "{}", echod.stderr());
    assert_eq!(dir.names(), ["old-link"], "the pid file was not removed");
}

/// Regression (issue #8): a symlink at the pid file's path was followed and
/// the file it points to truncated and overwritten. `rename` replaces the
/// symlink itself.
#[test]
fn pid_file_never_writes_through_a_symlink_at_its_path() {
    let dir = TempDir::new("pid-symlink");
    let path = dir.0.join("echod.pid");
    let victim = dir.0.join("precious");
    std::fs::write(&victim, "precious data\n").expect("write victim");
    std::os::unix::fs::symlink(&victim, &path).expect("symlink");
    let mut echod = Echod::spawn(&["--pid-file", path.to_str().expect("utf-8 path")]);
    let meta = std::fs::symlink_metadata(&path).expect("pid file metadata");
    assert!(
        meta.file_type().is_file(),
        "the pid file is not a regular file: {meta:?}"
    );
    let content = std::fs::read_to_string(&path).expect("read pid file");
    assert_eq!(content.trim(), echod.pid().to_string());
    assert_eq!(
        std::fs::read_to_string(&victim).expect("read victim"),
        "precious data\n",
        "the symlink's target was written"
    );
    echod.signal(libc::SIGTERM);
    assert_eq!(echod.wait_exit(LIMIT).code(), Some(0), "{}", echod.stderr());
    assert_eq!(
        dir.names(),
        ["precious"],
        "pid file left, or the target removed"
    );
}

/// Regression (issue #8): at exit the pid file was removed even when a newer
/// instance had written its own PID there since: after a `--reuse-port`
/// hand-over on one path, the new instance was left without a pid file.
#[test]
fn an_instance_that_exits_leaves_a_newer_instances_pid_file_in_place() {
    let dir = TempDir::new("pid-handover");
    let path = dir.0.join("echod.pid");
    let path_str = path.to_str().expect("utf-8 path");
    let mut old = Echod::spawn(&["--reuse-port", "--pid-file", path_str]);
    let addr = old.addr().to_string();
    let mut new = Echod::spawn(&["--listen", &addr, "--reuse-port", "--pid-file", path_str]);
    let read_pid = || std::fs::read_to_string(&path).map(|s| s.trim().to_owned());
    assert_eq!(read_pid().expect("pid file"), new.pid().to_string());

    old.signal(libc::SIGTERM);
    assert_eq!(old.wait_exit(LIMIT).code(), Some(0), "{}", old.stderr());
    assert_eq!(
        read_pid().expect("the newer instance's pid file is still there"),
        new.pid().to_string()
    );

    new.signal(libc::SIGTERM);
    assert_eq!(new.wait_exit(LIMIT).code(), Some(0), "{}", new.stderr());
    assert!(dir.names().is_empty(), "left behind: {:?}", dir.names());
}

// ------------------------------------------- inherited sockets (LISTEN_FDS)

/// echod started as a service manager starts a socket-activated service:
/// `LISTEN_PID` and `LISTEN_FDS` as given (`self` for echod's own PID: a
/// shell that `exec`s keeps its PID, so its `$$` is echod's), and fd 3 made
/// a copy of `fd3`, or closed when `None`.
fn activated_command(listen_pid: &str, listen_fds: &str, fd3: Option<i32>) -> Command {
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"p="$1"; [ "$p" = self ] && p=$$; export LISTEN_PID="$p" LISTEN_FDS="$2"; shift 2; exec "$0" "$@""#)
        .arg(env!("CARGO_BIN_EXE_echod"))
        .args([listen_pid, listen_fds, "--listen", "127.0.0.1:0"])
        .env_remove("LISTEN_FDNAMES")
        .env_remove("NOTIFY_SOCKET");
    // SAFETY: runs in the child between fork and exec and only calls the
    // async-signal-safe close, dup2 and fcntl on descriptors it owns.
    unsafe {
        cmd.pre_exec(move || {
            let ok = match fd3 {
                // Whatever fd 3 was in the test process (a jobserver pipe,
                // say), the service manager passed nothing there.
                None => {
                    libc::close(3) == 0
                        || std::io::Error::last_os_error().raw_os_error() == Some(libc::EBADF)
                }
                // dup2 onto itself would keep FD_CLOEXEC; clear it by hand.
                Some(3) => libc::fcntl(3, libc::F_SETFD, 0) != -1,
                // dup2's new descriptor never has FD_CLOEXEC.
                Some(fd) => libc::dup2(fd, 3) != -1,
            };
            if ok {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    cmd
}

/// Runs an activated echod that must refuse to start, and returns its one
/// stderr line.
#[track_caller]
fn refused_activation(cmd: Command) -> String {
    let outcome = run_command_to_exit(cmd, Stdio::piped());
    assert_eq!(
        outcome.status.code(),
        Some(1),
        "exit status; stderr:\n{}",
        outcome.stderr
    );
    let lines = outcome.stderr_lines();
    assert_eq!(lines.len(), 1, "one line:\n{}", outcome.stderr);
    lines[0].to_owned()
}

/// Regression (issue #8): a malformed `LISTEN_PID` was reported as
/// `LISTEN_FDS: invalid LISTEN_PID`, naming the wrong variable first.
#[test]
fn a_malformed_listen_pid_is_named_as_such() {
    let line = refused_activation(activated_command("abc", "1", None));
    assert_eq!(
        line,
        r#"echod: cannot use inherited sockets: LISTEN_PID "abc": expected a process ID"#
    );
}

#[test]
fn a_malformed_listen_fds_is_named_as_such() {
    let line = refused_activation(activated_command("self", "one", None));
    assert_eq!(
        line,
        r#"echod: cannot use inherited sockets: LISTEN_FDS "one": expected a number of descriptors"#
    );
}

/// Regression (issue #8): with fd 3 closed, echod's own signal pipe took
/// fd 3 and the error said `fd 3 is not a listening TCP socket`; with more
/// descriptors announced than passed it said `LISTEN_FDS: Bad file
/// descriptor (os error 9)`. The descriptors are now checked before echod
/// opens any, and the line says which one is missing.
#[test]
fn a_missing_inherited_descriptor_is_reported_as_not_open() {
    let line = refused_activation(activated_command("self", "1", None));
    assert_eq!(
        line,
        "echod: cannot use inherited sockets: fd 3 is not open (LISTEN_FDS=1)"
    );
}

/// Regression (issue #8): a listening Unix socket at fd 3 gave `invalid
/// argument`.
#[test]
fn an_inherited_unix_socket_is_reported_as_not_tcp() {
    let path = unique_temp_path("activation.sock");
    let unix = std::os::unix::net::UnixListener::bind(&path).expect("bind a Unix socket");
    let line = refused_activation(activated_command(
        "self",
        "1",
        Some(std::os::fd::AsRawFd::as_raw_fd(&unix)),
    ));
    let _ = std::fs::remove_file(&path);
    assert_eq!(
        line,
        "echod: cannot use inherited sockets: fd 3 is a Unix socket, not a TCP socket"
    );
}

#[test]
fn an_inherited_tcp_socket_that_is_not_listening_is_refused() {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    let line = refused_activation(activated_command(
        "self",
        "1",
        Some(std::os::fd::AsRawFd::as_raw_fd(&socket)),
    ));
    assert_eq!(
        line,
        "echod: cannot use inherited sockets: fd 3 is a TCP socket that is not listening"
    );
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
