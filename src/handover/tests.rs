//! Tests of the take-over module as a whole: the wire format, the socket
//! file, and real exchanges between both sides over real Unix sockets in a
//! temporary directory, passing real listeners on 127.0.0.1:0
//! (docs/protocol.md "Operations", take-over).
//!
//! The old side runs on a tiny `Poll` of its own, registering exactly as a
//! [`Step`] says (what the server loop will do), or is stepped by hand with
//! made-up instants where a deadline is under test. The new side runs on a
//! thread, because [`take_over`] blocks.

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::os::unix::net::{UnixListener as StdUnixListener, UnixStream as StdUnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token};

use super::*;

const TIMEOUT: Duration = Duration::from_secs(5);
const LISTENER: Token = Token(0);
const CONN: Token = Token(1);

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// A private temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("echod-ho-{}-{seq}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir(&dir).expect("create temp dir");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).expect("chmod temp dir");
        TempDir(dir)
    }

    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The old instance's sockets: a TCP listener, a UDP socket, a health listener.
struct Sockets {
    tcp: TcpListener,
    udp: UdpSocket,
    health: TcpListener,
}

impl Sockets {
    fn new() -> Sockets {
        let sockets = Sockets {
            tcp: TcpListener::bind("127.0.0.1:0").expect("bind tcp"),
            udp: UdpSocket::bind("127.0.0.1:0").expect("bind udp"),
            health: TcpListener::bind("127.0.0.1:0").expect("bind health"),
        };
        sockets.tcp.set_nonblocking(true).expect("nonblocking");
        sockets.udp.set_nonblocking(true).expect("nonblocking");
        sockets.health.set_nonblocking(true).expect("nonblocking");
        sockets
    }

    fn shared(&self) -> Vec<Shared<'_>> {
        let addr = |r: std::io::Result<SocketAddr>| r.expect("local addr");
        vec![
            Shared {
                kind: Kind::Tcp,
                addr: addr(self.tcp.local_addr()),
                fd: self.tcp.as_fd(),
            },
            Shared {
                kind: Kind::Udp,
                addr: addr(self.udp.local_addr()),
                fd: self.udp.as_fd(),
            },
            Shared {
                kind: Kind::Health,
                addr: addr(self.health.local_addr()),
                fd: self.health.as_fd(),
            },
        ]
    }
}

/// The old side on a tiny `Poll`, registered the way the server loop will.
struct OldSide {
    handover: HandoverListener,
    poll: Poll,
}

impl OldSide {
    fn bind(path: &Path) -> OldSide {
        let mut handover = HandoverListener::bind(path, TIMEOUT).expect("bind handover socket");
        let poll = Poll::new().expect("poll");
        poll.registry()
            .register(handover.listener_mut(), LISTENER, Interest::READABLE)
            .expect("register listener");
        OldSide { handover, poll }
    }

