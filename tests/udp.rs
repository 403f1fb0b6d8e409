//! UDP echo against the real binary (docs/protocol.md "UDP echo (RFC 862)"):
//! byte-exact datagrams up to the largest IPv4 and IPv6 sizes, the
//! reflection guards (a privileged source port, the reply rate) and their
//! counters, the readiness lines, a bind failure, and the drain closing the
//! sockets. The guards that need forged sources (broadcast, multicast) and
//! a kernel refusing a reply are unit-tested in `src/udp/tests.rs`.

mod common;

use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::process::{Command, Stdio};
use std::time::Instant;

use common::{Echod, LIMIT, field, random_bytes, read_to_eof, wait_until};

/// The largest UDP payload over IPv4: 65,535 minus the IP and UDP headers.
const MAX_IPV4: usize = 65_507;
/// The largest over IPv6 (no jumbograms): 65,535 minus the UDP header.
const MAX_IPV6: usize = 65_527;

/// A client socket bound to `addr`, with a read timeout as a safety net
/// against a hang (never as a way to wait for something).
#[track_caller]
fn client(addr: &str) -> UdpSocket {
    let socket = UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind a client on {addr}: {e}"));
    socket.set_read_timeout(Some(LIMIT)).expect("read timeout");
    socket
}

/// Sends `payload` to `server` and returns the reply, checking it came
/// from the address the datagram was sent to.
#[track_caller]
fn round_trip(client: &UdpSocket, server: SocketAddr, payload: &[u8]) -> Vec<u8> {
    client.send_to(payload, server).expect("send a datagram");
    let mut buf = vec![0; 64 * 1024];
    let (len, from) = client
        .recv_from(&mut buf)
        .unwrap_or_else(|e| panic!("no echo of {} bytes: {e}", payload.len()));
    assert_eq!(from, server, "the echo comes from the address sent to");
    buf.truncate(len);
    buf
}

/// Asks for stats lines until `udp_received` reaches `count` (every
/// datagram sent so far was read and answered or dropped) and returns that
/// line: the server's own count is the barrier, not a pause.
#[track_caller]
fn stats_once_received(echod: &mut Echod, count: u64) -> String {
    let deadline = Instant::now() + LIMIT;
    loop {
        let line = echod.stats();
        if field(&line, "udp_received") >= count {
            return line;
        }
        if Instant::now() >= deadline {
            echod.fail(&format!("did not receive {count} datagrams: {line}"));
        }
    }
}

/// True when this machine has IPv6 loopback; a test that needs it says
/// why it is skipped otherwise.
fn ipv6_loopback() -> bool {
    UdpSocket::bind("[::1]:0").is_ok()
}

#[test]
fn one_byte_and_largest_ipv4_datagrams_come_back_exact() {
    let echod = Echod::spawn(&["--udp", "127.0.0.1:0"]);
    let server = echod.udp_addr();
    let client = client("127.0.0.1:0");
    for (len, seed) in [(1, 1), (1400, 2), (MAX_IPV4, 3)] {
        let sent = random_bytes(len, seed);
        let back = round_trip(&client, server, &sent);
        assert_eq!(back.len(), len, "echo of {len} bytes has the same length");
        assert!(
            back == sent,
            "echo of {len} bytes differs from what was sent"
        );
    }
}

#[test]
fn largest_ipv6_datagram_comes_back_exact() {
    if !ipv6_loopback() {
        eprintln!("skipped: no IPv6 loopback ([::1]) on this machine");
        return;
    }
    let echod = Echod::spawn(&["--udp", "[::1]:0"]);
    let server = echod.udp_addr();
    assert!(server.is_ipv6(), "{server}");
    let client = client("[::1]:0");
    for (len, seed) in [(1, 4), (MAX_IPV4 + 1, 5), (MAX_IPV6, 6)] {
        let sent = random_bytes(len, seed);
        let back = round_trip(&client, server, &sent);
        assert_eq!(back.len(), len, "echo of {len} bytes has the same length");
        assert!(
            back == sent,
            "echo of {len} bytes differs from what was sent"
        );
    }
}

