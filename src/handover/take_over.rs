//! The new instance's side of a take-over: [`take_over`] connects to the
//! running instance's `--handover-socket`, receives its sockets, checks
//! each against its description, and hands back a [`Confirm`] to send once
//! this instance serves them (docs/protocol.md "Operations", take-over).
//!
//! It blocks, with one timeout over the whole exchange: it runs before the
//! loop exists. It does not start serving (the caller builds its server
//! from the sockets, then confirms), and it does not bind the handover
//! socket for the next take-over ([`HandoverListener::bind`] does, after
//! [`Confirm::confirm`] reported that the old instance let go).
//!
//! [`HandoverListener::bind`]: super::HandoverListener::bind

use std::fmt;
use std::io::{self, Read};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{Kind, encode_confirm, encode_refuse, encode_request};
use super::{MAX_MESSAGE, MAX_SOCKETS, Message, Record, WireError, decode, seconds};

/// The sockets a take-over received, checked, non-blocking, in the order
/// the old instance listed them, and the confirmation still owed to it.
#[derive(Debug)]
pub(crate) struct Received {
    /// The echo service's TCP listeners.
    pub(crate) listeners: Vec<(SocketAddr, TcpListener)>,
    /// The UDP echo sockets.
    pub(crate) udp: Vec<(SocketAddr, UdpSocket)>,
    /// The health listener, if the old instance had one.
    pub(crate) health: Option<(SocketAddr, TcpListener)>,
    /// Send once serving; dropping it unsent tells the old instance to serve on.
    pub(crate) confirm: Confirm,
}

/// The confirmation owed to the old instance, over the take-over's connection.
#[derive(Debug)]
pub(crate) struct Confirm {
    /// The connection to the old instance (blocking, with timeouts).
    stream: UnixStream,
    /// The handover socket's path, for error lines.
    path: PathBuf,
    /// How long the old instance has to let go.
    timeout: Duration,
}

impl Confirm {
    /// Tells the old instance this one serves the sockets, then waits up to
    /// the timeout for it to let go: it closes the connection (after its
    /// handover listener) and begins its drain. Call it after the server
    /// was built from the sockets and before its loop runs; connects that
    /// arrive meanwhile wait in the shared backlog.
    ///
    /// The old instance closes this connection without a REFUSE only after
    /// it read the confirmation, or when it died: either way the sockets are
    /// this instance's alone, so end-of-stream (or a reset) is `Ok`.
    ///
    /// # Errors
    ///
    /// The old instance refused (its deadline passed first, so it serves on
    /// and this instance must not), sent something else, or neither let go
    /// nor refused within the timeout (it may be stuck; it will refuse when
    /// it wakes, as its deadline passed first, so this instance must not
    /// serve either).
    pub(crate) fn confirm(mut self) -> Result<(), TakeOverError> {
        let fail = |failure| TakeOverError {
            path: self.path.clone(),
            failure,
        };
        let deadline = Instant::now() + self.timeout;
        set_timeouts(&self.stream, deadline).map_err(|_| fail(Failure::TimedOut(self.timeout)))?;
        match send_all(&self.stream, &encode_confirm()) {
            // The old instance closed first: a REFUSE may wait to be read.
            Err(err) if is_gone(&err) => {}
            Err(err) => {
                return Err(fail(io_failure(
                    "sending the confirmation",
                    err,
                    self.timeout,
                )));
            }
            Ok(()) => {}
        }
        let mut buf = [0u8; MAX_MESSAGE];
        let mut filled = 0;
        loop {
            let Some(free) = buf.get_mut(filled..).filter(|b| !b.is_empty()) else {
                return Err(fail(Failure::BadMessage("message too long".to_owned())));
            };
            match self.stream.read(free) {
                Ok(0) => return Ok(()),
                Ok(n) => filled += n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) if is_gone(&err) => return Ok(()),
                Err(err) => {
                    return Err(fail(io_failure(
                        "waiting for the old instance",
                        err,
                        self.timeout,
                    )));
                }
            }
            match decode(&buf[..filled]) {
                Ok(None) => {}
                Ok(Some((Message::Refuse(reason), _))) => {
                    return Err(fail(Failure::Refused(reason)));
                }
                Ok(Some((other, _))) => {
                    return Err(fail(Failure::BadMessage(format!("unexpected {other:?}"))));
                }
                Err(err) => return Err(fail(Failure::from(err))),
            }
        }
    }

    /// Tells the old instance this one will not serve, and why; it logs
    /// the reason and serves on. Best effort: if the line cannot be sent,
    /// the old instance sees the connection close, which means the same.
    pub(crate) fn decline(self, reason: &str) {
        let _ = send_all(&self.stream, &encode_refuse(reason));
    }
}

