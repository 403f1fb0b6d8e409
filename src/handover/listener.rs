//! The old instance's side of a take-over: [`HandoverListener`], the Unix
//! socket at `--handover-socket PATH` and the one exchange it serves at a
//! time (docs/protocol.md "Operations", take-over).
//!
//! It owns the socket file (created 0600, replaced only when stale, removed
//! only while it is still ours) and the exchange's connection, its bytes and
//! its deadline. It does not own the `Poll` (the loop registers
//! [`HandoverListener::listener_mut`] and, when a [`Step`] says so, the
//! exchange's connection), nor the sockets it passes (the loop lends them
//! for each call as [`Shared`]), nor the drain ([`Step::HandedOver`] only
//! says that the receiver serves).

use std::fs;
use std::io::{self, Read};
use std::net::SocketAddr;
use std::os::fd::BorrowedFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use log::{info, warn};
use mio::Interest;
use mio::net::{UnixListener, UnixStream};

use super::{HEADER_LEN, MAX_REASON, MAX_SOCKETS, Message, Record, decode, seconds};
use super::{Kind, encode_offer, encode_refuse};

/// The socket file's mode: the service's user only (connect needs write).
const MODE: u32 = 0o600;
/// Connections waiting to be accepted; one is served, the rest refused.
const BACKLOG: i32 = 4;
/// The most bytes a peer may send in one exchange: a header and a reason.
const INBOX: usize = HEADER_LEN + MAX_REASON;

/// A socket the loop lends for the offer: what it is, where, and its descriptor.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shared<'a> {
    /// What the socket is for.
    pub(crate) kind: Kind,
    /// Its local address, as the receiver will check it.
    pub(crate) addr: SocketAddr,
    /// The descriptor; the receiver gets its own for the same socket.
    pub(crate) fd: BorrowedFd<'a>,
}

/// What the loop does after a step.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Nothing: no exchange changed.
    Idle,
    /// An exchange began: register [`HandoverListener::connection_mut`] for this readiness.
    Register(Interest),
    /// The exchange waits for this readiness: reregister its connection.
    Keep(Interest),
    /// The exchange ended without a hand-over (already logged, and the peer
    /// told why). The loop deregisters the connection and calls
    /// [`HandoverListener::close_connection`]; serving goes on untouched.
    Refused(Refusal),
    /// The receiver serves the sockets. The loop deregisters every source
    /// it passed and drops their descriptors without `shutdown` (the
    /// sockets live on in the receiver), deregisters this listener and its
    /// connection, drops the `HandoverListener` (its socket file is left
    /// for the receiver to replace), and begins its drain.
    HandedOver,
}

/// Why an exchange ended without a hand-over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The peer runs as another user (`SO_PEERCRED`).
    OtherUser {
        /// The peer's effective uid.
        uid: u32,
    },
    /// Another exchange was in progress.
    Busy,
    /// The peer sent something that is not the next message of a take-over.
    Garbage(String),
    /// The peer closed before it confirmed.
    Closed,
    /// The peer sent no request within the timeout after it connected.
    NoRequest(Duration),
    /// The receiver did not confirm within the timeout after the offer.
    TimedOut(Duration),
    /// The receiver declined, with its reason.
    Declined(String),
    /// There is nothing to hand over (no sockets, or too many for one message).
    NothingToSend(usize),
    /// The connection failed.
    Failed(io::ErrorKind),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::OtherUser { uid } => write!(f, "peer runs as uid {uid}, not as this user"),
            Refusal::Busy => f.write_str("busy: another take-over is in progress"),
            Refusal::Garbage(detail) => write!(f, "not a take-over: {detail}"),
            Refusal::Closed => f.write_str("peer closed before confirming"),
            Refusal::NoRequest(t) => write!(f, "no request within {}", seconds(*t)),
            Refusal::TimedOut(t) => write!(f, "no confirmation within {}", seconds(*t)),
            Refusal::Declined(reason) => write!(f, "receiver declined: {reason}"),
            Refusal::NothingToSend(n) => {
                write!(f, "cannot hand over {n} sockets (1 to {MAX_SOCKETS})")
            }
            Refusal::Failed(kind) => write!(f, "connection failed: {kind}"),
        }
    }
}