    /// Serves until one exchange ends, lending `sockets`; returns how it ended.
    #[track_caller]
    fn serve_one(&mut self, sockets: &[Shared<'_>]) -> Step {
        let limit = Instant::now() + Duration::from_secs(20);
        let mut events = Events::with_capacity(8);
        while Instant::now() < limit {
            let timeout = self
                .handover
                .next_wakeup()
                .map(|at| at.saturating_duration_since(Instant::now()));
            self.poll
                .poll(
                    &mut events,
                    Some(timeout.unwrap_or(Duration::from_millis(200))),
                )
                .expect("poll");
            let now = Instant::now();
            let mut steps = Vec::new();
            for event in events.iter() {
                steps.push(match event.token() {
                    LISTENER => self.handover.accept_ready(now),
                    _ => self.handover.connection_ready(now, sockets),
                });
            }
            steps.push(self.handover.on_clock(now));
            for step in steps {
                if let Some(end) = self.apply(step) {
                    return end;
                }
            }
        }
        panic!("no exchange ended within 20s");
    }

    /// Does what `step` asks of the loop; `Some` when the exchange ended.
    fn apply(&mut self, step: Step) -> Option<Step> {
        let registry = self.poll.registry();
        match step {
            Step::Idle => None,
            Step::Register(interest) => {
                let conn = self
                    .handover
                    .connection_mut()
                    .expect("connection to register");
                registry.register(conn, CONN, interest).expect("register");
                None
            }
            Step::Keep(interest) => {
                let conn = self
                    .handover
                    .connection_mut()
                    .expect("connection to reregister");
                registry
                    .reregister(conn, CONN, interest)
                    .expect("reregister");
                None
            }
            Step::Refused(_) => {
                let conn = self.handover.connection_mut().expect("connection to close");
                registry.deregister(conn).expect("deregister");
                self.handover.close_connection();
                Some(step)
            }
            Step::HandedOver => {
                let conn = self.handover.connection_mut().expect("connection");
                registry.deregister(conn).expect("deregister");
                Some(step)
            }
        }
    }

    /// What the loop does after `HandedOver`: deregister, then drop (the
    /// listener closes before the connection).
    fn let_go(mut self) {
        self.poll
            .registry()
            .deregister(self.handover.listener_mut())
            .expect("deregister listener");
        drop(self.handover);
    }
}

/// True when both descriptors name the same open socket.
fn same_socket(a: &impl AsRawFd, b: &impl AsRawFd) -> bool {
    let link = |fd: i32| fs::read_link(format!("/proc/self/fd/{fd}")).expect("readlink");
    link(a.as_raw_fd()) == link(b.as_raw_fd())
}

/// What a new side kept after it confirmed.
#[derive(Debug)]
struct Taken {
    listeners: Vec<(SocketAddr, TcpListener)>,
    udp: Vec<(SocketAddr, UdpSocket)>,
    health: Option<(SocketAddr, TcpListener)>,
}

/// A new side on a thread: takes over, then confirms.
fn spawn_new_side(path: &Path) -> thread::JoinHandle<Result<Taken, TakeOverError>> {
    let path = path.to_owned();
    thread::spawn(move || {
        let Received {
            listeners,
            udp,
            health,
            confirm,
        } = take_over(&path, TIMEOUT)?;
        confirm.confirm()?;
        Ok(Taken {
            listeners,
            udp,
            health,
        })
    })
}

/// A client that speaks the protocol by hand.
fn raw_client(path: &Path) -> StdUnixStream {
    let stream = StdUnixStream::connect(path).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    stream
}

/// Reads one whole message (and its descriptors) from a raw client.
#[track_caller]
fn read_message(stream: &StdUnixStream) -> (Message, Vec<OwnedFd>) {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut filled = 0;
    let mut fds = Vec::new();
    loop {
        let (n, more) = crate::sys::recv_with_fds(stream, &mut buf[filled..], MAX_SOCKETS)
            .expect("recv message");
        fds.extend(more);
        assert_ne!(n, 0, "end-of-stream before a whole message");
        filled += n;
        if let Some((message, used)) = decode(&buf[..filled]).expect("a message") {
            assert_eq!(used, filled);
            return (message, fds);
        }
    }
}

/// A fake old instance: accepts one connection, reads the request, sends
/// `reply` with `fds`, and returns what the peer sent afterwards, until it left.
fn fake_old(path: &Path, reply: Vec<u8>, fds: Vec<OwnedFd>) -> thread::JoinHandle<Vec<u8>> {
    let listener = StdUnixListener::bind(path).expect("bind fake");
    thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accept");
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("read timeout");
        let mut request = [0u8; HEADER_LEN];
        conn.read_exact(&mut request).expect("request");
        assert_eq!(request, encode_request());
        let borrowed: Vec<_> = fds.iter().map(|fd| fd.as_fd()).collect();
        if !reply.is_empty() {
            crate::sys::send_with_fds(&conn, &reply, &borrowed).expect("reply");
        }
        let mut after = Vec::new();
        let _ = conn.read_to_end(&mut after);
        after
    })
}

#[track_caller]
fn take_over_error(path: &Path, timeout: Duration) -> String {
    match take_over(path, timeout) {
        Ok(_) => panic!("take-over from {} succeeded", path.display()),
        Err(err) => err.to_string(),
    }
}

// ---------------------------------------------------------------------------
// Wire format
// ---------------------------------------------------------------------------

fn records() -> Vec<Record> {
    vec![
        Record {
            kind: Kind::Tcp,
            addr: "127.0.0.1:9999".parse().expect("addr"),
        },
        Record {
            kind: Kind::Udp,
            addr: "[::1]:7".parse().expect("addr"),
        },
        Record {
            kind: Kind::Health,
            addr: "[fe80::1%3]:8080".parse().expect("addr"),
        },
    ]
}

#[test]
fn offer_round_trips_every_kind_and_family() {
    let offer = encode_offer(&records()).expect("offer");
    assert_eq!(offer.len(), HEADER_LEN + 3 * RECORD_LEN);
    assert_eq!(&offer[..6], b"echd\x01\x02");
    assert_eq!(
        decode(&offer),
        Ok(Some((Message::Offer(records()), offer.len())))
    );
}