/// Why a take-over failed: the path, and what went wrong.
#[derive(Debug)]
pub(crate) struct TakeOverError {
    /// The `--take-over` path.
    pub(crate) path: PathBuf,
    /// What went wrong.
    pub(crate) failure: Failure,
}

impl fmt::Display for TakeOverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot take over from {}: {}",
            self.path.display(),
            self.failure
        )
    }
}

impl std::error::Error for TakeOverError {}

/// What went wrong in a take-over.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Nothing exists at the path.
    NoSuchSocket,
    /// A file exists but nothing listens on it.
    NothingListens,
    /// The socket is not ours to connect to.
    PermissionDenied,
    /// The process at the path runs as another user.
    OtherUser {
        /// Its uid.
        uid: u32,
        /// Ours.
        ours: u32,
    },
    /// The exchange did not finish within the timeout.
    TimedOut(Duration),
    /// The peer does not speak this protocol, or not this version of it.
    Wire(WireError),
    /// The peer sent a well-formed message that does not belong here.
    BadMessage(String),
    /// The old instance refused, with its reason.
    Refused(String),
    /// The old instance closed before sending its sockets.
    Closed,
    /// The offer described one number of sockets and carried another.
    CountMismatch {
        /// Records in the offer.
        described: usize,
        /// Descriptors received.
        received: usize,
    },
    /// A received socket is not what its record says.
    Mismatch {
        /// Its position in the offer, from 0.
        index: usize,
        /// Its record.
        record: Record,
        /// What it really is.
        detail: String,
    },
    /// Another system call failed.
    Io {
        /// What we were doing.
        action: &'static str,
        /// What the OS said.
        source: io::Error,
    },
}

impl From<WireError> for Failure {
    fn from(err: WireError) -> Self {
        Failure::Wire(err)
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::NoSuchSocket => f.write_str("no such socket"),
            Failure::NothingListens => f.write_str("connection refused (nothing listens there)"),
            Failure::PermissionDenied => f.write_str("permission denied"),
            Failure::OtherUser { uid, ours } => {
                write!(
                    f,
                    "the process listening there runs as uid {uid}, not {ours}"
                )
            }
            Failure::TimedOut(t) => write!(f, "timed out after {}", seconds(*t)),
            Failure::Wire(err) => write!(f, "{err}"),
            Failure::BadMessage(detail) => write!(f, "bad message from peer: {detail}"),
            Failure::Refused(reason) => write!(f, "refused by the running instance: {reason}"),
            Failure::Closed => f.write_str("the running instance closed the connection"),
            Failure::CountMismatch {
                described,
                received,
            } => write!(f, "{described} sockets described but {received} received"),
            Failure::Mismatch {
                index,
                record,
                detail,
            } => write!(
                f,
                "socket {index} ({record}) does not match its description: {detail}"
            ),
            Failure::Io { action, source } => {
                write!(f, "{action}: {}", crate::error::os_reason(source))
            }
        }
    }
}

/// Takes the listening sockets over from the echod listening at `path`:
/// connects, asks, receives them with their descriptions, and checks each
/// (a listening TCP socket, or a UDP socket, of the family and address it
/// was described with). Blocks for at most `timeout`.
///
/// The old instance serves on, untouched, until [`Confirm::confirm`]; if
/// this instance drops the [`Received`] sockets without confirming, nothing
/// was lost.
///
/// # Errors
///
/// One [`TakeOverError`] naming the path and what went wrong: no socket
/// there, nothing listening, another user, a peer that is not echod, a
/// refusal, a timeout, or a socket that does not match its description.
///
/// # Notes
///
/// The received sockets share their open file with the old instance's:
/// options set on one (non-blocking included) are set on both.
pub(crate) fn take_over(path: &Path, timeout: Duration) -> Result<Received, TakeOverError> {
    let fail = |failure| TakeOverError {
        path: path.to_owned(),
        failure,
    };
    let deadline = Instant::now() + timeout;
    let stream = connect(path, timeout).map_err(fail)?;
    let ours = crate::sys::effective_uid();
    match crate::sys::peer_credentials(&stream) {
        Ok(peer) if peer.uid == ours => {}
        Ok(peer) => {
            return Err(fail(Failure::OtherUser {
                uid: peer.uid,
                ours,
            }));
        }
        Err(source) => {
            return Err(fail(Failure::Io {
                action: "checking the peer",
                source,
            }));
        }
    }
    let (records, fds) = exchange(&stream, deadline, timeout).map_err(fail)?;
    let confirm = Confirm {
        stream,
        path: path.to_owned(),
        timeout,
    };
    match sort(records, fds) {
        Ok((listeners, udp, health)) => Ok(Received {
            listeners,
            udp,
            health,
            confirm,
        }),
        Err(failure) => {
            // The old instance logs why, and serves on without waiting.
            confirm.decline(&failure.to_string());
            Err(fail(failure))
        }
    }
}