/// Where an exchange stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the REQUEST.
    Request,
    /// Writing the rest of the offer (its descriptors went with the first byte).
    Sending,
    /// Waiting for CONFIRM (or REFUSE, or end-of-stream).
    Confirm,
    /// Over: the step said so; the loop closes the connection next.
    Ended,
}

/// The one exchange in progress.
#[derive(Debug)]
struct Exchange {
    /// The peer's connection, registered by the loop while the phase is not `Ended`.
    conn: UnixStream,
    /// The peer's pid, for the log.
    pid: i32,
    /// Where the exchange stands.
    phase: Phase,
    /// Bytes received and not yet decoded; never more than [`INBOX`].
    inbox: Vec<u8>,
    /// The offer, and how much of it was sent; empty before the request.
    offer: Vec<u8>,
    /// Bytes of `offer` already sent.
    sent: usize,
    /// Sockets in the offer, for the log.
    sockets: usize,
    /// The request, then the confirmation, must arrive before this.
    deadline: Instant,
}

/// The `--handover-socket` listener of a running instance: serves one
/// take-over request at a time, and refuses anything else without
/// disturbing service.
///
/// Field order matters: `listener` is declared (so dropped) before
/// `exchange`, so a receiver that reads end-of-stream on its connection
/// finds the socket file already dead and may replace it.
#[derive(Debug)]
pub(crate) struct HandoverListener {
    /// The non-blocking listening Unix socket at `path`.
    listener: UnixListener,
    /// The exchange in progress, if any.
    exchange: Option<Exchange>,
    /// The socket file's path.
    path: PathBuf,
    /// The socket file's (device, inode), to recognise it as ours at removal.
    file: (u64, u64),
    /// The only uid allowed to take over: our effective uid.
    allowed_uid: u32,
    /// How long a peer has for its request, and then for its confirmation.
    timeout: Duration,
}

impl HandoverListener {
    /// Creates the Unix socket at `path`, mode 0600, listening and
    /// non-blocking. The socket is bound at a temporary name in the same
    /// directory, given its mode, and renamed over `path`: `path` never
    /// names a socket with another mode or one that does not listen yet.
    ///
    /// A socket file already at `path` is replaced only when nothing answers
    /// on it (a dead instance's, or one that let go after a take-over). A
    /// symlink or any other file there is an error, never followed.
    ///
    /// # Errors
    ///
    /// `AlreadyExists` when another process listens at `path` or it is not
    /// a socket; otherwise the OS error from creating, binding or renaming.
    ///
    /// # Notes
    ///
    /// The directory should be writable by the service's user only (e.g.
    /// `/run/echod/`): someone who may rename files in it may race any
    /// check made on a path.
    pub(crate) fn bind(path: &Path, timeout: Duration) -> io::Result<HandoverListener> {
        let (socket, temp, file) = bind_temp(path)?;
        check_replaceable(path)?;
        fs::rename(temp.path(), path)?;
        temp.keep();
        let std_listener: std::os::unix::net::UnixListener = socket.into();
        Ok(HandoverListener {
            listener: UnixListener::from_std(std_listener),
            exchange: None,
            path: path.to_owned(),
            file,
            allowed_uid: crate::sys::effective_uid(),
            timeout,
        })
    }

    /// Lets only `uid` take over, as if we ran as another user.
    #[cfg(test)]
    pub(super) fn set_allowed_uid(&mut self, uid: u32) {
        self.allowed_uid = uid;
    }

    /// The socket file's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The listening socket, for the loop to register (readable).
    pub(crate) fn listener_mut(&mut self) -> &mut UnixListener {
        &mut self.listener
    }

    /// The exchange's connection, for the loop to (re)register or deregister.
    pub(crate) fn connection_mut(&mut self) -> Option<&mut UnixStream> {
        self.exchange.as_mut().map(|x| &mut x.conn)
    }