#[test]
fn small_messages_round_trip() {
    assert_eq!(decode(&encode_request()), Ok(Some((Message::Request, 8))));
    assert_eq!(decode(&encode_confirm()), Ok(Some((Message::Confirm, 8))));
    let refuse = encode_refuse("not today");
    assert_eq!(
        decode(&refuse),
        Ok(Some((
            Message::Refuse("not today".to_owned()),
            refuse.len()
        )))
    );
}

#[test]
fn decode_waits_for_a_whole_message() {
    let offer = encode_offer(&records()).expect("offer");
    for cut in 0..offer.len() {
        assert_eq!(decode(&offer[..cut]), Ok(None), "prefix of {cut} bytes");
    }
}

#[test]
fn decode_rejects_garbage_at_the_first_wrong_byte() {
    assert_eq!(decode(b"G"), Err(WireError::BadGreeting));
    assert_eq!(
        decode(b"GET / HTTP/1.0\r\n\r\n"),
        Err(WireError::BadGreeting)
    );
    assert_eq!(decode(b"ech!"), Err(WireError::BadGreeting));
    assert_eq!(
        WireError::BadGreeting.to_string(),
        "peer is not echod (bad greeting)"
    );
}

#[test]
fn decode_rejects_other_versions_unknown_types_and_impossible_lengths() {
    let with = |version: u8, kind: u8, len: u16| {
        let mut h = header(kind, usize::from(len));
        h[4] = version;
        h
    };
    assert_eq!(decode(&with(2, 1, 0)), Err(WireError::Version(2)));
    assert_eq!(
        WireError::Version(2).to_string(),
        "peer speaks hand-over version 2, this echod speaks 1"
    );
    assert_eq!(decode(&with(1, 9, 0)), Err(WireError::UnknownType(9)));
    for (kind, len) in [
        (kind_byte::REQUEST, 1),
        (kind_byte::CONFIRM, 24),
        (kind_byte::OFFER, 0),
        (kind_byte::OFFER, 25),
        (kind_byte::OFFER, 254 * 24),
        (kind_byte::OFFER, u16::MAX - (u16::MAX % 24)),
        (kind_byte::REFUSE, 0),
        (kind_byte::REFUSE, 201),
    ] {
        assert_eq!(
            decode(&with(1, kind, len)),
            Err(WireError::BadLength {
                kind,
                len: usize::from(len)
            })
        );
    }
}

#[test]
fn decode_rejects_records_that_do_not_parse() {
    let offer = encode_offer(&records()).expect("offer");
    let broken = |at: usize, byte: u8| {
        let mut bad = offer.clone();
        bad[at] = byte;
        decode(&bad)
    };
    let detail = |index, detail| Err(WireError::BadRecord { index, detail });
    assert_eq!(broken(HEADER_LEN, 0), detail(0, "unknown socket kind"));
    assert_eq!(
        broken(HEADER_LEN + 1, 5),
        detail(0, "unknown address family")
    );
    // Record 0 is IPv4: a byte set past its 4 address bytes is garbage.
    assert_eq!(
        broken(HEADER_LEN + 20, 1),
        detail(0, "IPv4 record with IPv6 bytes set")
    );
    assert_eq!(
        broken(HEADER_LEN + RECORD_LEN + 1, 4),
        detail(1, "IPv4 record with IPv6 bytes set")
    );
}

#[test]
fn an_offer_carries_1_to_253_sockets() {
    let one = records()[0];
    assert_eq!(encode_offer(&[]), None);
    assert_eq!(encode_offer(&vec![one; 254]), None);
    let full = encode_offer(&vec![one; 253]).expect("253 sockets");
    assert_eq!(
        decode(&full),
        Ok(Some((Message::Offer(vec![one; 253]), full.len())))
    );
}

#[test]
fn refusal_reasons_are_cut_at_200_bytes_on_a_character_boundary() {
    let long = "é".repeat(150); // 300 bytes
    let message = encode_refuse(&long);
    let Ok(Some((Message::Refuse(reason), _))) = decode(&message) else {
        panic!("not a refusal");
    };
    assert_eq!(reason, "é".repeat(100));
    assert_eq!(
        decode(&encode_refuse("")),
        Ok(Some((Message::Refuse("refused".to_owned()), 15)))
    );
}

// ---------------------------------------------------------------------------
// The socket file
// ---------------------------------------------------------------------------

#[test]
fn socket_file_is_created_with_mode_0600() {
    let dir = TempDir::new();
    let path = dir.join("handover.sock");
    let _old = OldSide::bind(&path);
    let meta = fs::symlink_metadata(&path).expect("stat");
    assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
    assert!(std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()));
    // No temporary file is left beside it.
    let names: Vec<_> = fs::read_dir(&dir.0)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names, ["handover.sock"]);
}

