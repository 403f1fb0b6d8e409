//! Integration tests for `echo-load --udp`: the real binary on real
//! loopback sockets, against peers with known behaviour: the scripted
//! reflector (`tests/support/reflector.py`, which drops, duplicates,
//! holds back and delays replies by arrival index, so the figures are
//! exact) and xinetd's internal echo (`tests/support/xinetd_echo.py`), a
//! third-party RFC 862 server.
//!
//! Each test starts its own peer and waits for its `listening on IP:PORT`
//! line; nothing sleeps. The reflector needs `python3`; the xinetd tests
//! skip, saying so, when xinetd is not installed.

use std::io::{BufRead, BufReader, Read};
use std::net::UdpSocket;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard, mpsc};
use std::thread;
use std::time::Duration;

use serde_json::Value;

/// Safety net for one echo-load run; the longest takes about 8 s.
const RUN_LIMIT: Duration = Duration::from_secs(120);

/// Safety net for a peer to say it is listening (xinetd's own readiness
/// probe is allowed 10 s).
const READY_LIMIT: Duration = Duration::from_secs(30);

/// Taken shared by every test that sends datagrams, and exclusively by the
/// xinetd tests: xinetd discards every datagram queued behind a reply, so
/// a sender delayed by a busy CPU (then catching up with a burst, as an
/// open loop must) loses datagrams to it. Alone, they lose about one in a
/// thousand.
static CPU: RwLock<()> = RwLock::new(());

fn cpu_shared() -> RwLockReadGuard<'static, ()> {
    CPU.read().unwrap_or_else(PoisonError::into_inner)
}

fn cpu_alone() -> RwLockWriteGuard<'static, ()> {
    CPU.write().unwrap_or_else(PoisonError::into_inner)
}

/// `tests/support/` at the repository root.
fn support(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/support")
        .join(file)
}

/// A peer process (the reflector or xinetd's runner), stopped and reaped
/// on drop so a failed assertion leaves no orphan.
struct Peer {
    /// `None` once stopped.
    child: Option<Child>,
    /// The address from its `listening on` line.
    addr: String,
    /// Everything it writes on stderr, once it has exited.
    stderr: Option<thread::JoinHandle<String>>,
}

/// Why a peer did not start.
enum NotStarted {
    /// The runner said the server is not installed (exit status 3).
    Missing(String),
}

impl Peer {
    /// Starts `python3 tests/support/<script> <args>` and waits for its
    /// `listening on IP:PORT` line.
    #[track_caller]
    fn spawn(script: &str, args: &[&str]) -> Result<Peer, NotStarted> {
        let mut child = Command::new("python3")
            .arg(support(script))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run python3 {script} (python3 is needed): {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let mut stderr = child.stderr.take().expect("piped stderr");
        let stderr = thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.strip_prefix("listening on ") {
                    let _ = tx.send(addr.to_string());
                }
            }
        });
        let mut peer = Peer {
            child: Some(child),
            addr: String::new(),
            stderr: Some(stderr),
        };
        match rx.recv_timeout(READY_LIMIT) {
            Ok(addr) => {
                peer.addr = addr;
                Ok(peer)
            }
            Err(_) => {
                let status = peer.terminate();
                let err = peer.take_stderr();
                if status.and_then(|s| s.code()) == Some(3) {
                    return Err(NotStarted::Missing(err));
                }
                panic!("{script} {args:?} did not say it was listening ({status:?}):\n{err}");
            }
        }
    }

    /// Starts the reflector with `args` on 127.0.0.1.
    #[track_caller]
    fn reflector(args: &[&str]) -> Peer {
        match Peer::spawn("reflector.py", args) {
            Ok(peer) => peer,
            Err(NotStarted::Missing(err)) => panic!("reflector.py did not start: {err}"),
        }
    }

    /// Ends the peer with SIGTERM and returns what it wrote on stderr (the
    /// reflector's summary line).
    #[track_caller]
    fn stop(mut self) -> String {
        self.terminate();
        self.take_stderr()
    }

    /// Sends SIGTERM, so the xinetd runner stops xinetd too (SIGKILL would
    /// leave xinetd running, orphaned), and reaps the peer; SIGKILL only
    /// if it has not exited within the limit. Its exit status, once.
    fn terminate(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let pid = child.id().to_string();
        let _ = Command::new("kill").arg(&pid).status();
        let (tx, rx) = mpsc::channel();
        let waiter = thread::spawn(move || {
            let status = child.wait();
            let _ = tx.send(());
            status
        });
        if rx.recv_timeout(READY_LIMIT).is_err() {
            let _ = Command::new("kill").args(["-9", &pid]).status();
        }
        waiter.join().ok()?.ok()
    }

    fn take_stderr(&mut self) -> String {
        self.stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.terminate();
    }
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