    /// Closes the ended exchange's connection (after the loop deregistered it).
    pub(crate) fn close_connection(&mut self) {
        self.exchange = None;
    }

    /// Removes the socket file if it is still the one this listener created
    /// (not a successor's). For a plain exit; never after a hand-over, where
    /// the receiver replaces the file.
    pub(crate) fn remove_socket_file(&self) {
        if fs::symlink_metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.file) {
            let _ = fs::remove_file(&self.path);
        }
    }

    /// The exchange's deadline, while one is in progress.
    pub(crate) fn next_wakeup(&self) -> Option<Instant> {
        self.exchange
            .as_ref()
            .filter(|x| x.phase != Phase::Ended)
            .map(|x| x.deadline)
    }

    /// Ends an exchange whose deadline has passed.
    pub(crate) fn on_clock(&mut self, now: Instant) -> Step {
        match self.next_wakeup() {
            Some(deadline) if now >= deadline => self.refuse_late(),
            _ => Step::Idle,
        }
    }

    /// Refuses an exchange whose deadline passed, saying what it lacked.
    fn refuse_late(&mut self) -> Step {
        let requested = self
            .exchange
            .as_ref()
            .is_some_and(|x| x.phase != Phase::Request);
        self.refuse(if requested {
            Refusal::TimedOut(self.timeout)
        } else {
            Refusal::NoRequest(self.timeout)
        })
    }

    /// Accepts until the backlog is empty. The first connection from our
    /// own user, while no exchange is in progress, begins one; every other
    /// is told why not and closed at once.
    pub(crate) fn accept_ready(&mut self, now: Instant) -> Step {
        let mut step = Step::Idle;
        loop {
            let conn = match self.listener.accept() {
                Ok((conn, _)) => conn,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return step,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => {
                    // Out of descriptors, most likely: the peer waits in the
                    // backlog and times out with a clear line of its own.
                    warn!(
                        "take-over: cannot accept: path={} error={err}",
                        self.path.display()
                    );
                    return step;
                }
            };
            let peer = crate::sys::peer_credentials(&conn);
            let pid = peer.as_ref().map_or(0, |p| p.pid);
            let refusal = match peer {
                Err(err) => Some(Refusal::Failed(err.kind())),
                Ok(p) if p.uid != self.allowed_uid => Some(Refusal::OtherUser { uid: p.uid }),
                Ok(_) if self.exchange.is_some() => Some(Refusal::Busy),
                Ok(_) => None,
            };
            if let Some(refusal) = refusal {
                self.log_refusal(pid, &refusal);
                // Best effort: a fresh connection's buffer takes a short line.
                let _ = crate::sys::send(&conn, &encode_refuse(&refusal.to_string()));
                continue;
            }
            self.exchange = Some(Exchange {
                conn,
                pid,
                phase: Phase::Request,
                inbox: Vec::with_capacity(INBOX),
                offer: Vec::new(),
                sent: 0,
                sockets: 0,
                deadline: now + self.timeout,
            });
            step = Step::Register(Interest::READABLE);
        }
    }

    /// Moves the exchange on after its connection became ready: reads the
    /// request and sends `sockets`, finishes a partial offer, or reads the
    /// confirmation. A confirmation that arrives after the deadline is
    /// refused: the receiver has given up by then.
    pub(crate) fn connection_ready(&mut self, now: Instant, sockets: &[Shared<'_>]) -> Step {
        let Some(x) = self.exchange.as_mut() else {
            return Step::Idle; // spurious: the exchange already ended
        };
        if x.phase == Phase::Ended {
            return Step::Idle;
        }
        if now >= x.deadline {
            return self.refuse_late();
        }
        let (eof, failed) = match read_inbox(x) {
            Ok(eof) => (eof, None),
            Err(err) => (false, Some(err.kind())),
        };
        if let Some(kind) = failed {
            return self.refuse(Refusal::Failed(kind));
        }
        let message = match decode(&x.inbox) {
            Err(err) => return self.refuse(Refusal::Garbage(err.to_string())),
            Ok(Some((_, used))) if used != x.inbox.len() => {
                return self.refuse(Refusal::Garbage("bytes after a message".to_owned()));
            }
            Ok(message) => message.map(|(m, _)| m),
        };
        match (x.phase, message) {
            (Phase::Ended, None) => Step::Idle,
            (_, None) if eof => self.refuse(Refusal::Closed),
            (Phase::Request, None) => Step::Keep(Interest::READABLE),
            (Phase::Request, Some(Message::Request)) => {
                x.inbox.clear();
                self.send_offer(now, sockets)
            }
            (Phase::Sending, None) => self.flush_offer(),
            (Phase::Confirm, None) => Step::Keep(Interest::READABLE),
            (Phase::Confirm, Some(Message::Confirm)) => {
                x.phase = Phase::Ended;
                info!(
                    "take-over confirmed: path={} peer_pid={} sockets={}",
                    self.path.display(),
                    x.pid,
                    x.sockets
                );
                Step::HandedOver
            }
            (_, Some(Message::Refuse(reason))) => self.refuse(Refusal::Declined(reason)),
            (_, Some(other)) => self.refuse(Refusal::Garbage(format!("unexpected {other:?}"))),
        }
    }

    /// Sends the offer with every descriptor on its first byte.
    fn send_offer(&mut self, now: Instant, sockets: &[Shared<'_>]) -> Step {
        let records: Vec<Record> = sockets
            .iter()
            .map(|s| Record {
                kind: s.kind,
                addr: s.addr,
            })
            .collect();
        let Some(offer) = encode_offer(&records) else {
            return self.refuse(Refusal::NothingToSend(sockets.len()));
        };
        let fds: Vec<BorrowedFd<'_>> = sockets.iter().map(|s| s.fd).collect();
        let Some(x) = self.exchange.as_mut() else {
            return Step::Idle;
        };
        let sent = loop {
            match crate::sys::send_with_fds(&x.conn, &offer, &fds) {
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                // The peer has read nothing of ours yet, so a full buffer
                // here is a failure, not a wait.
                Err(err) => return self.refuse(Refusal::Failed(err.kind())),
                Ok(n) => break n,
            }
        };
        info!(
            "take-over: sockets sent, waiting for confirmation: path={} peer_pid={} sockets={} timeout={}",
            self.path.display(),
            x.pid,
            sockets.len(),
            seconds(self.timeout)
        );
        x.offer = offer;
        x.sent = sent;
        x.sockets = sockets.len();
        x.deadline = now + self.timeout;
        x.phase = Phase::Sending;
        self.flush_offer()
    }

    /// Writes what is left of the offer (no descriptors: they went first).
    fn flush_offer(&mut self) -> Step {
        let Some(x) = self.exchange.as_mut() else {
            return Step::Idle;
        };
        while let Some(rest) = x.offer.get(x.sent..).filter(|r| !r.is_empty()) {
            match crate::sys::send(&x.conn, rest) {
                Ok(n) => x.sent += n,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    return Step::Keep(Interest::READABLE | Interest::WRITABLE);
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return self.refuse(Refusal::Failed(err.kind())),
            }
        }
        x.phase = Phase::Confirm;
        Step::Keep(Interest::READABLE)
    }

    /// Ends the exchange: logs one line, tells the peer why (best effort).
    fn refuse(&mut self, refusal: Refusal) -> Step {
        let Some(x) = self.exchange.as_mut() else {
            return Step::Idle;
        };
        x.phase = Phase::Ended;
        let pid = x.pid;
        let _ = crate::sys::send(&x.conn, &encode_refuse(&refusal.to_string()));
        self.log_refusal(pid, &refusal);
        Step::Refused(refusal)
    }

    /// The one line an operator sees for a refused peer.
    fn log_refusal(&self, pid: i32, refusal: &Refusal) {
        warn!(
            "take-over refused, still serving: path={} peer_pid={pid} reason={refusal}",
            self.path.display()
        );
    }
}

/// Reads what the peer sent into the exchange's inbox until the socket is
/// empty; true at end-of-stream. More than [`INBOX`] bytes is garbage: the
/// inbox keeps one byte past the limit so the decoder or the length check
/// says so, and reading stops there.
fn read_inbox(x: &mut Exchange) -> io::Result<bool> {
    let mut chunk = [0u8; 256];
    loop {
        let room = (INBOX + 1).saturating_sub(x.inbox.len()).min(chunk.len());
        if room == 0 {
            return Ok(false);
        }
        match x.conn.read(&mut chunk[..room]) {
            Ok(0) => return Ok(true),
            Ok(n) => x.inbox.extend_from_slice(&chunk[..n]),
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
}

/// Fails unless `path` is free or holds a socket nobody answers on.
fn check_replaceable(path: &Path) -> io::Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(err),
        Ok(meta) => meta,
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "exists and is not a socket; not replacing it",
        ));
    }
    // Non-blocking, so a live listener with a full backlog answers EAGAIN
    // instead of holding us. A live echod sees this probe as a peer that
    // closed before its request, and logs it.
    let probe = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None)?;
    probe.set_nonblocking(true)?;
    match probe.connect(&socket2::SockAddr::unix(path)?) {
        Err(err) if err.kind() == io::ErrorKind::ConnectionRefused => Ok(()),
        Err(err) if err.kind() != io::ErrorKind::WouldBlock => Err(err),
        _ => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "another process listens there",
        )),
    }
}