/// The checked sockets of an offer, by kind.
type Sorted = (
    Vec<(SocketAddr, TcpListener)>,
    Vec<(SocketAddr, UdpSocket)>,
    Option<(SocketAddr, TcpListener)>,
);

/// Checks each descriptor against its record and sorts them by kind.
/// Descriptors not returned are closed.
fn sort(records: Vec<Record>, fds: Vec<OwnedFd>) -> Result<Sorted, Failure> {
    if records.len() != fds.len() {
        return Err(Failure::CountMismatch {
            described: records.len(),
            received: fds.len(),
        });
    }
    let (mut listeners, mut udp, mut health) = (Vec::new(), Vec::new(), None);
    for (index, (record, fd)) in records.into_iter().zip(fds).enumerate() {
        let mismatch = |detail: String| Failure::Mismatch {
            index,
            record,
            detail,
        };
        check(&record, &fd).map_err(mismatch)?;
        if record.kind == Kind::Health && health.is_some() {
            return Err(mismatch("a second health listener".to_owned()));
        }
        // Already non-blocking in a running echod (the flag belongs to the
        // open file both instances share); set anyway for mio's from_std.
        let io = |source| Failure::Io {
            action: "making a received socket non-blocking",
            source,
        };
        match record.kind {
            Kind::Udp => {
                let socket = UdpSocket::from(fd);
                socket.set_nonblocking(true).map_err(io)?;
                udp.push((record.addr, socket));
            }
            Kind::Tcp | Kind::Health => {
                let listener = TcpListener::from(fd);
                listener.set_nonblocking(true).map_err(io)?;
                if record.kind == Kind::Tcp {
                    listeners.push((record.addr, listener));
                } else {
                    health = Some((record.addr, listener));
                }
            }
        }
    }
    Ok((listeners, udp, health))
}

/// Connects to `path`, waiting at most `timeout` if its backlog is full.
fn connect(path: &Path, timeout: Duration) -> Result<UnixStream, Failure> {
    let io = |action| move |source| Failure::Io { action, source };
    let addr = socket2::SockAddr::unix(path).map_err(io("naming the socket"))?;
    let socket = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None)
        .map_err(io("creating a socket"))?;
    // A Unix connect to a full backlog blocks for SO_SNDTIMEO, then EAGAIN.
    socket
        .set_write_timeout(Some(timeout.max(Duration::from_millis(1))))
        .map_err(io("setting a timeout"))?;
    match socket.connect(&addr) {
        Ok(()) => Ok(socket.into()),
        Err(err) => Err(match err.kind() {
            io::ErrorKind::NotFound => Failure::NoSuchSocket,
            io::ErrorKind::ConnectionRefused => Failure::NothingListens,
            io::ErrorKind::PermissionDenied => Failure::PermissionDenied,
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Failure::TimedOut(timeout),
            _ => Failure::Io {
                action: "connecting",
                source: err,
            },
        }),
    }
}

/// Sends the request and reads the offer and its descriptors.
fn exchange(
    stream: &UnixStream,
    deadline: Instant,
    timeout: Duration,
) -> Result<(Vec<Record>, Vec<OwnedFd>), Failure> {
    set_timeouts(stream, deadline).map_err(|_| Failure::TimedOut(timeout))?;
    send_all(stream, &encode_request())
        .map_err(|err| io_failure("sending the request", err, timeout))?;
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut filled = 0;
    let mut fds = Vec::new();
    loop {
        set_timeouts(stream, deadline).map_err(|_| Failure::TimedOut(timeout))?;
        let room = MAX_SOCKETS - fds.len().min(MAX_SOCKETS);
        let Some(free) = buf.get_mut(filled..).filter(|b| !b.is_empty()) else {
            return Err(Failure::BadMessage("message too long".to_owned()));
        };
        let (n, more) = match crate::sys::recv_with_fds(stream, free, room) {
            Ok(got) => got,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(io_failure("receiving the sockets", err, timeout)),
        };
        fds.extend(more);
        if n == 0 {
            return Err(Failure::Closed);
        }
        filled += n;
        match decode(&buf[..filled])? {
            None => {}
            Some((Message::Offer(records), used)) if used == filled => return Ok((records, fds)),
            Some((Message::Offer(_), _)) => {
                return Err(Failure::BadMessage("bytes after the offer".to_owned()));
            }
            Some((Message::Refuse(reason), _)) => return Err(Failure::Refused(reason)),
            Some((other, _)) => return Err(Failure::BadMessage(format!("unexpected {other:?}"))),
        }
    }
}