#[test]
fn stale_socket_file_is_replaced() {
    let dir = TempDir::new();
    let path = dir.join("handover.sock");
    drop(StdUnixListener::bind(&path).expect("bind a dead instance's socket"));
    assert!(path.exists(), "the dead socket's file stays");
    let _old = OldSide::bind(&path);
    StdUnixStream::connect(&path).expect("the new socket answers");
}

#[test]
fn live_socket_file_is_not_replaced() {
    let dir = TempDir::new();
    let path = dir.join("handover.sock");
    let _live = StdUnixListener::bind(&path).expect("bind live socket");
    let err = HandoverListener::bind(&path, TIMEOUT).expect_err("replaced a live socket");
    assert_eq!(err.to_string(), "another process listens there");
}

#[test]
fn symlink_or_other_file_at_the_path_is_never_replaced() {
    let dir = TempDir::new();
    let target = dir.join("elsewhere.sock");
    drop(StdUnixListener::bind(&target).expect("bind target"));
    let link = dir.join("link.sock");
    symlink(&target, &link).expect("symlink");
    let plain = dir.join("plain");
    fs::write(&plain, b"keep me").expect("write file");
    for path in [&link, &plain] {
        let err = HandoverListener::bind(path, TIMEOUT).expect_err("replaced a non-socket");
        assert_eq!(
            err.to_string(),
            "exists and is not a socket; not replacing it"
        );
    }
    assert!(
        fs::symlink_metadata(&link)
            .expect("link")
            .file_type()
            .is_symlink()
    );
    assert_eq!(fs::read(&plain).expect("file"), b"keep me");
}

#[test]
fn socket_file_is_removed_only_while_it_is_ours() {
    let dir = TempDir::new();
    let path = dir.join("handover.sock");
    let old = HandoverListener::bind(&path, TIMEOUT).expect("bind");
    old.remove_socket_file();
    assert!(!path.exists(), "our own file is removed");

    let old = HandoverListener::bind(&path, TIMEOUT).expect("bind again");
    // A successor's file replaced ours (as after a take-over).
    let other = dir.join("other.sock");
    let _successor = StdUnixListener::bind(&other).expect("bind successor");
    fs::rename(&other, &path).expect("rename over");
    old.remove_socket_file();
    StdUnixStream::connect(&path).expect("the successor's file is still there");
}

// ---------------------------------------------------------------------------
// Exchanges
// ---------------------------------------------------------------------------

#[test]
fn full_exchange_hands_over_the_same_sockets() {
    let dir = TempDir::new();
    let path = dir.join("handover.sock");
    let sockets = Sockets::new();
    let shared = sockets.shared();
    let mut old = OldSide::bind(&path);
    let new = spawn_new_side(&path);

    assert_eq!(old.serve_one(&shared), Step::HandedOver);
    old.let_go();
    let received = new.join().expect("new side").expect("take-over");

    let [(tcp_addr, tcp)] = received.listeners.as_slice() else {
        panic!("one tcp listener: {:?}", received.listeners);
    };
    let [(udp_addr, udp)] = received.udp.as_slice() else {
        panic!("one udp socket: {:?}", received.udp);
    };
    let (health_addr, health) = received.health.as_ref().expect("health listener");
    assert_eq!(*tcp_addr, sockets.tcp.local_addr().expect("addr"));
    assert_eq!(*udp_addr, sockets.udp.local_addr().expect("addr"));
    assert_eq!(*health_addr, sockets.health.local_addr().expect("addr"));
    assert!(same_socket(tcp, &sockets.tcp));
    assert!(same_socket(udp, &sockets.udp));
    assert!(same_socket(health, &sockets.health));

    // A connect to the address is accepted on the received listener: the
    // old side's queue and the new side's are one.
    let mut client = TcpStream::connect(tcp_addr).expect("connect");
    let (mut accepted, _) = tcp.accept().expect("accept on the received listener");
    client.write_all(b"ping").expect("write");
    accepted.set_nonblocking(false).expect("blocking");
    let mut got = [0u8; 4];
    accepted.read_exact(&mut got).expect("read");
    assert_eq!(&got, b"ping");
    // And a datagram to the UDP address reaches the received socket.
    let sender = UdpSocket::bind("127.0.0.1:0").expect("bind sender");
    sender.send_to(b"dgram", udp_addr).expect("send");
    udp.set_nonblocking(false).expect("blocking");
    udp.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut buf = [0u8; 16];
    let (n, _) = udp.recv_from(&mut buf).expect("recv");
    assert_eq!(&buf[..n], b"dgram");
}