/// `echo-load --udp --json` with `args` then `addr`: its exit code and JSON.
#[track_caller]
fn udp(args: &[&str], addr: &str) -> (Option<i32>, Value) {
    let mut all = vec!["--udp", "--json"];
    all.extend(args);
    all.push(addr);
    let out = echo_load(&all);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.trim_end().lines().count(),
        1,
        "not one line ({}): {text}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("invalid JSON ({e}): {text}"));
    (out.status.code(), v)
}

/// A count field: a whole number.
#[track_caller]
fn count(v: &Value) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("not a whole number: {v}"))
}

/// A number field.
#[track_caller]
fn number(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// The arguments of a 1000-datagram run at 500 a second, replies awaited
/// 0.5 s after the last send. At this rate the reflector's receive buffer
/// (about 270 datagrams of 64 bytes by default) rides out half a second of
/// a busy machine not running it.
const N1000: [&str; 6] = ["-n", "1000", "-r", "500", "--reply-timeout", "0.5"];

/// The reflector's stop summary says it received every datagram, so any
/// loss was its own doing, not the kernel's (a full receive buffer).
#[track_caller]
fn assert_reflector_received(peer: Peer, n: u64, v: &Value) {
    let summary = peer.stop();
    assert!(
        summary.contains(&format!("received={n} ")),
        "the reflector did not receive all {n} datagrams: {summary}\nreport: {v}"
    );
}

#[test]
fn drop_every_tenth_loses_exactly_100_of_1000_and_exits_1() {
    let _cpu = cpu_shared();
    let peer = Peer::reflector(&["--drop-every", "10"]);
    let (code, v) = udp(&N1000, &peer.addr);
    assert_eq!(code, Some(1), "{v}");
    assert_eq!(v["sent"], 1000, "{v}");
    assert_eq!(v["answered"], 900, "{v}");
    assert_eq!(v["lost"], 100, "{v}");
    assert_eq!(v["loss_fraction"], 0.1, "{v}");
    assert_eq!(v["duplicates"], 0, "{v}");
    assert_eq!(v["reordered"], 0, "{v}");
    assert_eq!(v["mismatches"]["total"], 0, "{v}");
    assert_eq!(v["clean"], false, "{v}");
    assert_reflector_received(peer, 1000, &v);
}

#[test]
fn max_loss_accepts_the_same_lossy_path_with_exit_0() {
    let _cpu = cpu_shared();
    let peer = Peer::reflector(&["--drop-every", "10"]);
    let mut args = N1000.to_vec();
    args.extend(["--max-loss", "0.1"]);
    let (code, v) = udp(&args, &peer.addr);
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(v["lost"], 100, "{v}");
    assert_eq!(v["max_loss"], 0.1, "{v}");
    assert_eq!(v["clean"], true, "{v}");
    assert_reflector_received(peer, 1000, &v);
}

#[test]
fn duplicates_are_counted_exactly_beside_the_loss() {
    let _cpu = cpu_shared();
    // Duplicated: i % 7 == 0 and not dropped (i % 10 != 0), i = 1..=1000:
    // 142 multiples of 7, less the 14 multiples of 70.
    let peer = Peer::reflector(&["--duplicate-every", "7", "--drop-every", "10"]);
    let (code, v) = udp(&N1000, &peer.addr);
    assert_eq!(code, Some(1), "{v}");
    assert_eq!(v["duplicates"], 128, "{v}");
    assert_eq!(v["lost"], 100, "{v}");
    assert_eq!(v["received"], 900 + 128, "{v}");
    assert_eq!(v["reordered"], 0, "{v}");
    assert_reflector_received(peer, 1000, &v);
}

#[test]
fn held_replies_count_as_reordered_with_their_distance_and_exit_0() {
    let _cpu = cpu_shared();
    // Every 7th reply leaves after the next 3: 142 reordered, distance 3.
    // The last one held (994) is released by 997, inside the run.
    let peer = Peer::reflector(&["--hold-every", "7", "--hold-for", "3"]);
    let (code, v) = udp(&N1000, &peer.addr);
    assert_eq!(code, Some(0), "reordering alone is clean: {v}");
    assert_eq!(v["reordered"], 142, "{v}");
    assert_eq!(v["reorder_max_distance"], 3, "{v}");
    assert_eq!(v["lost"], 0, "{v}");
    assert_eq!(v["duplicates"], 0, "{v}");
    assert_reflector_received(peer, 1000, &v);
}

#[test]
fn alternating_delays_show_as_jitter_near_their_difference() {
    let _cpu = cpu_shared();
    // Every other reply 4 ms later, one datagram every 10 ms so none
    // overtakes: RFC 3550's J converges to 4 ms. The band is wide because
    // the reflector's timers run on a loaded machine, where a held-up
    // sender also makes replies overtake each other (more jitter).
    let peer = Peer::reflector(&["--delay", "0,0.004"]);
    let args = ["-n", "200", "-r", "100", "--reply-timeout", "0.5"];
    let (code, v) = udp(&args, &peer.addr);
    assert_eq!(code, Some(0), "{v}");
    let mean = number(&v["jitter_us"]["mean"]);
    assert!((2_000.0..16_000.0).contains(&mean), "jitter {mean} µs: {v}");
    assert_eq!(
        v["jitter_us"]["max"], v["jitter_us"]["mean"],
        "one flow: {v}"
    );
    // No assert on reordering: a sender held up by a busy machine for more
    // than 6 ms sends two datagrams together, and the undelayed reply of
    // the second then overtakes the first's, which is real reordering.
    assert_reflector_received(peer, 200, &v);
}

#[test]
fn a_clean_reflector_answers_every_datagram_and_exits_0() {
    let _cpu = cpu_shared();
    let peer = Peer::reflector(&[]);
    let (code, v) = udp(&N1000, &peer.addr);
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(v["planned"], 1000, "{v}");
    assert_eq!(v["sent"], 1000, "{v}");
    assert_eq!(v["not_sent"], 0, "{v}");
    assert_eq!(v["received"], 1000, "{v}");
    assert_eq!(v["answered"], 1000, "{v}");
    assert_eq!(v["lost"], 0, "{v}");
    assert_eq!(v["rtt_us"]["samples"], 1000, "{v}");
    assert!(
        count(&v["rtt_us"]["p50"]) <= count(&v["rtt_us"]["max"]),
        "{v}"
    );
    assert_eq!(v["clean"], true, "{v}");
    assert_reflector_received(peer, 1000, &v);
}

#[test]
fn ipv6_loopback_is_measured_like_ipv4() {
    let _cpu = cpu_shared();
    let peer = Peer::reflector(&["--bind", "::1", "--drop-every", "10"]);
    assert!(peer.addr.starts_with("[::1]:"), "{}", peer.addr);
    let mut args = N1000.to_vec();
    args.extend(["-s", "200"]);
    let (code, v) = udp(&args, &peer.addr);
    assert_eq!(code, Some(1), "{v}");
    assert_eq!(v["lost"], 100, "{v}");
    assert_eq!(v["size"], 200, "{v}");
    assert_eq!(v["mismatches"]["total"], 0, "{v}");
    assert_reflector_received(peer, 1000, &v);
}

#[test]
fn several_flows_share_the_rate_and_the_loss_is_still_exact() {
    let _cpu = cpu_shared();
    // The reflector counts arrivals over all flows, which interleave in
    // send order: still every 10th datagram of the run dropped.
    let peer = Peer::reflector(&["--drop-every", "10"]);
    let mut args = N1000.to_vec();
    args.extend(["-c", "4"]);
    let (code, v) = udp(&args, &peer.addr);
    assert_eq!(code, Some(1), "{v}");
    assert_eq!(v["flows"], 4, "{v}");
    assert_eq!(v["lost"], 100, "{v}");
    assert_eq!(v["answered"], 900, "{v}");
    assert_reflector_received(peer, 1000, &v);
}

#[test]
fn the_largest_ipv4_datagrams_come_back_intact() {
    let _cpu = cpu_shared();
    let peer = Peer::reflector(&[]);
    let args = [
        "-n",
        "10",
        "-r",
        "50",
        "-s",
        "65507",
        "--reply-timeout",
        "0.5",
    ];
    let (code, v) = udp(&args, &peer.addr);
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(v["answered"], 10, "{v}");
    assert_eq!(v["mismatches"]["total"], 0, "{v}");
}

#[test]
fn a_port_nobody_listens_on_is_refused_and_everything_is_lost() {
    let _cpu = cpu_shared();
    // Bind then drop: the kernel answers with ICMP port unreachable.
    let addr = UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("find a free port")
        .to_string();
    let args = ["-n", "20", "-r", "100", "--reply-timeout", "0.3"];
    let (code, v) = udp(&args, &addr);
    assert_eq!(code, Some(1), "{v}");
    assert_eq!(v["answered"], 0, "{v}");
    assert_eq!(v["lost"], v["sent"], "{v}");
    assert!(count(&v["refused"]) > 0, "{v}");
}

/// Starts xinetd's UDP echo, or says why the test is skipped.
fn xinetd() -> Option<Peer> {
    match Peer::spawn("xinetd_echo.py", &[]) {
        Ok(peer) => Some(peer),
        Err(NotStarted::Missing(err)) => {
            eprintln!("skipping: xinetd is not installed ({})", err.trim());
            None
        }
    }
}

#[test]
fn xinetd_echoes_datagrams_up_to_2048_bytes() {
    let _alone = cpu_alone();
    // One xinetd per size, run side by side, slowly: xinetd discards what
    // queues behind a reply, and even one datagram at a time it loses
    // about one in a thousand, hence --max-loss. A busy machine that holds
    // up echo-load or xinetd longer than the interval between datagrams
    // makes them queue, and xinetd's discard then loses more by design, so
    // each size has three tries at a clean run; every try must still be
    // free of wrong and duplicated replies.
    let sizes = ["24", "1024", "2048"];
    let mut peers = Vec::new();
    for _ in sizes {
        let Some(peer) = xinetd() else { return };
        peers.push(peer);
    }
    let runs: Vec<_> = sizes
        .into_iter()
        .zip(&peers)
        .map(|(size, peer)| {
            let addr = peer.addr.clone();
            thread::spawn(move || {
                let args = ["-n", "100", "-r", "20", "-s", size, "--max-loss", "0.01"];
                let mut tries = Vec::new();
                while tries.len() < 3 {
                    let (code, v) = udp(&args, &addr);
                    tries.push(v);
                    if code == Some(0) {
                        break;
                    }
                }
                (size, tries)
            })
        })
        .collect();
    for run in runs {
        let (size, tries) = run.join().expect("an echo-load run");
        for v in &tries {
            assert_eq!(v["mismatches"]["total"], 0, "size {size}: {v}");
            assert_eq!(v["duplicates"], 0, "size {size}: {v}");
        }
        let clean = tries.iter().find(|v| v["clean"] == true);
        let Some(v) = clean else {
            panic!("size {size}: no clean run in three tries: {tries:#?}");
        };
        assert!(count(&v["answered"]) >= 99, "size {size}: {v}");
    }
}

#[test]
fn xinetd_truncates_4000_byte_datagrams_at_2048_and_that_exits_1() {
    let _alone = cpu_alone();
    let Some(peer) = xinetd() else { return };
    let args = ["-n", "20", "-r", "50", "-s", "4000", "--max-loss", "0.5"];
    let (code, v) = udp(&args, &peer.addr);
    assert_eq!(code, Some(1), "{v}");
    let answered = count(&v["answered"]);
    assert!(answered > 0, "{v}");
    assert_eq!(v["mismatches"]["truncated"], answered, "{v}");
    assert_eq!(v["mismatches"]["corrupt"], 0, "{v}");
    let out = echo_load(&["--udp", "-n", "5", "-r", "50", "-s", "4000", &peer.addr]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("truncated"), "{text}");
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

fn sorted<'a>(names: &[&'a str]) -> Vec<&'a str> {
    let mut names = names.to_vec();
    names.sort_unstable();
    names
}