#[test]
fn every_udp_socket_announces_its_real_port_after_the_tcp_listener() {
    let mut echod = Echod::spawn(&["--udp", "127.0.0.1:0", "--udp=127.0.0.1:0"]);
    let udp = echod.udp_addrs().to_vec();
    assert_eq!(udp.len(), 2);
    assert!(udp.iter().all(|a| a.port() != 0), "{udp:?}");
    assert_ne!(udp[0], udp[1]);
    let tcp_line = echod.wait_for_line("listening on ", LIMIT);
    assert!(
        !tcp_line.contains("proto=udp"),
        "TCP comes first: {tcp_line}"
    );
    let pid = format!("pid={}", echod.pid());
    for addr in &udp {
        let line = echod.wait_for_line(&format!("listening on {addr} proto=udp"), LIMIT);
        assert!(line.ends_with(&pid), "{line}");
    }
    let client = client("127.0.0.1:0");
    for (i, &addr) in udp.iter().enumerate() {
        assert_eq!(round_trip(&client, addr, &[i as u8]), [i as u8]);
    }
    // TCP is served on the same loop.
    let mut stream = echod.connect();
    assert_eq!(common::round_trip(&mut stream, b"tcp too"), b"tcp too");
}

#[test]
fn datagram_from_a_source_port_below_1024_gets_no_reply() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: binding a source port below 1024 needs root");
        return;
    }
    let mut echod = Echod::spawn(&["--udp", "127.0.0.1:0"]);
    let server = echod.udp_addr();
    let Some(low) = (600..1024).find_map(|port| UdpSocket::bind(("127.0.0.1", port)).ok()) else {
        eprintln!("skipped: every port from 600 to 1023 is taken");
        return;
    };
    low.send_to(b"from a system port", server).expect("send");
    // An ordinary client's echo, sent after it to the same socket, is the
    // proof that the server has read the first one.
    let ordinary = client("127.0.0.1:0");
    assert_eq!(round_trip(&ordinary, server, b"after"), b"after");
    let line = stats_once_received(&mut echod, 2);
    assert_eq!(field(&line, "udp_echoed"), 1, "{line}");
    assert_eq!(field(&line, "udp_dropped_low_port"), 1, "{line}");
    // Had it been answered, that reply would have been sent before the
    // ordinary client's echo: the socket's queue is empty, not just slow.
    low.set_nonblocking(true).expect("non-blocking");
    let mut buf = [0; 64];
    match low.recv_from(&mut buf) {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        other => panic!("a system port got an answer: {other:?}"),
    }
}

#[test]
fn replies_beyond_the_rate_limit_are_dropped_and_counted() {
    const RATE: u64 = 50;
    const SENT: u64 = 500;
    let mut echod = Echod::spawn(&["--udp", "127.0.0.1:0", "--udp-max-rate", "50"]);
    let server = echod.udp_addr();
    let client = client("127.0.0.1:0");
    let started = Instant::now();
    // In chunks, each read by the server before the next, so no datagram is
    // lost to a full receive buffer: the kernel's drops are not ours to count.
    for chunk in 0..SENT / 50 {
        for i in 0..50 {
            let seq = (chunk * 50 + i) as u32;
            client.send_to(&seq.to_be_bytes(), server).expect("send");
        }
        stats_once_received(&mut echod, (chunk + 1) * 50);
    }
    let line = stats_once_received(&mut echod, SENT);
    let elapsed = started.elapsed();
    let echoed = field(&line, "udp_echoed");
    assert_eq!(field(&line, "udp_received"), SENT, "{line}");
    assert_eq!(field(&line, "udp_dropped_rate"), SENT - echoed, "{line}");
    // A full bucket (one second's worth) answers the first burst; after
    // that, refills at RATE a second for as long as the test took.
    let most = RATE + (RATE as f64 * elapsed.as_secs_f64()).ceil() as u64 + 1;
    assert!(
        (RATE..=most).contains(&echoed),
        "{echoed} replies in {elapsed:?}; expected {RATE} to {most}: {line}"
    );
    // Every reply the server counted arrives, each a datagram we sent, once.
    let mut seen = std::collections::HashSet::new();
    let mut buf = [0; 16];
    for _ in 0..echoed {
        let (len, from) = client.recv_from(&mut buf).expect("a counted reply");
        assert_eq!((len, from), (4, server));
        let seq = u32::from_be_bytes(buf[..4].try_into().unwrap());
        assert!(u64::from(seq) < SENT && seen.insert(seq), "reply {seq}");
    }
    client.set_nonblocking(true).expect("non-blocking");
    match client.recv_from(&mut buf) {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        other => panic!("more replies than the server counted: {other:?}"),
    }
}