#[test]
fn new_side_takes_the_path_over_and_serves_the_next_take_over() {
    let dir = TempDir::new();
    let path = dir.join("handover.sock");
    let sockets = Sockets::new();
    let mut old = OldSide::bind(&path);
    let new = spawn_new_side(&path);
    assert_eq!(old.serve_one(&sockets.shared()), Step::HandedOver);
    old.let_go();
    let received = new.join().expect("new side").expect("take-over");
    drop(sockets); // the old instance is gone; the sockets live on

    // confirm() returned, so the old listener is closed: the path is free.
    let mut second = OldSide::bind(&path);
    let meta = fs::symlink_metadata(&path).expect("stat");
    assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
    let shared: Vec<Shared<'_>> = received
        .listeners
        .iter()
        .map(|(addr, l)| Shared {
            kind: Kind::Tcp,
            addr: *addr,
            fd: l.as_fd(),
        })
        .collect();
    let third = spawn_new_side(&path);
    assert_eq!(second.serve_one(&shared), Step::HandedOver);
    second.let_go();
    let again = third.join().expect("third side").expect("second take-over");
    assert_eq!(again.listeners.len(), 1);
    assert!(same_socket(&again.listeners[0].1, &received.listeners[0].1));
}

#[test]
fn garbage_is_refused_and_the_old_side_keeps_its_sockets() {
    let dir = TempDir::new();
    let path = dir.join("handover.sock");
    let sockets = Sockets::new();
    let shared = sockets.shared();
    let mut old = OldSide::bind(&path);

    let mut client = raw_client(&path);
    client.write_all(b"GET / HTTP/1.0\r\n\r\n").expect("write");
    let step = old.serve_one(&shared);
    assert_eq!(
        step,
        Step::Refused(Refusal::Garbage(
            "peer is not echod (bad greeting)".to_owned()
        ))
    );
    let (message, fds) = read_message(&client);
    assert!(matches!(message, Message::Refuse(r) if r.contains("bad greeting")));
    assert!(fds.is_empty(), "no descriptor left the old side");

    // Still serving: the listener accepts, and a real take-over works next.
    let _conn = TcpStream::connect(sockets.tcp.local_addr().expect("addr")).expect("connect");
    let new = spawn_new_side(&path);
    assert_eq!(old.serve_one(&shared), Step::HandedOver);
    old.let_go();
    new.join()
        .expect("new side")
        .expect("take-over after garbage");
}

#[test]
fn peer_that_closes_before_confirming_is_refused() {
    let dir = TempDir::new();
    let path = dir.join("handover.sock");
    let sockets = Sockets::new();
    let mut old = OldSide::bind(&path);
    let client = raw_client(&path);
    (&client).write_all(&encode_request()).expect("request");
    let reader = thread::spawn(move || {
        let (message, fds) = read_message(&client);
        assert!(
            matches!(message, Message::Offer(ref r) if r.len() == 3),
            "{message:?}"
        );
        assert_eq!(fds.len(), 3);
        // The client leaves here without confirming.
    });
    assert_eq!(
        old.serve_one(&sockets.shared()),
        Step::Refused(Refusal::Closed)
    );
    reader.join().expect("reader");
}

#[test]
fn receiver_that_never_confirms_times_out() {
    let dir = TempDir::new();
    let path = dir.join("handover.sock");
    let sockets = Sockets::new();
    let mut old = HandoverListener::bind(&path, TIMEOUT).expect("bind");
    let client = raw_client(&path);
    let t0 = Instant::now();
    assert_eq!(old.accept_ready(t0), Step::Register(Interest::READABLE));
    assert_eq!(old.next_wakeup(), Some(t0 + TIMEOUT));
    (&client).write_all(&encode_request()).expect("request");
    let sent = t0 + Duration::from_secs(1);
    assert_eq!(
        old.connection_ready(sent, &sockets.shared()),
        Step::Keep(Interest::READABLE)
    );
    let (message, fds) = read_message(&client);
    assert!(matches!(message, Message::Offer(_)));
    assert_eq!(fds.len(), 3);

    // The confirmation deadline runs from the offer; the receiver sits silent.
    assert_eq!(old.next_wakeup(), Some(sent + TIMEOUT));
    assert_eq!(
        old.on_clock(sent + TIMEOUT - Duration::from_millis(1)),
        Step::Idle
    );
    assert_eq!(
        old.on_clock(sent + TIMEOUT),
        Step::Refused(Refusal::TimedOut(TIMEOUT))
    );
    assert_eq!(old.next_wakeup(), None, "an ended exchange has no deadline");
    let (message, _) = read_message(&client);
    assert_eq!(
        message,
        Message::Refuse("no confirmation within 5s".to_owned())
    );
    old.close_connection();

    // The old side's sockets are untouched.
    assert!(
        crate::sys::socket_facts(sockets.tcp.as_fd())
            .expect("facts")
            .is_listening_tcp()
    );
    TcpStream::connect(sockets.tcp.local_addr().expect("addr")).expect("still listening");
}