#[test]
fn udp_json_holds_every_documented_field_and_no_other() {
    let _cpu = cpu_shared();
    let peer = Peer::reflector(&[]);
    let args = ["-n", "10", "-r", "100", "--reply-timeout", "0.3"];
    let (code, v) = udp(&args, &peer.addr);
    assert_eq!(code, Some(0), "{v}");
    let top = [
        "clean",
        "elapsed_secs",
        "sending_secs",
        "flows",
        "size",
        "rate",
        "sent_per_sec",
        "planned",
        "sent",
        "not_sent",
        "received",
        "answered",
        "lost",
        "loss_fraction",
        "max_loss",
        "duplicates",
        "reordered",
        "reorder_max_distance",
        "jitter_us",
        "rtt_us",
        "mismatches",
        "refused",
        "send_errors",
        "receive_errors",
        "send_lag_max_us",
        "local_drops",
        "cpu_user_secs",
        "cpu_sys_secs",
        "cpu_percent",
    ];
    assert_eq!(keys(&v), sorted(&top), "{v}");
    assert_eq!(keys(&v["jitter_us"]), sorted(&["mean", "max"]), "{v}");
    let rtt = ["min", "p50", "p90", "p99", "p999", "max", "samples"];
    assert_eq!(keys(&v["rtt_us"]), sorted(&rtt), "{v}");
    let mismatches = ["total", "truncated", "corrupt"];
    assert_eq!(keys(&v["mismatches"]), sorted(&mismatches), "{v}");
    // Types as documented.
    assert_eq!(v["clean"], true, "{v}");
    assert_eq!(v["planned"], 10, "{v}");
    assert_eq!(v["size"], 64, "{v}");
    assert_eq!(v["rate"], 100.0, "{v}");
    for field in [
        "elapsed_secs",
        "sending_secs",
        "loss_fraction",
        "cpu_percent",
    ] {
        assert!(v[field].is_f64(), "{field}: {v}");
    }
    assert!(number(&v["elapsed_secs"]) >= 0.3, "{v}");
    assert!(v["jitter_us"]["mean"].is_f64(), "{v}");
    assert_eq!(v["local_drops"], 0, "{v}");
}