#[test]
fn the_drain_closes_the_udp_sockets_and_the_final_line_counts_them() {
    let mut echod = Echod::spawn(&["--udp", "127.0.0.1:0", "--drain-timeout", "30"]);
    let server = echod.udp_addr();
    // A TCP connection keeps the drain going while the test looks at UDP.
    let mut stream = echod.connect();
    assert_eq!(common::round_trip(&mut stream, b"hold"), b"hold");
    let client = client("127.0.0.1:0");
    client.connect(server).expect("connect the UDP client");
    client.send(b"before").expect("send");
    let mut buf = [0; 64];
    let len = client.recv(&mut buf).expect("echo before the drain");
    assert_eq!(&buf[..len], b"before");

    echod.signal(libc::SIGTERM);
    echod.wait_for_line("drain started", LIMIT);
    // The socket was closed before that line: the kernel now answers a
    // datagram with ICMP port unreachable, which a connected socket reports
    // as ECONNREFUSED (on this send if an earlier one is pending, else on
    // the receive).
    let refused = client
        .send(b"after")
        .and_then(|_| client.recv(&mut buf).map(|_| ()));
    match refused {
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => {}
        other => echod.fail(&format!("a datagram after drain start got {other:?}")),
    }

    let got = read_to_eof(&mut stream);
    assert_eq!(got, b"SHUTDOWN");
    drop(stream);
    let status = echod.wait_exit(LIMIT);
    assert!(status.success(), "{status:?}\n{}", echod.stderr());
    let last = echod.wait_for_line("drain finished", LIMIT);
    assert_eq!(field(&last, "udp_received"), 1, "{last}");
    assert_eq!(field(&last, "udp_echoed"), 1, "{last}");
    assert_eq!(field(&last, "udp_dropped_rate"), 0, "{last}");
}

#[test]
fn udp_is_served_through_the_lame_duck_and_closed_when_the_drain_begins() {
    let mut echod = Echod::spawn(&["--udp", "127.0.0.1:0", "--drain-delay", "30"]);
    let client = client("127.0.0.1:0");
    client
        .connect(echod.udp_addr())
        .expect("connect the UDP client");
    let mut buf = [0; 64];
    echod.signal(libc::SIGTERM);
    echod.wait_for_line("lame duck started", LIMIT);
    client.send(b"lame duck").expect("send");
    let len = client.recv(&mut buf).expect("an echo during the lame duck");
    assert_eq!(&buf[..len], b"lame duck");
    // A second signal starts the drain at once, and with it the close.
    echod.signal(libc::SIGTERM);
    echod.wait_for_line("drain started", LIMIT);
    let refused = client
        .send(b"draining")
        .and_then(|_| client.recv(&mut buf).map(|_| ()));
    match refused {
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => {}
        other => echod.fail(&format!("a datagram after drain start got {other:?}")),
    }
    assert!(echod.wait_exit(LIMIT).success());
}

/// Runs echod with `args` to its exit (it must not start serving) and
/// returns its exit code and stderr lines.
#[track_caller]
fn run_to_exit(args: &[&str]) -> (Option<i32>, Vec<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_echod"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn echod");
    let mut status = None;
    wait_until(LIMIT, "echod to exit", || {
        status = child.try_wait().expect("try_wait");
        status.is_some()
    });
    let mut stderr = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .expect("stderr piped")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    let lines = stderr.lines().map(str::to_owned).collect();
    (status.and_then(|s| s.code()), lines)
}

#[test]
fn a_udp_address_in_use_is_one_line_and_exit_1() {
    let taken = UdpSocket::bind("127.0.0.1:0").expect("take a port");
    let addr = taken.local_addr().expect("its address").to_string();
    let (code, lines) = run_to_exit(&["--listen", "127.0.0.1:0", "--udp", &addr]);
    assert_eq!(code, Some(1), "{lines:?}");
    assert_eq!(
        lines,
        vec![format!(
            "echod: cannot listen on {addr} (udp): address in use"
        )]
    );
}

#[test]
fn a_udp_rate_limit_of_zero_is_a_usage_error() {
    let (code, lines) = run_to_exit(&["--udp", "127.0.0.1:0", "--udp-max-rate", "0"]);
    assert_eq!(code, Some(2), "{lines:?}");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains("--udp-max-rate \"0\": must be at least 1"),
        "{lines:?}"
    );
}

#[test]
fn udp_fields_stay_out_of_the_stats_line_without_udp() {
    let mut echod = Echod::spawn(&[]);
    let line = echod.stats();
    assert!(!line.contains("udp_"), "{line}");
}