#[test]
fn peer_that_sends_no_request_times_out() {
    let dir = TempDir::new();
    let path = dir.join("handover.sock");
    let mut old = HandoverListener::bind(&path, TIMEOUT).expect("bind");
    let client = raw_client(&path);
    let t0 = Instant::now();
    assert_eq!(old.accept_ready(t0), Step::Register(Interest::READABLE));
    assert_eq!(
        old.on_clock(t0 + TIMEOUT),
        Step::Refused(Refusal::NoRequest(TIMEOUT))
    );
    let (message, fds) = read_message(&client);
    assert_eq!(message, Message::Refuse("no request within 5s".to_owned()));
    assert!(fds.is_empty());
}

#[test]
fn confirmation_after_the_deadline_is_refused() {
    let dir = TempDir::new();
    let path = dir.join("handover.sock");
    let sockets = Sockets::new();
    let mut old = HandoverListener::bind(&path, TIMEOUT).expect("bind");
    let client = raw_client(&path);
    let t0 = Instant::now();
    old.accept_ready(t0);
    (&client).write_all(&encode_request()).expect("request");
    old.connection_ready(t0, &sockets.shared());
    let _ = read_message(&client);
    (&client).write_all(&encode_confirm()).expect("confirm");
    // The loop was stuck past the deadline: the receiver has given up.
    assert_eq!(
        old.connection_ready(t0 + TIMEOUT, &sockets.shared()),
        Step::Refused(Refusal::TimedOut(TIMEOUT))
    );
}

#[test]
fn receiver_that_declines_is_refused_at_once() {
    let dir = TempDir::new();
    let path = dir.join("handover.sock");
    let sockets = Sockets::new();
    let mut old = OldSide::bind(&path);
    let path2 = path.clone();
    let new = thread::spawn(move || {
        let received = take_over(&path2, TIMEOUT).expect("take-over");
        received.confirm.decline("cannot build the server");
    });
    assert_eq!(
        old.serve_one(&sockets.shared()),
        Step::Refused(Refusal::Declined("cannot build the server".to_owned()))
    );
    new.join().expect("new side");
}

/// The old side times out after its offer; only then does the new side
/// confirm, before or after the old side closed the connection.
fn confirm_after_the_old_side_refused(closed_first: bool) -> String {
    let dir = TempDir::new();
    let path = dir.join("handover.sock");
    let sockets = Sockets::new();
    let mut old = HandoverListener::bind(&path, TIMEOUT).expect("bind");
    let path2 = path.clone();
    let (offered_tx, offered) = std::sync::mpsc::channel();
    let (refused_tx, refused) = std::sync::mpsc::channel::<()>();
    let new = thread::spawn(move || {
        let received = take_over(&path2, TIMEOUT).expect("take-over");
        offered_tx.send(()).expect("send");
        refused.recv().expect("old side refused");
        received.confirm.confirm()
    });
    let t0 = Instant::now();
    let limit = t0 + Duration::from_secs(10);
    while old.accept_ready(Instant::now()) == Step::Idle {
        assert!(Instant::now() < limit, "no connection to accept within 10s");
        thread::sleep(Duration::from_millis(5));
    }
    // Step until the new side has the offer (its request may be in flight).
    while offered.try_recv().is_err() {
        assert!(Instant::now() < limit, "no offer received within 10s");
        old.connection_ready(t0, &sockets.shared());
        thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        old.on_clock(t0 + 2 * TIMEOUT),
        Step::Refused(Refusal::TimedOut(TIMEOUT))
    );
    if closed_first {
        old.close_connection();
    }
    refused_tx.send(()).expect("send");
    let err = new
        .join()
        .expect("new side")
        .expect_err("confirmed after a refusal");
    err.to_string()
        .replace(&format!("cannot take over from {}: ", path.display()), "")
}