#[test]
fn udp_human_summary_shows_every_section() {
    let _cpu = cpu_shared();
    let peer = Peer::reflector(&["--drop-every", "5"]);
    let out = echo_load(&[
        "--udp",
        "-n",
        "20",
        "-r",
        "100",
        "--reply-timeout",
        "0.3",
        &peer.addr,
    ]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    for section in [
        "datagrams",
        "replies",
        "loss",
        "duplicates",
        "reordering",
        "jitter",
        "rtt",
        "mismatches",
        "errors",
        "send lag",
        "cpu",
        "NOT CLEAN: 4 lost",
    ] {
        assert!(text.contains(section), "no {section} in:\n{text}");
    }
}

#[test]
fn udp_progress_prints_a_line_each_second() {
    let _cpu = cpu_shared();
    let peer = Peer::reflector(&[]);
    let out = echo_load(&[
        "--udp",
        "--progress",
        "--json",
        "-n",
        "150",
        "-r",
        "100",
        "--reply-timeout",
        "0.3",
        &peer.addr,
    ]);
    assert_eq!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err
        .lines()
        .find(|l| l.contains("sent/s"))
        .unwrap_or_else(|| panic!("no progress line in: {err}"));
    assert!(line.starts_with("echo-load:"), "{line}");
    assert!(line.contains("answered/s"), "{line}");
}

/// Usage errors: one line on stderr naming the problem, exit 2.
#[track_caller]
fn assert_usage_error(args: &[&str], mentions: &str) {
    let out = echo_load(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
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
fn udp_sizes_below_the_header_or_above_the_ip_limit_are_usage_errors() {
    let _cpu = cpu_shared();
    let v4 = "127.0.0.1:9";
    let v6 = "[::1]:9";
    assert_usage_error(&["--udp", "-s", "23", v4], "--size \"23\": too small");
    assert_usage_error(&["--udp", "-s", "65508", v4], "--size \"65508\": too large");
    assert_usage_error(
        &["--udp", "-s", "65528", v6],
        "at most 65527 bytes over IPv6",
    );
}

#[test]
fn udp_out_of_range_values_are_usage_errors_not_aborts() {
    let _cpu = cpu_shared();
    let addr = "127.0.0.1:9";
    for (args, mentions) in [
        (&["-n", "18446744073709551615"][..], "--messages"),
        (
            &["-n", "2000000000"],
            "--messages \"2000000000\": too large",
        ),
        (&["-r", "1e300"], "--rate \"1e300\": too large"),
        (&["-r", "0"], "--rate"),
        (&["-r", "1e-300"], "--rate"),
        (&["-r", "1e-9", "-n", "3"], "--rate"),
        (&["-d", "1e19"], "--duration"),
        (
            &["-d", "100000", "-r", "1000000"],
            "--duration \"100000\": too long",
        ),
        (&["--reply-timeout", "0"], "--reply-timeout"),
        (&["--reply-timeout", "1e19"], "--reply-timeout"),
        (&["--max-loss", "1.5"], "--max-loss \"1.5\""),
        (&["--max-loss", "NaN"], "--max-loss"),
        (&["-c", "0"], "--connections \"0\""),
        (&["--flows", "2000000"], "--flows \"2000000\": too large"),
    ] {
        let mut all = vec!["--udp"];
        all.extend(args);
        all.push(addr);
        assert_usage_error(&all, mentions);
    }
}

#[test]
fn flags_of_the_other_mode_are_usage_errors() {
    let _cpu = cpu_shared();
    let addr = "127.0.0.1:9";
    assert_usage_error(&["--max-loss", "0.1", addr], "only with --udp");
    assert_usage_error(&["--flows", "2", addr], "only with --udp");
    assert_usage_error(&["--udp", "-p", "2", addr], "cannot be used with --udp");
    assert_usage_error(&["--udp", "-m", "hi", addr], "cannot be used with --udp");
    assert_usage_error(&["--udp", "-t", "2", addr], "cannot be used with --udp");
}
