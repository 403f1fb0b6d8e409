//! Unit tests of `udp.rs` (docs/protocol.md "UDP echo (RFC 862)"): real
//! loopback sockets for what the kernel does readily (exact echoes of 0 to
//! 65,527 bytes, IPv6, a privileged source port, the shared rate limit), and
//! a scripted socket for what it rarely does on demand (a full send buffer,
//! `ENOBUFS`, interrupted calls, the per-event cap with datagrams left).
//! Kept beside `udp.rs` rather than inside it only to keep both files short.

use super::*;
use std::collections::VecDeque;
use std::net::UdpSocket as StdUdpSocket;
use std::time::Duration;

/// Every wait's limit: generous, for a loaded 2-core machine.
const LIMIT: Duration = Duration::from_secs(10);

fn buffer() -> Vec<u8> {
    vec![0; 64 * 1024]
}

/// Bytes that differ from their neighbours, so a shifted or cut echo shows.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[track_caller]
fn client(addr: &str) -> StdUdpSocket {
    let socket = StdUdpSocket::bind(addr).expect("bind the client socket");
    // A safety net against a hang, not a way to synchronise.
    socket
        .set_read_timeout(Some(LIMIT))
        .expect("set the client's read timeout");
    socket
}

/// Serves `echo` until it has received `count` datagrams in all.
/// Loopback usually delivers within `send_to`, but nothing promises it,
/// so this waits for the datagrams rather than assuming they are there.
#[track_caller]
fn serve_until(echo: &mut UdpEcho, rate: &mut RateLimit, now: Instant, count: u64) -> UdpStats {
    let mut buf = buffer();
    let start = Instant::now();
    loop {
        echo.on_readable(&mut buf, rate, now);
        let stats = echo.stats();
        if stats.received >= count {
            return stats;
        }
        assert!(
            start.elapsed() < LIMIT,
            "waited {LIMIT:?} for {count} datagrams; stats: {stats:?}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[track_caller]
fn receive(client: &StdUdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut buf = buffer();
    let (len, from) = client
        .recv_from(&mut buf)
        .expect("an echo within the limit");
    (buf[..len].to_vec(), from)
}

/// One datagram of `len` bytes from a client at `client_addr` to a
/// socket bound to `server_addr`, echoed byte-exact and from the
/// address the client sent to.
#[track_caller]
fn assert_round_trip(server_addr: &str, client_addr: &str, len: usize) {
    let mut echo = UdpEcho::bind(server_addr.parse().unwrap()).expect("bind the echo socket");
    let target = echo.local_addr();
    assert_ne!(target.port(), 0, "bind reports the real port");
    let mut rate = RateLimit::new(10, Instant::now());
    let client = client(client_addr);
    let sent = pattern(len, 7);
    // A wildcard socket is reached through the client's own loopback address.
    let to = if target.ip().is_unspecified() {
        SocketAddr::new(client.local_addr().unwrap().ip(), target.port())
    } else {
        target
    };
    client.send_to(&sent, to).expect("send the datagram");
    let stats = serve_until(&mut echo, &mut rate, Instant::now(), 1);
    assert_eq!((stats.echoed, stats.dropped_total()), (1, 0), "{stats:?}");
    let (got, from) = receive(&client);
    assert_eq!(got.len(), len);
    assert!(
        got == sent,
        "the echo of {len} bytes differs from what was sent"
    );
    assert_eq!(from.port(), target.port());
}

/// Whether the host has IPv6 loopback; says so on stderr when it has not.
fn ipv6_available() -> bool {
    match StdUdpSocket::bind("[::1]:0") {
        Ok(_) => true,
        Err(err) => {
            eprintln!("skipped: no IPv6 loopback here: {err}");
            false
        }
    }
}

#[test]
fn one_byte_datagram_is_echoed_exactly() {
    assert_round_trip("127.0.0.1:0", "127.0.0.1:0", 1);
}

#[test]
fn largest_ipv4_datagram_is_echoed_exactly() {
    assert_round_trip("127.0.0.1:0", "127.0.0.1:0", 65_507);
}

#[test]
fn empty_datagram_is_echoed_empty() {
    assert_round_trip("127.0.0.1:0", "127.0.0.1:0", 0);
}

#[test]
fn ipv6_datagrams_are_echoed_exactly_up_to_the_largest() {
    if !ipv6_available() {
        return;
    }
    assert_round_trip("[::1]:0", "[::1]:0", 1);
    assert_round_trip("[::1]:0", "[::1]:0", MAX_PAYLOAD);
}

#[test]
fn ipv4_client_of_a_dual_stack_socket_is_answered() {
    // An IPv4 source reaches a `[::]` socket as ::ffff:127.0.0.1; the
    // guard unwraps it and finds an ordinary address.
    if !ipv6_available() {
        return;
    }
    assert_round_trip("[::]:0", "127.0.0.1:0", 100);
}

#[test]
fn source_port_below_1024_is_ignored() {
    // Needs a privileged port: root, or a lowered
    // net.ipv4.ip_unprivileged_port_start. Any free one will do.
    let Some(low) = (600..1024)
        .rev()
        .find_map(|port| StdUdpSocket::bind(("127.0.0.1", port)).ok())
    else {
        eprintln!("skipped: cannot bind a UDP port below 1024 here");
        return;
    };
    let mut echo = UdpEcho::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let mut rate = RateLimit::new(10, Instant::now());
    low.send_to(b"from a system port", echo.local_addr())
        .unwrap();
    let stats = serve_until(&mut echo, &mut rate, Instant::now(), 1);
    assert_eq!(stats.dropped_low_port, 1, "{stats:?}");
    assert_eq!(stats.echoed, 0, "{stats:?}");
    assert_eq!(rate.available(), 10, "a dropped datagram costs no token");
    // No send_to was made (echoed == 0), so nothing can be on its way.
    low.set_nonblocking(true).unwrap();
    let mut buf = [0; 64];
    let err = low
        .recv_from(&mut buf)
        .expect_err("no reply to a port below 1024");
    assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
}

#[test]
fn rate_limit_answers_one_seconds_worth_then_refills() {
    let t0 = Instant::now();
    let mut echo = UdpEcho::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let mut rate = RateLimit::new(5, t0);
    let client = client("127.0.0.1:0");
    let target = echo.local_addr();
    let send = |tags: std::ops::Range<u8>| {
        for tag in tags {
            client.send_to(&[tag; 10], target).unwrap();
        }
    };
    // A burst of 8 at one instant: the full bucket answers 5.
    send(0..8);
    let stats = serve_until(&mut echo, &mut rate, t0, 8);
    assert_eq!((stats.echoed, stats.dropped_rate), (5, 3), "{stats:?}");
    // 0.4 s at 5 a second earns 2 more.
    send(8..13);
    let stats = serve_until(&mut echo, &mut rate, t0 + Duration::from_millis(400), 13);
    assert_eq!((stats.echoed, stats.dropped_rate), (7, 6), "{stats:?}");
    // A second or more later the bucket is full again, and no fuller.
    send(13..20);
    let stats = serve_until(&mut echo, &mut rate, t0 + Duration::from_secs(30), 20);
    assert_eq!((stats.echoed, stats.dropped_rate), (12, 8), "{stats:?}");
    assert_eq!(stats.received, stats.echoed + stats.dropped_total());
    // The answered ones are the first of each burst, in order.
    let tags: Vec<u8> = (0..12).map(|_| receive(&client).0[0]).collect();
    assert_eq!(tags, [0, 1, 2, 3, 4, 8, 9, 13, 14, 15, 16, 17]);
}

#[test]
fn rate_limit_is_shared_across_sockets() {
    let now = Instant::now();
    let mut rate = RateLimit::new(3, now);
    let mut first = UdpEcho::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let mut second = UdpEcho::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let client = client("127.0.0.1:0");
    for echo in [&first, &second] {
        for _ in 0..2 {
            client.send_to(b"x", echo.local_addr()).unwrap();
        }
    }
    let total =
        serve_until(&mut first, &mut rate, now, 2) + serve_until(&mut second, &mut rate, now, 2);
    assert_eq!((total.echoed, total.dropped_rate), (3, 1), "{total:?}");
}

/// A scripted socket: queued datagrams or receive errors, then
/// `WouldBlock`; send outcomes taken in order, success once they run out.
#[derive(Default)]
struct Fake {
    inbox: VecDeque<io::Result<(Vec<u8>, SocketAddr)>>,
    send_errors: VecDeque<Option<io::Error>>,
    sent: Vec<(Vec<u8>, SocketAddr)>,
}

impl DatagramSocket for Fake {
    fn recv_from(&mut self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        let (data, from) = self
            .inbox
            .pop_front()
            .unwrap_or_else(|| Err(io::ErrorKind::WouldBlock.into()))?;
        let len = data.len().min(buf.len());
        buf[..len].copy_from_slice(&data[..len]);
        Ok((len, from))
    }
    fn send_to(&mut self, buf: &[u8], target: SocketAddr) -> io::Result<usize> {
        if let Some(Some(err)) = self.send_errors.pop_front() {
            return Err(err);
        }
        self.sent.push((buf.to_vec(), target));
        Ok(buf.len())
    }
}

fn peer() -> SocketAddr {
    "192.0.2.1:40000".parse().unwrap()
}

fn fake_with(datagrams: usize) -> UdpEcho<Fake> {
    let mut fake = Fake::default();
    for i in 0..datagrams {
        fake.inbox.push_back(Ok((vec![i as u8; 3], peer())));
    }
    UdpEcho::new(fake, "127.0.0.1:7".parse().unwrap())
}

#[test]
fn reading_stops_at_the_per_event_cap_and_asks_for_another_turn() {
    let now = Instant::now();
    let mut rate = RateLimit::new(0, now);
    let mut echo = fake_with(DATAGRAMS_PER_EVENT + 3);
    let mut buf = buffer();
    assert_eq!(echo.on_readable(&mut buf, &mut rate, now), Readable::Capped);
    assert_eq!(echo.stats().received, DATAGRAMS_PER_EVENT as u64);
    assert_eq!(
        echo.on_readable(&mut buf, &mut rate, now),
        Readable::Drained
    );
    assert_eq!(echo.stats().echoed, DATAGRAMS_PER_EVENT as u64 + 3);
    assert_eq!(echo.socket.sent.len(), DATAGRAMS_PER_EVENT + 3);
}

#[test]
fn reply_the_kernel_will_not_take_is_dropped_and_counted() {
    let now = Instant::now();
    let mut rate = RateLimit::new(1, now);
    let mut echo = fake_with(3);
    echo.socket.send_errors.extend([
        Some(io::ErrorKind::WouldBlock.into()),
        Some(io::Error::from_raw_os_error(libc::ENOBUFS)),
    ]);
    let mut buf = buffer();
    assert_eq!(
        echo.on_readable(&mut buf, &mut rate, now),
        Readable::Drained
    );
    let stats = echo.stats();
    assert_eq!(
        (stats.dropped_kernel_full, stats.echoed),
        (2, 1),
        "{stats:?}"
    );
    // The refused replies gave their token back: the one-token bucket
    // still answered the third datagram.
    assert_eq!(echo.socket.sent, [(vec![2; 3], peer())]);
}

#[test]
fn other_send_failures_are_counted_apart() {
    let now = Instant::now();
    let mut rate = RateLimit::new(0, now);
    let mut echo = fake_with(2);
    echo.socket
        .send_errors
        .push_back(Some(io::Error::from_raw_os_error(libc::ENETUNREACH)));
    echo.on_readable(&mut buffer(), &mut rate, now);
    let stats = echo.stats();
    assert_eq!(
        (stats.dropped_send_failed, stats.echoed),
        (1, 1),
        "{stats:?}"
    );
}

#[test]
fn interrupted_calls_are_retried() {
    let now = Instant::now();
    let mut rate = RateLimit::new(0, now);
    let mut echo = fake_with(1);
    echo.socket
        .inbox
        .push_front(Err(io::ErrorKind::Interrupted.into()));
    echo.socket
        .send_errors
        .push_back(Some(io::ErrorKind::Interrupted.into()));
    echo.on_readable(&mut buffer(), &mut rate, now);
    let stats = echo.stats();
    assert_eq!((stats.received, stats.echoed), (1, 1), "{stats:?}");
    assert_eq!(stats.receive_errors, 0);
}

#[test]
fn receive_error_ends_the_turn_and_is_counted() {
    let now = Instant::now();
    let mut rate = RateLimit::new(0, now);
    let mut echo = fake_with(1);
    echo.socket
        .inbox
        .push_front(Err(io::Error::from_raw_os_error(libc::ENOMEM)));
    assert_eq!(
        echo.on_readable(&mut buffer(), &mut rate, now),
        Readable::Drained
    );
    assert_eq!(echo.stats().receive_errors, 1);
    assert_eq!(echo.stats().received, 0);
    // The datagram behind the error is served on the next turn.
    echo.on_readable(&mut buffer(), &mut rate, now);
    assert_eq!(echo.stats().echoed, 1);
}

#[test]
fn every_drop_is_counted_once_and_the_counters_add_up() {
    let now = Instant::now();
    let mut rate = RateLimit::new(1, now);
    let mut fake = Fake::default();
    for from in [
        "192.0.2.1:7",              // low port
        "255.255.255.255:40000",    // broadcast
        "[::ffff:224.0.0.1]:40000", // mapped multicast
        "192.0.2.1:40000",          // answered: the one token
        "192.0.2.1:40001",          // over the rate
    ] {
        fake.inbox
            .push_back(Ok((b"x".to_vec(), from.parse().unwrap())));
    }
    let mut echo = UdpEcho::new(fake, "127.0.0.1:7".parse().unwrap());
    echo.on_readable(&mut buffer(), &mut rate, now);
    let stats = echo.stats();
    let by_reason: Vec<(&str, u64)> = DropReason::ALL
        .iter()
        .map(|&r| (r.as_str(), stats.dropped(r)))
        .collect();
    assert_eq!(
        by_reason,
        [
            ("low_port", 1),
            ("bad_source", 2),
            ("rate", 1),
            ("kernel_full", 0),
            ("send_failed", 0)
        ]
    );
    assert_eq!((stats.received, stats.echoed), (5, 1));
    assert_eq!(stats.received, stats.echoed + stats.dropped_total());
    let sum: UdpStats = [stats, stats].into_iter().sum();
    assert_eq!(sum.received, 10);
    assert_eq!(sum.dropped_bad_source, 4);
    assert_eq!(sum.received, sum.echoed + sum.dropped_total());
}

#[test]
fn sources_that_cannot_be_real_senders_are_refused() {
    for source in [
        "255.255.255.255:40000",
        "224.0.0.1:40000",
        "239.255.255.250:40000",
        "0.0.0.0:40000",
        "[ff02::1]:40000",
        "[::]:40000",
        "[::ffff:255.255.255.255]:40000",
        "[::ffff:224.0.0.251]:40000",
        "[::ffff:0.0.0.0]:40000",
    ] {
        let source: SocketAddr = source.parse().unwrap();
        assert_eq!(
            reflection_risk(source),
            Some(DropReason::BadSource),
            "{source}"
        );
    }
    for source in [
        "192.0.2.1:0",
        "192.0.2.1:7",
        "[::1]:19",
        "[::ffff:127.0.0.1]:1023",
    ] {
        let source: SocketAddr = source.parse().unwrap();
        assert_eq!(
            reflection_risk(source),
            Some(DropReason::LowPort),
            "{source}"
        );
    }
}

#[test]
fn ordinary_sources_are_answered() {
    // 192.0.2.255 may be a subnet's broadcast, but only routing tables
    // know; see `reflection_risk`.
    for source in [
        "127.0.0.1:1024",
        "192.0.2.255:40000",
        "[::1]:65535",
        "[::ffff:127.0.0.1]:40000",
        "[fe80::1%1]:40000",
    ] {
        let source: SocketAddr = source.parse().unwrap();
        assert_eq!(reflection_risk(source), None, "{source}");
    }
}

#[test]
fn bucket_refills_in_proportion_to_elapsed_time() {
    let t0 = Instant::now();
    let mut rate = RateLimit::new(1000, t0);
    for _ in 0..1000 {
        assert!(rate.try_take());
    }
    assert!(!rate.try_take(), "one second's worth, no more");
    // 1.5 ms in three uneven steps at 1000/s: exactly one and a half
    // tokens, no fraction lost between the steps.
    rate.refill(t0 + Duration::from_micros(700));
    rate.refill(t0 + Duration::from_micros(1100));
    rate.refill(t0 + Duration::from_micros(1500));
    assert_eq!(rate.available(), 1);
    assert!(rate.try_take());
    rate.refill(t0 + Duration::from_micros(2000));
    assert_eq!(rate.available(), 1, "the half token was kept");
}

#[test]
fn bucket_never_holds_more_than_one_second() {
    let t0 = Instant::now();
    let mut rate = RateLimit::new(3, t0);
    rate.refill(t0 + Duration::from_secs(3600));
    assert_eq!(rate.available(), 3);
    rate.give_back();
    assert_eq!(rate.available(), 3);
}

#[test]
fn earlier_now_adds_nothing_and_does_not_rewind() {
    let t0 = Instant::now() + Duration::from_secs(10);
    let mut rate = RateLimit::new(10, t0);
    while rate.try_take() {}
    rate.refill(t0 - Duration::from_secs(5));
    assert_eq!(rate.available(), 0);
    // Had the earlier instant been taken as the last refill, this
    // would earn 5.5 seconds' worth instead of half a second's.
    rate.refill(t0 + Duration::from_millis(500));
    assert_eq!(rate.available(), 5);
}

#[test]
fn zero_rate_means_no_limit() {
    let now = Instant::now();
    let mut rate = RateLimit::new(0, now);
    for _ in 0..100_000 {
        assert!(rate.try_take());
    }
}

#[test]
fn largest_rate_does_not_overflow() {
    let t0 = Instant::now();
    let mut rate = RateLimit::new(u32::MAX, t0);
    assert_eq!(rate.available(), u64::from(u32::MAX));
    assert!(rate.try_take());
    rate.refill(t0 + Duration::from_secs(1_000_000));
    assert_eq!(rate.available(), u64::from(u32::MAX));
}