#[test]
fn confirm_reports_a_refusal_that_crossed_it() {
    let line = "refused by the running instance: no confirmation within 5s";
    assert_eq!(confirm_after_the_old_side_refused(false), line);
    // Closed already: the confirmation cannot be sent, the refusal is still read.
    assert_eq!(confirm_after_the_old_side_refused(true), line);
}

#[test]
fn peer_of_another_user_is_refused_before_anything_is_sent() {
    let dir = TempDir::new();
    let path = dir.join("handover.sock");
    let mut old = HandoverListener::bind(&path, TIMEOUT).expect("bind");
    let other = crate::sys::effective_uid().wrapping_add(1);
    old.set_allowed_uid(other);
    let client = raw_client(&path);
    assert_eq!(old.accept_ready(Instant::now()), Step::Idle);
    assert!(old.connection_mut().is_none(), "no exchange began");
    let (message, fds) = read_message(&client);
    let ours = crate::sys::effective_uid();
    assert_eq!(
        message,
        Message::Refuse(format!("peer runs as uid {ours}, not as this user"))
    );
    assert!(fds.is_empty());
}

#[test]
fn second_peer_while_one_is_in_progress_is_told_busy() {
    let dir = TempDir::new();
    let path = dir.join("handover.sock");
    let mut old = HandoverListener::bind(&path, TIMEOUT).expect("bind");
    let _first = raw_client(&path);
    assert_eq!(
        old.accept_ready(Instant::now()),
        Step::Register(Interest::READABLE)
    );
    let path2 = path.clone();
    let second = thread::spawn(move || take_over_error(&path2, TIMEOUT));
    let limit = Instant::now() + Duration::from_secs(10);
    while !second.is_finished() && Instant::now() < limit {
        assert_eq!(old.accept_ready(Instant::now()), Step::Idle);
        thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        second.join().expect("second"),
        format!(
            "cannot take over from {}: refused by the running instance: busy: another take-over is in progress",
            path.display()
        )
    );
    assert!(old.connection_mut().is_some(), "the first exchange goes on");
}

// ---------------------------------------------------------------------------
// The new side's failures: one line each
// ---------------------------------------------------------------------------

#[test]
fn take_over_from_a_missing_path_says_no_such_socket() {
    let dir = TempDir::new();
    let path = dir.join("nope.sock");
    assert_eq!(
        take_over_error(&path, TIMEOUT),
        format!("cannot take over from {}: no such socket", path.display())
    );
}

#[test]
fn take_over_from_a_dead_socket_says_nothing_listens() {
    let dir = TempDir::new();
    let path = dir.join("dead.sock");
    drop(StdUnixListener::bind(&path).expect("bind"));
    assert_eq!(
        take_over_error(&path, TIMEOUT),
        format!(
            "cannot take over from {}: connection refused (nothing listens there)",
            path.display()
        )
    );
}

#[test]
fn take_over_from_a_peer_that_is_not_echod_says_bad_greeting() {
    let dir = TempDir::new();
    let path = dir.join("http.sock");
    let fake = fake_old(
        &path,
        b"HTTP/1.0 400 Bad Request\r\n\r\n".to_vec(),
        Vec::new(),
    );
    assert_eq!(
        take_over_error(&path, TIMEOUT),
        format!(
            "cannot take over from {}: peer is not echod (bad greeting)",
            path.display()
        )
    );
    fake.join().expect("fake");
}

#[test]
fn take_over_from_a_silent_peer_times_out() {
    let dir = TempDir::new();
    let path = dir.join("silent.sock");
    let fake = fake_old(&path, Vec::new(), Vec::new());
    assert_eq!(
        take_over_error(&path, Duration::from_millis(300)),
        format!(
            "cannot take over from {}: timed out after 0.3s",
            path.display()
        )
    );
    fake.join().expect("fake");
}

/// Takes over from a fake old instance that describes `records` and sends
/// `fds`; returns the failure, which the old side was told too.
#[track_caller]
fn take_over_offer(records: &[Record], fds: Vec<OwnedFd>) -> String {
    let dir = TempDir::new();
    let path = dir.join("fake.sock");
    let fake = fake_old(&path, encode_offer(records).expect("offer"), fds);
    let err = take_over_error(&path, TIMEOUT);
    let told = fake.join().expect("fake");
    let failure = err.replace(&format!("cannot take over from {}: ", path.display()), "");
    let declined = match decode(&told) {
        Ok(Some((Message::Refuse(reason), _))) => reason,
        other => panic!("the old side was not told why: {other:?}"),
    };
    assert_eq!(declined, failure);
    failure
}

fn owned(fd: impl Into<OwnedFd>) -> OwnedFd {
    fd.into()
}