/// Sends all of `bytes` on the blocking `stream` (`MSG_NOSIGNAL`: a peer
/// that left is `EPIPE`, never SIGPIPE, whatever the embedder did with it).
fn send_all(stream: &UnixStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        match crate::sys::send(stream, bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = bytes.get(n..).unwrap_or_default(),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

/// True when `err` says the peer closed the connection.
fn is_gone(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
    )
}

/// Sets both socket timeouts to what is left until `deadline`; fails once it has passed.
fn set_timeouts(stream: &UnixStream, deadline: Instant) -> io::Result<()> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::ErrorKind::TimedOut.into());
    }
    stream.set_read_timeout(Some(left))?;
    stream.set_write_timeout(Some(left))
}

/// An I/O error as a failure: a socket timeout (`EAGAIN`) is the take-over's timeout.
fn io_failure(action: &'static str, source: io::Error, timeout: Duration) -> Failure {
    match source.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Failure::TimedOut(timeout),
        io::ErrorKind::UnexpectedEof => Failure::Closed,
        _ => Failure::Io { action, source },
    }
}

/// Checks that `fd` is the socket `record` describes.
fn check(record: &Record, fd: &OwnedFd) -> Result<(), String> {
    let facts = crate::sys::socket_facts(fd.as_fd())
        .map_err(|err| format!("not a usable socket: {}", crate::error::os_reason(&err)))?;
    let (ok, wanted) = match record.kind {
        Kind::Tcp | Kind::Health => (facts.is_listening_tcp(), "a listening TCP socket"),
        Kind::Udp => (facts.is_udp(), "a UDP socket"),
    };
    if !ok {
        return Err(format!("not {wanted}"));
    }
    let family = match record.addr {
        SocketAddr::V4(_) => socket2::Domain::IPV4,
        SocketAddr::V6(_) => socket2::Domain::IPV6,
    };
    if facts.domain != family {
        return Err(format!("its family is {:?}", facts.domain));
    }
    match facts.local.map(without_flowinfo) {
        Some(local) if local == without_flowinfo(record.addr) => Ok(()),
        Some(local) => Err(format!("it is bound to {local}")),
        None => Err("it has no IP address".to_owned()),
    }
}

/// `addr` with IPv6 flow info cleared: the offer does not carry it.
fn without_flowinfo(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(mut v6) => {
            v6.set_flowinfo(0);
            SocketAddr::V6(v6)
        }
        v4 => v4,
    }
}

/// The listening sockets a take-over received from the running instance
/// ([`crate::take_over`]), each checked against its description, and the
/// confirmation still owed to that instance.
///
/// The running instance serves on, untouched, until
/// [`Confirmation::confirm`]: build the server from every one of these
/// sockets first ([`crate::Server::from_sockets`]), then confirm. Dropping
/// this value without confirming leaves everything as it was.
#[derive(Debug)]
pub struct TakenOver {
    /// Every socket received, non-blocking, in the running instance's
    /// order: its TCP listeners (`--listen`), its UDP echo sockets
    /// (`--udp`) and its health listener (`--health`), if it had one.
    pub sockets: crate::Sockets,
    /// The confirmation owed to the running instance.
    pub confirmation: Confirmation,
}

impl From<Received> for TakenOver {
    fn from(received: Received) -> Self {
        TakenOver {
            sockets: crate::Sockets {
                tcp: received.listeners.into_iter().map(|(_, l)| l).collect(),
                udp: received.udp.into_iter().map(|(_, u)| u).collect(),
                health: received.health.map(|(_, h)| h),
            },
            confirmation: Confirmation(received.confirm),
        }
    }
}

/// The confirmation a take-over owes the instance it took the sockets
/// from: [`Confirmation::confirm`] once serving them, or
/// [`Confirmation::decline`] (or a drop) to leave that instance serving.
#[derive(Debug)]
pub struct Confirmation(Confirm);

impl Confirmation {
    /// Tells the running instance that this one serves the sockets, then
    /// waits, at most the take-over's timeout, for it to let go: it closes
    /// its handover socket and begins its drain. From then on the sockets
    /// are this instance's alone and the handover socket's path is free.
    /// Connects that arrive meanwhile wait in the shared accept queue.
    ///
    /// # Errors
    ///
    /// [`crate::Error::TakeOver`] when the running instance refused (its
    /// own deadline passed first, so it serves on and this instance must
    /// not), answered something else, or neither let go nor refused in time.
    pub fn confirm(self) -> Result<(), crate::Error> {
        self.0.confirm().map_err(crate::Error::from)
    }

    /// Tells the running instance that this one will not serve, and why
    /// (one line, which it logs); it serves on untouched. Best effort.
    pub fn decline(self, reason: &str) {
        self.0.decline(reason);
    }
}

impl From<TakeOverError> for crate::Error {
    fn from(err: TakeOverError) -> Self {
        crate::Error::TakeOver {
            path: err.path,
            detail: err.failure.to_string(),
        }
    }
}
