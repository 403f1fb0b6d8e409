//! echod under the machinery that starts and stops services (docs/protocol.md
//! "Operations", "Draining" 2): systemd's notify protocol on a real
//! `NOTIFY_SOCKET`, socket activation with a listening socket passed as fd 3
//! (and what happens to clients that connect during a restart), and the
//! `--reuse-port` hand-over while a client connects in a tight loop.
//!
//! SIGUSR1 on its own is covered by `signals.rs`; here it only tells which of
//! two `--reuse-port` processes served how many connections.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;

// ---------------------------------------------------------------- notify

/// A datagram socket standing in for systemd's `NOTIFY_SOCKET`, removed on drop.
struct NotifySocket {
    socket: UnixDatagram,
    path: PathBuf,
}

impl NotifySocket {
    fn bind(tag: &str) -> NotifySocket {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        // Short: a Unix socket path must fit in 108 bytes.
        let path =
            std::env::temp_dir().join(format!("echod-{tag}-{}-{nanos}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let socket =
            UnixDatagram::bind(&path).unwrap_or_else(|e| panic!("bind {}: {e}", path.display()));
        NotifySocket { socket, path }
    }

    /// The next datagram, as text; fails naming `what` after `limit`.
    #[track_caller]
    fn recv(&self, echod: &Echod, limit: Duration, what: &str) -> String {
        self.socket
            .set_read_timeout(Some(limit))
            .expect("read timeout");
        let mut buf = [0; 4096];
        match self.socket.recv(&mut buf) {
            Ok(n) => String::from_utf8_lossy(&buf[..n]).into_owned(),
            Err(e) => echod.fail(&format!("sent no datagram ({what}) within {limit:?}: {e}")),
        }
    }

    /// Every datagram already queued, without waiting.
    fn queued(&self) -> Vec<String> {
        self.socket.set_nonblocking(true).expect("nonblocking");
        let mut out = Vec::new();
        let mut buf = [0; 4096];
        while let Ok(n) = self.socket.recv(&mut buf) {
            out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        out
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn echod_command(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_echod"));
    cmd.args(args);
    cmd
}

#[test]
fn notify_socket_gets_ready_status_and_stopping_in_order() {
    let notify = NotifySocket::bind("notify");
    let mut cmd = echod_command(&["--listen", "127.0.0.1:0", "--drain-timeout", "2"]);
    cmd.env("NOTIFY_SOCKET", &notify.path);
    let mut echod = Echod::spawn_command(cmd, 1);

    // sd-notify sends one datagram per call, each state on its own line.
    let first = notify.recv(&echod, LIMIT, "READY=1");
    assert_eq!(first, "READY=1\nSTATUS=serving 0 connections\n");

    let mut client = echod.connect();
    assert_eq!(round_trip(&mut client, b"hello"), b"hello");
    let connected = Instant::now();
    let serving = notify.recv(&echod, LIMIT, "the status after a connect");
    // Issue #8: one connection, not "1 connections".
    assert_eq!(serving, "STATUS=serving 1 connection\n");
    // Status updates are rate-limited to one a second, so this one comes
    // about a second after the connect; 10 s leaves room for a loaded machine.
    assert!(
        connected.elapsed() < Duration::from_secs(10),
        "status took {:?}",
        connected.elapsed()
    );

    echod.signal(libc::SIGTERM);
    assert_eq!(read_to_eof(&mut client), b"SHUTDOWN", "{}", echod.stderr());
    let stopping = notify.recv(&echod, LIMIT, "STOPPING=1");
    assert_eq!(stopping, "STOPPING=1\n");
    // The client is still connected, so the drain lasts until the countdown.
    let countdown = notify.recv(&echod, LIMIT, "the drain countdown status");
    assert!(
        countdown.starts_with("STATUS=draining, 1 left, ") && countdown.ends_with("s to go\n"),
        "{countdown:?}"
    );

    drop(client);
    let status = echod.wait_exit(LIMIT);
    assert_eq!(status.code(), Some(0), "{}", echod.stderr());
    // Whatever is left is at most another countdown line (a loaded machine
    // may reach the next tick before the client's close is read): never a
    // READY or serving status after STOPPING.
    for late in notify.queued() {
        assert!(
            late.starts_with("STATUS=draining, "),
            "after STOPPING: {late:?}"
        );
    }
}

#[test]
fn without_notify_socket_echod_serves_and_exits_normally() {
    let mut cmd = echod_command(&["--listen", "127.0.0.1:0", "--drain-timeout", "0.5"]);
    cmd.env_remove("NOTIFY_SOCKET");
    let mut echod = Echod::spawn_command(cmd, 1);
    let mut client = echod.connect();
    assert_eq!(round_trip(&mut client, b"plain"), b"plain");
    echod.signal(libc::SIGTERM);
    assert_eq!(read_to_eof(&mut client), b"SHUTDOWN", "{}", echod.stderr());
    drop(client);
    assert_eq!(echod.wait_exit(LIMIT).code(), Some(0), "{}", echod.stderr());
}

/// Voluntary context switches of a process: each time it slept in `epoll_wait`.
fn voluntary_switches(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("voluntary_ctxt_switches")
}

/// Regression: a connection that left during a drain made the notifier owe a
/// `serving` status that the draining branch never sent nor cleared, so the
/// poll timeout stayed at its 0.5 ms rounding until the drain ended (about
/// 900 wake-ups a second, only with `NOTIFY_SOCKET` set). Fixed in e04b69b
/// (`Notifier::connections_changed` ignores changes once stopping).
#[test]
fn notify_socket_does_not_make_a_drain_busy_wake_after_a_connection_leaves() {
    let notify = NotifySocket::bind("wake");
    let mut cmd = echod_command(&["--listen", "127.0.0.1:0", "--drain-timeout", "30"]);
    cmd.env("NOTIFY_SOCKET", &notify.path)
        .env("RUST_LOG", "debug");
    let mut echod = Echod::spawn_command(cmd, 1);
    let mut leaving = echod.connect();
    let mut staying = echod.connect();
    assert_eq!(round_trip(&mut leaving, b"a"), b"a");
    assert_eq!(round_trip(&mut staying, b"b"), b"b");
    echod.signal(libc::SIGTERM);
    assert_eq!(read_to_eof(&mut leaving), b"SHUTDOWN", "{}", echod.stderr());
    drop(leaving);
    echod.next_line_matching("connection closed", LIMIT);
    // The owed status falls due a second after the close; two countdown
    // ticks (one a second from the drain's start) make sure it has.
    echod.next_line_matching("drain countdown", LIMIT);
    echod.next_line_matching("drain countdown", LIMIT);
    // A short explicit window: an idle drain wakes once a second for the
    // countdown (plus its status datagram); the bug wakes hundreds of times.
    let before = voluntary_switches(echod.pid());
    std::thread::sleep(Duration::from_secs(1));
    let wakeups = voluntary_switches(echod.pid()) - before;
    assert!(
        wakeups < 20,
        "echod woke {wakeups} times in 1 s of an idle drain\n{}",
        echod.stderr()
    );
    assert_eq!(read_to_eof(&mut staying), b"SHUTDOWN");
    drop(staying);
    assert_eq!(echod.wait_exit(LIMIT).code(), Some(0), "{}", echod.stderr());
    drop(notify);
}

// ----------------------------------------------------- socket activation

/// A listening socket owned by the test, as systemd owns a `.socket` unit's.
fn manager_socket() -> socket2::Socket {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).expect("socket");
    socket.set_reuse_address(true).expect("SO_REUSEADDR");
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    socket.bind(&addr.into()).expect("bind");
    socket.listen(128).expect("listen");
    socket
}

/// echod started the way systemd starts a socket-activated service: the
/// socket as fd 3, `LISTEN_FDS=1`, `LISTEN_PID` = echod's own PID. A
/// `--listen` on a non-local address proves the command line is ignored:
/// binding 192.0.2.1 (TEST-NET-1) would fail with exit 1.
fn spawn_activated(socket: &socket2::Socket) -> Echod {
    let fd = socket.as_raw_fd();
    // The PID is only known in the child; a shell that `exec`s keeps its PID,
    // so `$$` is echod's PID.
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"export LISTEN_PID=$$; exec "$0" "$@""#)
        .arg(env!("CARGO_BIN_EXE_echod"))
        .args(["--listen", "192.0.2.1:9", "--drain-timeout", "5"])
        .env("LISTEN_FDS", "1")
        .env_remove("LISTEN_FDNAMES")
        .env_remove("NOTIFY_SOCKET");
    // SAFETY: runs in the child between fork and exec and only calls the
    // async-signal-safe dup2 and fcntl on a descriptor the parent owns.
    unsafe {
        cmd.pre_exec(move || {
            if fd == 3 {
                // dup2 onto itself would keep FD_CLOEXEC; clear it by hand.
                if libc::fcntl(3, libc::F_SETFD, 0) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(fd, 3) == -1 {
                // dup2's new descriptor never has FD_CLOEXEC.
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Echod::spawn_command(cmd, 1)
}

#[test]
fn socket_activation_serves_the_inherited_socket_and_ignores_listen() {
    let socket = manager_socket();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    let mut echod = spawn_activated(&socket);
    let line = echod.wait_for_line("using inherited socket", LIMIT);
    assert!(line.contains(&format!("addr={addr}")), "{line}");
    assert_eq!(echod.addr(), addr, "{}", echod.stderr());
    let mut client = connect(addr);
    assert_eq!(round_trip(&mut client, b"activated"), b"activated");
    echod.signal(libc::SIGTERM);
    assert_eq!(read_to_eof(&mut client), b"SHUTDOWN", "{}", echod.stderr());
    drop(client);
    assert_eq!(echod.wait_exit(LIMIT).code(), Some(0), "{}", echod.stderr());
}

/// The restart under socket activation: the manager (here the test) keeps
/// its copy of the listening socket, so connects made while the old echod
/// drains or after it exited wait in the shared accept queue and the next
/// echod serves them.
#[test]
fn socket_activation_restart_hands_queued_clients_to_the_next_instance() {
    let socket = manager_socket();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();

    let mut old = spawn_activated(&socket);
    let mut staying = connect(addr);
    assert_eq!(round_trip(&mut staying, b"old"), b"old");
    old.signal(libc::SIGTERM);
    // Logged after the old echod closed its descriptor of the socket.
    old.wait_for_line("drain started", LIMIT);
    // Still a TCP connect: the kernel completes the handshake on the
    // manager's copy even though no process is accepting.
    let mut during_drain = connect(addr);
    during_drain.write_all(b"during").expect("write");
    assert_eq!(read_to_eof(&mut staying), b"SHUTDOWN", "{}", old.stderr());
    drop(staying);
    assert_eq!(old.wait_exit(LIMIT).code(), Some(0), "{}", old.stderr());
    let last = old.wait_for_line("drain finished", LIMIT);
    assert!(
        last.contains("accepted=1 "),
        "old instance took a queued client: {last}"
    );

    let mut after_exit = connect(addr);
    after_exit.write_all(b"after").expect("write");

    let mut new = spawn_activated(&socket);
    let mut echo = [0; 6];
    during_drain
        .read_exact(&mut echo)
        .unwrap_or_else(|e| new.fail(&format!("client queued during the drain: {e}")));
    assert_eq!(&echo, b"during");
    let mut echo = [0; 5];
    after_exit
        .read_exact(&mut echo)
        .unwrap_or_else(|e| new.fail(&format!("client queued after the exit: {e}")));
    assert_eq!(&echo, b"after");
    new.signal(libc::SIGTERM);
    assert_eq!(read_to_eof(&mut during_drain), b"SHUTDOWN");
    assert_eq!(read_to_eof(&mut after_exit), b"SHUTDOWN");
    drop((during_drain, after_exit));
    assert_eq!(new.wait_exit(LIMIT).code(), Some(0), "{}", new.stderr());
    let last = new.wait_for_line("drain finished", LIMIT);
    assert!(last.contains("accepted=2 "), "{last}");
}

// ------------------------------------------------------------ reuse-port

/// What one connect-send-read attempt of the hand-over client saw.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    attempts: u64,
    /// The byte came back (from either instance).
    echoed: u64,
    /// The old instance accepted it during its drain: the notice came.
    drained: u64,
    refused: u64,
    reset: u64,
    /// End-of-stream with neither echo nor notice.
    eof: u64,
    timeout: u64,
    other: u64,
}

impl Tally {
    fn failures(&self) -> u64 {
        self.refused + self.reset + self.eof + self.timeout + self.other
    }
}

fn classify_error(tally: &mut Tally, err: &std::io::Error) {
    match err.kind() {
        ErrorKind::ConnectionRefused => tally.refused += 1,
        ErrorKind::ConnectionReset | ErrorKind::BrokenPipe | ErrorKind::ConnectionAborted => {
            tally.reset += 1
        }
        ErrorKind::WouldBlock | ErrorKind::TimedOut => tally.timeout += 1,
        _ => tally.other += 1,
    }
}

/// One attempt: connect, send one byte, read the echo or the notice, close.
fn attempt(addr: SocketAddr, tally: &mut Tally) {
    tally.attempts += 1;
    let mut stream = match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
        Ok(s) => s,
        Err(e) => return classify_error(tally, &e),
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = stream.set_nodelay(true);
    if let Err(e) = stream.write_all(b"x") {
        return classify_error(tally, &e);
    }
    let mut buf = [0; 16];
    match stream.read(&mut buf) {
        Ok(0) => tally.eof += 1,
        // The echo and the notice may come in one read.
        Ok(n) if buf[..n].starts_with(b"S") || buf[..n].ends_with(b"SHUTDOWN") => {
            tally.drained += 1
        }
        Ok(_) if buf[0] == b'x' => tally.echoed += 1,
        Ok(_) => tally.other += 1,
        Err(e) => classify_error(tally, &e),
    }
}

fn stats_accepted(echod: &mut Echod) -> u64 {
    echod.signal(libc::SIGUSR1);
    let line = echod.next_line_matching("stats: ", LIMIT);
    line.split("accepted=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no accepted= in {line:?}"))
}

/// Most hand-overs lose nothing. With `net.ipv4.tcp_migrate_req=0` (the
/// default) Linux resets connections that completed their handshake on the
/// old listener between its last accept and its close; echod's drain accepts
/// the backlog right before closing, so that window is a few system calls
/// wide. Measured here (docs/operations.md): 0 failures in most hand-overs, at
/// most a handful in rare ones; with `tcp_migrate_req=1` the kernel moves
/// them to the new listener and none fails. The bound below is that measured
/// worst case with room; a regression (say, closing the listener before taking
/// the backlog, or a refused connect) shows up as many more.
const HANDOVER_FAILURES_ALLOWED: u64 = 3;

#[test]
fn reuse_port_hand_over_loses_no_connects() {
    let mut old = Echod::spawn(&["--reuse-port"]);
    let addr = old.addr();
    let port = addr.to_string();
    let mut new = Echod::spawn(&["--reuse-port", "--listen", &port]);
    assert_eq!(new.addr(), addr);

    let stop = Arc::new(AtomicBool::new(false));
    let attempts = Arc::new(AtomicU64::new(0));
    let client = {
        let (stop, attempts) = (Arc::clone(&stop), Arc::clone(&attempts));
        std::thread::spawn(move || {
            let mut tally = Tally::default();
            let started = Instant::now();
            // Bounded: the test stops it, or 20,000 attempts, or the limit.
            while !stop.load(Ordering::Relaxed)
                && tally.attempts < 20_000
                && started.elapsed() < LIMIT
            {
                attempt(addr, &mut tally);
                attempts.store(tally.attempts, Ordering::Relaxed);
            }
            tally
        })
    };
    wait_until(LIMIT, "the client loop to warm up", || {
        attempts.load(Ordering::Relaxed) >= 200
    });
    old.signal(libc::SIGHUP);
    let status = old.wait_exit(LIMIT);
    assert_eq!(status.code(), Some(0), "{}", old.stderr());
    let at_exit = attempts.load(Ordering::Relaxed);
    wait_until(LIMIT, "connects after the old instance exited", || {
        attempts.load(Ordering::Relaxed) >= at_exit + 200 || client.is_finished()
    });
    stop.store(true, Ordering::Relaxed);
    let tally = client.join().expect("client thread");
    let last = old.wait_for_line("drain finished", LIMIT);
    eprintln!(
        "hand-over: {tally:?} failures={}\nold: {last}",
        tally.failures()
    );
    assert!(tally.attempts >= 400, "{tally:?}");
    assert!(
        tally.failures() <= HANDOVER_FAILURES_ALLOWED,
        "{tally:?}\nold:\n{}\nnew:\n{}",
        old.stderr(),
        new.stderr()
    );

    let mut after = connect(addr);
    assert_eq!(round_trip(&mut after, b"still here"), b"still here");
    new.signal(libc::SIGTERM);
    assert_eq!(read_to_eof(&mut after), b"SHUTDOWN");
    drop(after);
    assert_eq!(new.wait_exit(LIMIT).code(), Some(0), "{}", new.stderr());
}

#[test]
fn two_reuse_port_instances_both_accept() {
    let mut first = Echod::spawn(&["--reuse-port"]);
    let addr = first.addr();
    let port = addr.to_string();
    let mut second = Echod::spawn(&["--reuse-port", "--listen", &port]);
    const CONNECTS: u64 = 200;
    for i in 0..CONNECTS {
        let mut client = connect(addr);
        let msg = format!("c{i}");
        assert_eq!(round_trip(&mut client, msg.as_bytes()), msg.as_bytes());
    }
    // Every round trip above was served, so both counts are final.
    let (a, b) = (stats_accepted(&mut first), stats_accepted(&mut second));
    assert_eq!(a + b, CONNECTS, "first={a} second={b}");
    // The kernel hashes each connection's addresses and ports onto one of the
    // two listeners; all 200 on one side has odds of 2^-199.
    assert!(a > 0 && b > 0, "first={a} second={b}");
    for echod in [&mut first, &mut second] {
        echod.signal(libc::SIGTERM);
        assert_eq!(echod.wait_exit(LIMIT).code(), Some(0), "{}", echod.stderr());
    }
}

/// Issue 11: the systemd status shows what the protections closed, here a
/// connection refused by `--max-connections-per-ip`.
#[test]
fn notify_status_counts_connections_closed_by_the_per_address_limit() {
    let notify = NotifySocket::bind("notify-per-ip");
    let mut cmd = echod_command(&[
        "--listen",
        "127.0.0.1:0",
        "--drain-timeout",
        "2",
        "--max-connections-per-ip",
        "1",
    ]);
    cmd.env("NOTIFY_SOCKET", &notify.path);
    let mut echod = Echod::spawn_command(cmd, 1);
    notify.recv(&echod, LIMIT, "READY=1");
    let mut kept = echod.connect();
    assert_eq!(round_trip(&mut kept, b"kept"), b"kept");
    // The second from the same address is closed at once: end-of-stream.
    let mut rejected = echod.connect();
    assert_eq!(read_to_eof(&mut rejected), b"", "{}", echod.stderr());
    let mut status = notify.recv(&echod, LIMIT, "a status after the rejection");
    while !status.contains("per address 1") {
        status = notify.recv(&echod, LIMIT, "the status with the rejection");
    }
    assert_eq!(
        status,
        "STATUS=serving 1 connection; closed idle 0, per address 1\n"
    );
    echod.signal(libc::SIGTERM);
    assert_eq!(read_to_eof(&mut kept), b"SHUTDOWN", "{}", echod.stderr());
    drop(kept);
    assert_eq!(echod.wait_exit(LIMIT).code(), Some(0), "{}", echod.stderr());
}