#[test]
fn validation_rejects_a_mismatched_description() {
    let tcp = TcpListener::bind("127.0.0.1:0").expect("bind");
    let tcp_addr = tcp.local_addr().expect("addr");
    let udp = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let udp_addr = udp.local_addr().expect("addr");
    let record = |kind, addr| Record { kind, addr };
    let dup = |fd: &dyn AsFd| fd.as_fd().try_clone_to_owned().expect("dup");

    // A UDP socket described as a TCP listener, and the other way round.
    assert_eq!(
        take_over_offer(&[record(Kind::Tcp, udp_addr)], vec![dup(&udp)]),
        format!(
            "socket 0 (tcp {udp_addr}) does not match its description: not a listening TCP socket"
        )
    );
    assert_eq!(
        take_over_offer(&[record(Kind::Udp, tcp_addr)], vec![dup(&tcp)]),
        format!("socket 0 (udp {tcp_addr}) does not match its description: not a UDP socket")
    );
    // The right kind at another port.
    let elsewhere = SocketAddr::new(tcp_addr.ip(), tcp_addr.port().wrapping_add(1).max(1));
    assert_eq!(
        take_over_offer(&[record(Kind::Health, elsewhere)], vec![dup(&tcp)]),
        format!(
            "socket 0 (health {elsewhere}) does not match its description: it is bound to {tcp_addr}"
        )
    );
    // An IPv4 socket described as IPv6.
    let v6: SocketAddr = format!("[::1]:{}", tcp_addr.port()).parse().expect("addr");
    assert_eq!(
        take_over_offer(&[record(Kind::Tcp, v6)], vec![dup(&tcp)]),
        format!("socket 0 (tcp {v6}) does not match its description: its family is AF_INET")
    );
    // A bound TCP socket that does not listen, and a Unix socket.
    let unlistening =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    unlistening
        .bind(&"127.0.0.1:0".parse::<SocketAddr>().expect("addr").into())
        .expect("bind");
    let bound = unlistening
        .local_addr()
        .expect("addr")
        .as_socket()
        .expect("ip");
    assert_eq!(
        take_over_offer(&[record(Kind::Tcp, bound)], vec![owned(unlistening)]),
        format!(
            "socket 0 (tcp {bound}) does not match its description: not a listening TCP socket"
        )
    );
    let (unix, _peer) = StdUnixStream::pair().expect("pair");
    assert_eq!(
        take_over_offer(&[record(Kind::Tcp, tcp_addr)], vec![owned(unix)]),
        format!(
            "socket 0 (tcp {tcp_addr}) does not match its description: not a listening TCP socket"
        )
    );
    // Two health listeners.
    assert_eq!(
        take_over_offer(
            &[
                record(Kind::Health, tcp_addr),
                record(Kind::Health, tcp_addr)
            ],
            vec![dup(&tcp), dup(&tcp)]
        ),
        format!(
            "socket 1 (health {tcp_addr}) does not match its description: a second health listener"
        )
    );
}

#[test]
fn validation_rejects_a_count_mismatch() {
    let tcp = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = tcp.local_addr().expect("addr");
    let record = Record {
        kind: Kind::Tcp,
        addr,
    };
    let fd = tcp.as_fd().try_clone_to_owned().expect("dup");
    assert_eq!(
        take_over_offer(&[record, record], vec![fd]),
        "2 sockets described but 1 received"
    );
}

// ---------------------------------------------------------------------------
// What the loop must know (epoll(7), "Questions and answers" 6)
// ---------------------------------------------------------------------------

/// Why the old loop deregisters every passed socket before dropping it: the
/// receiver's descriptor keeps the open file alive, and epoll forgets a
/// registration only when the last descriptor of that open file closes.
#[test]
fn a_passed_listener_dropped_without_deregistering_still_wakes_the_old_poll() {
    let std_listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    std_listener.set_nonblocking(true).expect("nonblocking");
    let addr = std_listener.local_addr().expect("addr");
    // The receiver's copy, as SCM_RIGHTS would give it.
    let receivers = std_listener.as_fd().try_clone_to_owned().expect("dup");
    let mut listener = mio::net::TcpListener::from_std(std_listener);
    let mut poll = Poll::new().expect("poll");
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)
        .expect("register");
    drop(listener);

    let _client = TcpStream::connect(addr).expect("connect");
    let mut events = Events::with_capacity(4);
    poll.poll(&mut events, Some(Duration::from_secs(5)))
        .expect("poll");
    assert!(
        events.iter().any(|e| e.token() == LISTENER),
        "the dropped listener's token was not reported"
    );
    drop(receivers);
}