/// Distinguishes the temporary names of concurrent binds in one process.
static TEMP_SEQ: AtomicUsize = AtomicUsize::new(0);

/// The start of a temporary socket name; the PID and a sequence number follow.
const TEMP_PREFIX: &str = ".echod-handover.";

/// The directory the temporary socket is bound in: `path`'s own.
fn temp_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// The longest path, in bytes, [`HandoverListener::bind`] gives its
/// temporary socket beside `path`: the PID and the sequence number at their
/// widest (`u32`, `usize`). Config validation checks it against the Unix
/// socket address limit, so a long directory is a usage error, not a
/// failed bind.
pub(crate) fn longest_temp_path(path: &Path) -> usize {
    let widest = format!("{TEMP_PREFIX}{}.{}", u32::MAX, usize::MAX);
    temp_dir(path).join(widest).as_os_str().len()
}

/// A temporary socket file, removed on drop unless [`TempName::keep`] says
/// it was renamed into place.
struct TempName(Option<PathBuf>);

impl TempName {
    /// The temporary path (empty once kept).
    fn path(&self) -> &Path {
        self.0.as_deref().unwrap_or(Path::new(""))
    }

    /// The file was renamed into place: do not remove it.
    fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for TempName {
    fn drop(&mut self) {
        if let Some(path) = &self.0 {
            let _ = fs::remove_file(path);
        }
    }
}

/// Binds a socket beside `path` at a temporary name with mode 0600 and
/// listens on it (non-blocking). Returns the socket, its temporary name and
/// the file's (device, inode), which the rename keeps.
fn bind_temp(path: &Path) -> io::Result<(socket2::Socket, TempName, (u64, u64))> {
    let seq = TEMP_SEQ.fetch_add(1, Ordering::Relaxed);
    let temp = temp_dir(path).join(format!("{TEMP_PREFIX}{}.{seq}", std::process::id()));
    let socket = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None)?;
    // Linux creates the file with the socket's mode minus the umask: it is
    // born 0600 or tighter, never open to others even for an instant.
    crate::sys::set_socket_mode(&socket, MODE)?;
    socket.bind(&socket2::SockAddr::unix(&temp)?)?;
    let temp = TempName(Some(temp));
    let meta = fs::symlink_metadata(temp.path())?;
    if !meta.file_type().is_socket() || meta.uid() != crate::sys::effective_uid() {
        return Err(io::Error::other("the temporary socket file was replaced"));
    }
    if meta.mode() & 0o7777 != MODE {
        // A umask that took the owner's bits away (or not Linux).
        fs::set_permissions(temp.path(), fs::Permissions::from_mode(MODE))?;
    }
    socket.listen(BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok((socket, temp, (meta.dev(), meta.ino())))
}
