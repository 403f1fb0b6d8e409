//! Take-over (docs/protocol.md "Operations", take-over; issue 13): a
//! running echod started with `--handover-socket PATH` hands its listening
//! sockets to a new echod started with `--take-over PATH`, on real
//! processes and real sockets, while clients connect in a loop; and every
//! way a take-over can fail leaves the running instance serving.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use common::*;

/// A directory for handover sockets, removed with what is left in it.
/// Short, under /tmp: a Unix socket path holds 107 bytes.
struct SocketDir(PathBuf);

impl SocketDir {
    fn new(tag: &str) -> SocketDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = PathBuf::from(format!(
            "/tmp/echod-to-{tag}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("create socket dir");
        SocketDir(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for SocketDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn text(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

/// An echod offering take-over at `path`.
#[track_caller]
fn offering(path: &Path, extra: &[&str]) -> Echod {
    let mut args = vec!["--handover-socket", text(path)];
    args.extend(extra);
    Echod::spawn(&args)
}

/// An echod taking over from `path` and offering the same path for the next.
#[track_caller]
fn taking_over(path: &Path) -> Echod {
    Echod::spawn(&["--take-over", text(path), "--handover-socket", text(path)])
}

/// Starts an echod taking over from `path` that must fail: its exit status
/// and everything it wrote on stderr.
#[track_caller]
fn failed_take_over(path: &Path) -> (Option<i32>, Vec<String>) {
    let mut new = Echod::spawn_unready(&["--take-over", text(path)]);
    let status = new.wait_exit(LIMIT);
    (status.code(), new.seen.clone())
}

/// The one line a failed take-over prints, checked.
#[track_caller]
fn assert_one_line(lines: &[String], wanted: &str) {
    assert_eq!(lines.len(), 1, "expected one line: {lines:#?}");
    assert!(
        lines[0].starts_with("echod: cannot take over from ") && lines[0].contains(wanted),
        "{:?} does not say {wanted:?}",
        lines[0]
    );
}

/// The running instance still serves: a new connection echoes.
#[track_caller]
fn assert_still_serving(echod: &Echod) {
    let mut client = echod.connect();
    assert_eq!(
        round_trip(&mut client, b"still here"),
        b"still here",
        "{}",
        echod.stderr()
    );
}

/// Stops an instance with SIGTERM and checks its exit status.
#[track_caller]
fn stop(mut echod: Echod) {
    echod.signal(libc::SIGTERM);
    assert_eq!(echod.wait_exit(LIMIT).code(), Some(0), "{}", echod.stderr());
}

// ------------------------------------------------------------- hand-overs

#[test]
fn ten_take_overs_in_a_row_lose_no_connect_while_four_threads_connect() {
    let dir = SocketDir::new("ten");
    let path = dir.path("h.sock");
    let mut current = offering(&path, &[]);
    let addr = current.addr();
    let clients = ConnectLoop::start(addr, 4, 50_000);
    clients.wait_for_attempts(200);
    for round in 0..10 {
        // A connection of the running instance's own, held across the take-over.
        let mut held = current.connect();
        assert_eq!(round_trip(&mut held, b"held"), b"held");
        let before = clients.attempts();
        let mut next = taking_over(&path);
        assert_eq!(next.addr(), addr, "round {round}: {}", next.stderr());
        next.wait_for_line("take-over complete", LIMIT);
        // The old instance drains its own connection: the notice, then
        // end-of-stream, and then it exits 0.
        assert_eq!(
            read_to_eof(&mut held),
            b"SHUTDOWN",
            "round {round}: {}",
            current.stderr()
        );
        drop(held);
        assert_eq!(
            current.wait_exit(LIMIT).code(),
            Some(0),
            "{}",
            current.stderr()
        );
        current.wait_for_line("drain started: reason=take-over", LIMIT);
        let last = current.wait_for_line("drain finished", LIMIT);
        assert!(last.contains("reason=take-over end=emptied"), "{last}");
        // The clients went on connecting across this take-over.
        clients.wait_for_attempts(before + 100);
        current = next;
    }
    let tally = clients.stop();
    eprintln!("ten take-overs: {tally:?}");
    assert_eq!(tally.failures(), 0, "{tally:?}\n{}", current.stderr());
    assert!(tally.attempts >= 1_200, "{tally:?}");
    assert_still_serving(&current);
    stop(current);
}

#[test]
fn handover_socket_is_a_socket_with_mode_0600() {
    let dir = SocketDir::new("mode");
    let path = dir.path("h.sock");
    let old = offering(&path, &[]);
    let meta = std::fs::symlink_metadata(&path).expect("socket file");
    assert!(meta.file_type().is_socket(), "{meta:?}");
    assert_eq!(meta.permissions().mode() & 0o7777, 0o600, "{meta:?}");
    let old_inode = meta.ino();

    // The new instance binds a socket of its own at the same path, 0600 too.
    let new = taking_over(&path);
    let meta = std::fs::symlink_metadata(&path).expect("socket file after the take-over");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o7777, 0o600, "{meta:?}");
    assert_ne!(meta.ino(), old_inode, "the old socket file was kept");
    drop(old);
    stop(new);
}

#[test]
fn the_new_instance_serves_the_next_take_over_and_a_drain_removes_the_socket_file() {
    let dir = SocketDir::new("second");
    let path = dir.path("h.sock");
    let mut first = offering(&path, &[]);
    let addr = first.addr();
    let mut second = taking_over(&path);
    assert_eq!(first.wait_exit(LIMIT).code(), Some(0), "{}", first.stderr());
    // A second take-over, from the instance that took over first.
    let third = taking_over(&path);
    assert_eq!(third.addr(), addr);
    assert_eq!(
        second.wait_exit(LIMIT).code(),
        Some(0),
        "{}",
        second.stderr()
    );
    second.wait_for_line("drain finished: reason=take-over", LIMIT);
    assert_still_serving(&third);
    // A drain for any other reason withdraws the offer.
    stop(third);
    assert!(!path.exists(), "the socket file outlived its instance");
}

/// The backlog after a hand-over belongs to the new instance: connects
/// that wait while it is paused are not taken (nor closed) by the old one,
/// which is still draining a connection of its own.
#[test]
fn connects_queued_after_the_hand_over_are_served_by_the_new_instance() {
    let dir = SocketDir::new("queued");
    let path = dir.path("h.sock");
    let mut old = offering(&path, &["--drain-timeout", "30"]);
    let mut held = old.connect();
    assert_eq!(round_trip(&mut held, b"held"), b"held");
    let new = taking_over(&path);
    old.wait_for_line("drain started: reason=take-over", LIMIT);
    new.pause();
    let mut queued = connect(old.addr());
    queued.write_all(b"queued").expect("write");
    // The old instance drains on, and its own connection gets the notice.
    assert_eq!(read_to_eof(&mut held), b"SHUTDOWN", "{}", old.stderr());
    drop(held);
    assert_eq!(old.wait_exit(LIMIT).code(), Some(0), "{}", old.stderr());
    let last = old.wait_for_line("drain finished", LIMIT);
    assert!(last.contains(" accepted=1 "), "{last}");
    new.resume();
    let mut echo = [0; 6];
    queued
        .read_exact(&mut echo)
        .unwrap_or_else(|e| new.fail(&format!("queued client: {e}")));
    assert_eq!(&echo, b"queued");
    drop(queued);
    stop(new);
}

#[test]
fn a_take_over_during_the_lame_duck_starts_the_drain_at_once() {
    let dir = SocketDir::new("duck");
    let path = dir.path("h.sock");
    let mut old = offering(&path, &["--drain-delay", "60"]);
    old.signal(libc::SIGTERM);
    old.wait_for_line("lame duck started", LIMIT);
    let new = taking_over(&path);
    old.wait_for_line("drain started: reason=take-over", LIMIT);
    // Well before the 60 s lame duck would have ended.
    assert_eq!(old.wait_exit(LIMIT).code(), Some(0), "{}", old.stderr());
    assert_still_serving(&new);
    stop(new);
}

// ---------------------------------------------------------------- failures

#[test]
fn a_take_over_from_a_missing_path_exits_1_and_the_old_instance_serves_on() {
    let dir = SocketDir::new("missing");
    let path = dir.path("h.sock");
    let old = offering(&path, &[]);
    let (code, lines) = failed_take_over(&dir.path("missing.sock"));
    assert_eq!(code, Some(1), "{lines:#?}");
    assert_one_line(&lines, "no such socket");
    assert_still_serving(&old);
    stop(old);
}

#[test]
fn a_take_over_from_a_path_where_nothing_listens_exits_1() {
    let dir = SocketDir::new("dead");
    let path = dir.path("dead.sock");
    // A socket file whose listener is gone, as a killed instance leaves it.
    drop(UnixListener::bind(&path).expect("bind"));
    let (code, lines) = failed_take_over(&path);
    assert_eq!(code, Some(1), "{lines:#?}");
    assert_one_line(&lines, "connection refused (nothing listens there)");
}

#[test]
fn a_take_over_from_a_peer_that_is_not_echod_exits_1() {
    let dir = SocketDir::new("garbage");
    let path = dir.path("fake.sock");
    let fake = UnixListener::bind(&path).expect("bind");
    let peer = std::thread::spawn(move || {
        let (mut conn, _) = fake.accept().expect("accept");
        let mut request = [0; 8];
        conn.read_exact(&mut request).expect("request");
        conn.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            .expect("reply");
        let mut rest = Vec::new();
        let _ = conn.read_to_end(&mut rest);
        request
    });
    let (code, lines) = failed_take_over(&path);
    assert_eq!(code, Some(1), "{lines:#?}");
    assert_one_line(&lines, "peer is not echod (bad greeting)");
    assert_eq!(
        &peer.join().expect("peer")[..],
        b"echd\x01\x01\x00\x00",
        "the request as docs/protocol.md's wire format has it"
    );
}

/// A raw client of a running instance's handover socket.
fn raw_client(path: &Path) -> UnixStream {
    let stream = UnixStream::connect(path).expect("connect to the handover socket");
    stream.set_read_timeout(Some(LIMIT)).expect("read timeout");
    stream
}

/// Everything the instance sends until it closes (descriptors passed
/// along are dropped by a plain read).
fn read_all(stream: &mut UnixStream) -> Vec<u8> {
    let mut out = Vec::new();
    stream.read_to_end(&mut out).expect("read until closed");
    out
}

#[test]
fn a_receiver_that_never_confirms_is_refused_after_5_s_and_the_old_instance_serves_on() {
    let dir = SocketDir::new("silent");
    let path = dir.path("h.sock");
    let mut old = offering(&path, &[]);
    let mut client = raw_client(&path);
    // REQUEST: magic, version 1, type 1, empty body.
    client.write_all(b"echd\x01\x01\x00\x00").expect("request");
    let mut header = [0; 8];
    client.read_exact(&mut header).expect("offer header");
    assert_eq!(&header[..6], b"echd\x01\x02", "an OFFER: {header:?}");
    assert_eq!(u16::from_be_bytes([header[6], header[7]]), 24, "one record");
    let mut record = [0; 24];
    client.read_exact(&mut record).expect("offer record");
    // ... and never confirms.
    let line = old.wait_for_line("take-over refused", LIMIT);
    assert!(line.contains("reason=no confirmation within 5s"), "{line}");
    let refusal = read_all(&mut client);
    assert!(
        refusal.starts_with(b"echd\x01\x04") && refusal.ends_with(b"no confirmation within 5s"),
        "{:?}",
        String::from_utf8_lossy(&refusal)
    );
    assert_still_serving(&old);
    // The offer stands: a real take-over still works.
    let new = taking_over(&path);
    assert_eq!(old.wait_exit(LIMIT).code(), Some(0), "{}", old.stderr());
    stop(new);
}

#[test]
fn garbage_and_a_short_request_are_refused_at_once_and_the_old_instance_serves_on() {
    let dir = SocketDir::new("refuse");
    let path = dir.path("h.sock");
    let mut old = offering(&path, &[]);
    let mut held = old.connect();
    assert_eq!(round_trip(&mut held, b"before"), b"before");

    let mut client = raw_client(&path);
    client
        .write_all(b"GET / HTTP/1.0\r\n\r\n")
        .expect("garbage");
    let refusal = read_all(&mut client);
    assert!(
        refusal.starts_with(b"echd\x01\x04")
            && refusal.ends_with(b"not a take-over: peer is not echod (bad greeting)"),
        "{:?}",
        String::from_utf8_lossy(&refusal)
    );
    let line = old.wait_for_line("take-over refused, still serving", LIMIT);
    assert!(line.contains("bad greeting"), "{line}");

    // Half a header, then the peer goes away.
    let mut client = raw_client(&path);
    client.write_all(b"ech").expect("short request");
    client
        .shutdown(std::net::Shutdown::Write)
        .expect("shutdown");
    let _ = read_all(&mut client);
    let line = old.next_line_matching("take-over refused, still serving", LIMIT);
    assert!(line.contains("peer closed before confirming"), "{line}");

    // Service was never disturbed: the old connection and a new one echo.
    assert_eq!(round_trip(&mut held, b"after"), b"after");
    assert_still_serving(&old);
    drop(held);
    stop(old);
}

#[test]
fn a_handover_socket_where_another_instance_listens_exits_1() {
    let dir = SocketDir::new("busy");
    let path = dir.path("h.sock");
    let old = offering(&path, &[]);
    let mut second = Echod::spawn_unready(&["--handover-socket", text(&path)]);
    assert_eq!(second.wait_exit(LIMIT).code(), Some(1));
    let expected = format!(
        "echod: cannot offer take-over at {}: another process listens there",
        path.display()
    );
    assert_eq!(second.seen, vec![expected]);
    assert_still_serving(&old);
    stop(old);
}

/// docs/protocol.md "Operations": every listening socket is passed, the
/// health listener included, and the new instance binds none of its own:
/// it answers datagrams and probes on the ports the old one had.
#[test]
fn a_take_over_passes_the_udp_sockets_and_the_health_listener() {
    let dir = SocketDir::new("all");
    let path = dir.path("h.sock");
    let mut old = offering(&path, &["--udp", "127.0.0.1:0", "--health", "127.0.0.1:0"]);
    let (udp, health) = (old.udp_addr(), old.health_addr());
    assert_eq!(udp_round_trip(udp, b"old"), b"old");
    assert_eq!(http_get(health, "/livez").status, 200);
    let mut new = taking_over(&path);
    let confirmed = old.wait_for_line("take-over confirmed", LIMIT);
    assert!(confirmed.contains("sockets=3"), "{confirmed}");
    old.wait_for_line("drain started: reason=take-over", LIMIT);
    assert_eq!(old.wait_exit(LIMIT).code(), Some(0), "{}", old.stderr());
    let last = old.wait_for_line("drain finished", LIMIT);
    assert!(last.contains(" udp_echoed=1 "), "{last}");

    // The new instance announces the received sockets as its own.
    let complete = new.wait_for_line("take-over complete", LIMIT);
    assert!(
        complete.contains("listeners=1 udp=1 health=1"),
        "{complete}"
    );
    let announced = parse_listening(&new.wait_for_line(" proto=udp ", LIMIT));
    assert_eq!(announced, udp, "{}", new.stderr());
    assert_eq!(new.health_addr(), health);
    // The old instance is gone: whatever answers now is the new one.
    assert_eq!(udp_round_trip(udp, b"new"), b"new");
    assert_eq!(http_get(health, "/livez").status, 200);
    assert_eq!(http_get(health, "/readyz").status, 200);
    assert_still_serving(&new);
    let stats = new.stats();
    assert!(stats.contains(" udp_echoed=1 "), "{stats}");
    stop(new);
}

/// Its own `--udp` and `--health` addresses are not bound: the new
/// instance serves what it received, says so once per flag, and announces
/// only the received sockets.
#[test]
fn a_new_instance_names_the_udp_and_health_flags_it_does_not_bind() {
    let dir = SocketDir::new("flags");
    let path = dir.path("h.sock");
    let mut old = offering(&path, &["--udp", "127.0.0.1:0", "--health", "127.0.0.1:0"]);
    let (udp, health) = (old.udp_addr(), old.health_addr());
    let mut new = Echod::spawn(&[
        "--take-over",
        text(&path),
        "--udp",
        "127.0.0.1:0",
        "--health",
        "127.0.0.1:0",
    ]);
    assert_eq!(new.udp_addrs(), &[udp]);
    assert_eq!(new.health_addr(), health);
    for (flag, mine) in [("--udp", "udp"), ("--health", "health")] {
        let line = new.wait_for_line(&format!("not {flag}: "), LIMIT);
        assert!(
            line.contains("take-over: serving the sockets received")
                && line.contains("received=127.0.0.1:")
                && line.ends_with(&format!(" {mine}=127.0.0.1:0")),
            "{line}"
        );
    }
    let udp_lines = new
        .seen
        .iter()
        .filter(|l| l.contains(" proto=udp "))
        .count();
    let http_lines = new
        .seen
        .iter()
        .filter(|l| l.contains(" proto=http "))
        .count();
    assert_eq!((udp_lines, http_lines), (1, 1), "{}", new.stderr());
    assert_eq!(old.wait_exit(LIMIT).code(), Some(0), "{}", old.stderr());
    assert_eq!(udp_round_trip(udp, b"x"), b"x");
    stop(new);
}

/// A client sending datagrams one after another across five take-overs in
/// a row: each is answered by the old instance or the new one (UDP may
/// lose one in flight, so the bound is generous), and once the last old
/// one has exited every datagram is answered, by the new one.
#[test]
fn datagrams_sent_across_take_overs_are_answered_by_one_instance_or_the_other() {
    let dir = SocketDir::new("dgram");
    let path = dir.path("h.sock");
    let mut current = offering(&path, &["--udp", "127.0.0.1:0"]);
    let udp = current.udp_addr();
    let client = DatagramLoop::start(udp, std::time::Duration::from_secs(2));
    client.wait_for_answers(100);
    let mut echoed_by_old = 0;
    let mut during = Vec::new();
    for _ in 0..5 {
        let before = client.answered();
        let next = taking_over(&path);
        assert_eq!(
            current.wait_exit(LIMIT).code(),
            Some(0),
            "{}",
            current.stderr()
        );
        let last = current.wait_for_line("drain finished", LIMIT);
        echoed_by_old += field(&last, "udp_echoed");
        // Answered while the two instances handed the socket over.
        during.push(client.answered() - before);
        // From here only the next instance holds the socket.
        client.wait_for_answers(client.answered() + 100);
        current = next;
    }
    let tally = client.stop();
    eprintln!("datagrams across take-overs: {tally:?}, answered during each: {during:?}");
    assert!(tally.answered * 10 >= tally.sent * 9, "{tally:?}");
    assert_eq!(tally.errors, 0, "{tally:?}");
    for i in 0..100u32 {
        let payload = i.to_be_bytes();
        assert_eq!(udp_round_trip(udp, &payload), payload, "datagram {i}");
    }
    // Every answer came from one of the instances: their counts add up to
    // at least what the client saw come back.
    let echoed_by_last = field(&current.stats(), "udp_echoed");
    assert!(echoed_by_last >= 100 + 100, "{echoed_by_last}");
    assert!(
        echoed_by_old + echoed_by_last >= tally.answered + tally.late + 100,
        "old {echoed_by_old} + last {echoed_by_last} < {tally:?} + 100"
    );
    stop(current);
}

/// A health connection the old instance accepted before the hand-over is
/// still answered by it (a draining instance answers /readyz with 503),
/// while new probes reach the new instance (200).
#[test]
fn a_probe_the_old_instance_accepted_before_the_take_over_is_answered_by_it() {
    let dir = SocketDir::new("probe");
    let path = dir.path("h.sock");
    let mut old = offering(&path, &["--health", "127.0.0.1:0", "--drain-timeout", "30"]);
    let health = old.health_addr();
    // A client connection keeps the old instance draining, so alive.
    let mut held = old.connect();
    assert_eq!(round_trip(&mut held, b"held"), b"held");
    let before = open_fds(old.pid());
    let mut probe = connect(health);
    probe
        .write_all(b"GET /readyz HTTP/1.1\r\nHost: echod\r\n")
        .expect("half a request");
    // Accepted by the old instance: its descriptor count goes up by one.
    wait_until(LIMIT, "the old instance to accept the probe", || {
        open_fds(old.pid()) > before
    });
    let new = taking_over(&path);
    old.wait_for_line("drain started: reason=take-over", LIMIT);
    probe.write_all(b"\r\n").expect("end of the request");
    let answer = HttpAnswer::parse(&read_to_eof(&mut probe));
    assert_eq!(answer.status, 503, "{answer:?}");
    assert_eq!(http_get(health, "/readyz").status, 200);
    assert_eq!(read_to_eof(&mut held), b"SHUTDOWN", "{}", old.stderr());
    drop(held);
    assert_eq!(old.wait_exit(LIMIT).code(), Some(0), "{}", old.stderr());
    stop(new);
}

/// The library's API, in one process: one server offers its sockets (a
/// TCP listener, a UDP socket, the health listener), a second takes them
/// over, serves them from `Server::from_sockets`, confirms; the first
/// drains its own connection and returns `DrainReason::HandedOver`.
#[test]
fn the_library_hands_a_running_server_over_to_a_new_one() {
    let dir = SocketDir::new("lib");
    let path = dir.path("h.sock");
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let config = echod::Config {
        listen: vec![any],
        udp: vec![any],
        health: Some(any),
        drain_timeout: LIMIT,
        ..echod::Config::default()
    };
    let mut old = echod::Server::bind(config.clone()).expect("bind");
    old.offer_take_over(&path).expect("offer take-over");
    let addr = old.local_addrs()[0];
    let (udp_addr, health_addr) = (old.udp_addrs()[0], old.health_addr().expect("health"));
    let old_loop = std::thread::spawn(move || old.run());
    let mut held = connect(addr);
    assert_eq!(round_trip(&mut held, b"old"), b"old");

    let taken = echod::take_over(&path, echod::TAKE_OVER_TIMEOUT).expect("take over");
    let echod::Sockets { tcp, udp, health } = &taken.sockets;
    assert_eq!((tcp.len(), udp.len(), health.is_some()), (1, 1, true));
    // Its own addresses are not bound: the ones received replace them.
    let new = echod::Server::from_sockets(config, taken.sockets).expect("serve");
    assert_eq!(new.local_addrs(), &[addr]);
    assert_eq!(new.udp_addrs(), &[udp_addr]);
    assert_eq!(new.health_addr(), Some(health_addr));
    taken.confirmation.confirm().expect("confirm");
    let handle = new.shutdown_handle();
    let new_loop = std::thread::spawn(move || new.run());

    assert_eq!(read_to_eof(&mut held), b"SHUTDOWN");
    drop(held);
    let summary = old_loop.join().expect("old loop").expect("old run");
    assert_eq!(summary.reason, echod::DrainReason::HandedOver);
    assert_eq!(summary.end, echod::DrainEnd::Emptied);
    assert_eq!(summary.stats.accepted, 1);

    let mut client = connect(addr);
    assert_eq!(round_trip(&mut client, b"new"), b"new");
    assert_eq!(udp_round_trip(udp_addr, b"new over udp"), b"new over udp");
    assert_eq!(http_get(health_addr, "/readyz").status, 200);
    handle.drain();
    assert_eq!(read_to_eof(&mut client), b"SHUTDOWN");
    drop(client);
    let summary = new_loop.join().expect("new loop").expect("new run");
    assert_eq!(summary.reason, echod::DrainReason::Handle);
    assert_eq!(summary.stats.udp.echoed, 1);
}

#[test]
fn a_take_over_from_a_missing_path_is_one_error_line_for_an_embedder() {
    let dir = SocketDir::new("liberr");
    let path = dir.path("none.sock");
    let err = echod::take_over(&path, echod::TAKE_OVER_TIMEOUT).expect_err("no socket there");
    assert_eq!(
        err.to_string(),
        format!("cannot take over from {}: no such socket", path.display())
    );
    assert_eq!(err.exit_code(), 1);
}

/// `contrib/takeover/restart.sh`, the shell recipe docs/operations.md
/// gives: it returns once the new echod serves, printing its PID.
#[test]
fn restart_sh_replaces_a_running_echod_and_prints_the_new_pid() {
    let dir = SocketDir::new("sh");
    let (path, pid_file, log) = (dir.path("h.sock"), dir.path("e.pid"), dir.path("e.log"));
    let mut old = offering(&path, &["--pid-file", text(&pid_file)]);
    let mut held = old.connect();
    assert_eq!(round_trip(&mut held, b"old"), b"old");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/takeover/restart.sh");
    let restart = |socket: &Path| {
        std::process::Command::new("sh")
            .arg(script)
            .args([text(socket), text(&pid_file), env!("CARGO_BIN_EXE_echod")])
            .args(["--listen", "127.0.0.1:0", "--drain-timeout", "0.5"])
            .env("ECHOD_LOG", &log)
            .output()
            .expect("run restart.sh")
    };

    let failed = restart(&dir.path("missing.sock"));
    assert_eq!(failed.status.code(), Some(1), "{failed:?}");
    assert!(
        String::from_utf8_lossy(&failed.stderr).contains("the running echod serves on"),
        "{failed:?}"
    );
    assert_still_serving(&old);

    let out = restart(&path);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let new_pid: i32 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("no PID printed ({e}): {out:?}"));
    let in_file = std::fs::read_to_string(&pid_file).expect("pid file");
    assert_eq!(in_file.trim(), new_pid.to_string());
    assert_eq!(read_to_eof(&mut held), b"SHUTDOWN", "{}", old.stderr());
    drop(held);
    assert_eq!(old.wait_exit(LIMIT).code(), Some(0), "{}", old.stderr());
    assert_still_serving(&old);

    // The new echod is not this test's child: stop it by its PID.
    // SAFETY: kill(2) on the PID restart.sh printed.
    assert_eq!(unsafe { libc::kill(new_pid, libc::SIGTERM) }, 0);
    wait_until(LIMIT, "the new echod to exit", || {
        !Path::new(&format!("/proc/{new_pid}")).exists() || process_state(new_pid) == 'Z'
    });
    let log = std::fs::read_to_string(&log).expect("log");
    assert!(log.contains("drain finished: reason=SIGTERM"), "{log}");
}

/// `SO_PEERCRED`: only a process of the same user may take over. Needs
/// root, to run the old instance as `nobody` (skipped otherwise); root
/// itself may connect to any socket file, so both sides' checks are
/// reached: the new echod refuses a running instance of another user, and
/// that instance refuses (and logs) the new one.
#[test]
fn a_process_of_another_user_cannot_take_over() {
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root to run echod as another user");
        return;
    }
    use std::os::unix::process::CommandExt;
    let dir = SocketDir::new("uid");
    let nobody = 65534;
    std::os::unix::fs::chown(&dir.0, Some(nobody), Some(nobody)).expect("chown");
    let path = dir.path("h.sock");
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_echod"));
    cmd.args(["--listen", "127.0.0.1:0", "--drain-timeout", "0.5"])
        .args(["--handover-socket", text(&path)])
        .uid(nobody)
        .gid(nobody);
    let mut old = Echod::spawn_command(cmd, 1);
    let (code, lines) = failed_take_over(&path);
    assert_eq!(code, Some(1), "{lines:#?}");
    assert_one_line(
        &lines,
        "the process listening there runs as uid 65534, not 0",
    );
    let line = old.wait_for_line("take-over refused", LIMIT);
    assert!(
        line.contains("reason=peer runs as uid 0, not as this user"),
        "{line}"
    );
    assert_still_serving(&old);
    stop(old);
}

/// True once process `pid` has a handler for `sig` (`SigCgt` in /proc).
fn catches(pid: i32, sig: i32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (sig - 1)) != 0)
}

/// A drain signal that reaches the new echod before it confirmed: it was
/// asked to stop, so it declines and exits 0, and the old one serves on.
#[test]
fn a_drain_signal_before_the_confirmation_declines_and_the_old_instance_serves_on() {
    let dir = SocketDir::new("declined");
    let path = dir.path("h.sock");
    let mut old = offering(&path, &[]);
    // Stopped, the old echod answers nothing: the new one waits for the
    // sockets (its connect completes in the kernel's backlog).
    old.pause();
    let mut new = Echod::spawn_unready(&["--take-over", text(&path)]);
    let pid = new.pid();
    wait_until(LIMIT, "the new echod's signal handlers", || {
        catches(pid, libc::SIGTERM)
    });
    new.signal(libc::SIGTERM);
    old.resume();
    assert_eq!(new.wait_exit(LIMIT).code(), Some(0), "{}", new.stderr());
    new.wait_for_line("take-over declined", LIMIT);
    let line = old.wait_for_line("take-over refused, still serving", LIMIT);
    assert!(
        line.contains("reason=receiver declined: a drain signal arrived during the take-over"),
        "{line}"
    );
    assert_still_serving(&old);
    stop(old);
}
