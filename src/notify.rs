//! systemd's notification protocol (docs/protocol.md "Operations"): `READY=1` once
//! listening, `STATUS=` as the state changes, `STOPPING=1` at drain start.
//!
//! A no-op unless `NOTIFY_SOCKET` is set. Status lines are rate-limited to
//! one a second so that a busy server does not send a datagram per connection;
//! the loop's poll timeout includes [`Notifier::next_wakeup`].
//!
//! Notifications are best effort (docs/protocol.md "Logs and notifications
//! are best effort"): each is one datagram sent without waiting, from a
//! socket of our own made non-blocking once. A service manager that does
//! not read (its queue holds `net.unix.max_dgram_qlen` datagrams, 10 by
//! default) or is gone costs the datagram, never the loop: the drop is
//! counted, warned once per episode, and the count is said when a send
//! gets through again. (The `sd-notify` crate sends each datagram from a new
//! blocking socket and so waits on a full queue; it cannot be told not to.)

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::{Duration, Instant};

use log::warn;

/// Least time between two `STATUS=` updates while serving.
const STATUS_INTERVAL: Duration = Duration::from_secs(1);

/// Sends state changes to the service manager, when there is one.
#[derive(Debug, Default)]
pub struct Notifier {
    /// Where datagrams go: `None` when `NOTIFY_SOCKET` is unset.
    target: Option<Target>,
    /// A status update is owed at this instant (the count changed).
    status_due: Option<Instant>,
    /// The connection count and the protections' closes last reported.
    reported: Option<(usize, (u64, u64))>,
    /// `STOPPING=1` was sent; from then on status follows the countdown only.
    stopping: bool,
    /// Datagrams dropped since start.
    dropped: usize,
    /// Datagrams dropped since the last one that got through; nonzero
    /// while an episode of failures lasts.
    unreported: usize,
}

/// The service manager's socket, or why it cannot be reached.
#[derive(Debug)]
struct Target {
    /// `NOTIFY_SOCKET` as given, for messages.
    name: String,
    /// Our unbound, non-blocking socket and the address to send to.
    socket: Result<(UnixDatagram, SocketAddr), io::Error>,
}

impl Notifier {
    /// Enabled when `NOTIFY_SOCKET` is set: a path, or `@name` for an
    /// abstract socket.
    pub fn from_env() -> Self {
        Notifier {
            target: std::env::var_os("NOTIFY_SOCKET").map(|name| Target::open(&name)),
            ..Notifier::default()
        }
    }

    /// `READY=1` with the first status line.
    pub fn ready(&mut self, connections: usize) {
        self.reported = Some((connections, (0, 0)));
        let mut text = String::from("READY=1\n");
        let _ = writeln!(text, "STATUS={}", serving(connections, (0, 0)));
        self.send(&text);
    }

    /// True when there is a service manager to tell.
    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// `STATUS=stopping in N s`: the lame duck began (docs/protocol.md
    /// "Lame duck and health").
    pub fn lame_duck(&mut self, delay: Duration) {
        let text = format!("STATUS=stopping in {:.0}s\n", delay.as_secs_f64());
        self.send(&text);
    }

    /// `STOPPING=1`, once, at the first drain signal (the lame duck's start
    /// when there is one).
    pub fn stopping(&mut self) {
        if self.stopping {
            return;
        }
        self.stopping = true;
        self.status_due = None;
        self.send("STOPPING=1\n");
    }

    /// Notes a change in the connection count; a status update follows within a second.
    #[inline]
    pub fn connections_changed(&mut self) {
        // While draining, the countdown carries the count; a pending update
        // here would never be cleared and would keep waking the loop.
        if self.target.is_some() && !self.stopping && self.status_due.is_none() {
            self.status_due = Some(Instant::now() + STATUS_INTERVAL);
        }
    }

    /// When the next status update is due.
    pub fn next_wakeup(&self) -> Option<Instant> {
        self.status_due
    }

    /// Sends the status owed by now: serving, or (with `remaining`) draining.
    /// `closed` is what the protections closed so far, `(idle, per
    /// address)` (docs/protocol.md "Protections"), shown while serving.
    pub fn on_clock(
        &mut self,
        now: Instant,
        connections: usize,
        closed: (u64, u64),
        remaining: Option<Duration>,
    ) {
        if self.target.is_none() {
            return;
        }
        if let Some(remaining) = remaining {
            let text = format!(
                "STATUS=draining, {connections} left, {:.0}s to go\n",
                remaining.as_secs_f64()
            );
            self.send(&text);
            return;
        }
        if self.status_due.is_some_and(|due| now >= due) {
            self.status_due = None;
            if self.reported != Some((connections, closed)) {
                self.reported = Some((connections, closed));
                self.send(&format!("STATUS={}\n", serving(connections, closed)));
            }
        }
    }

    /// Datagrams dropped since start because the service manager would not
    /// take them at once.
    pub fn dropped(&self) -> usize {
        self.dropped
    }

    /// One datagram, sent without waiting; a failure is counted and warned
    /// once per episode, which ends at the next datagram that gets through.
    fn send(&mut self, text: &str) {
        let Some(target) = &self.target else {
            return;
        };
        let result = match &target.socket {
            Ok((socket, addr)) => socket.send_to_addr(text.as_bytes(), addr).map(drop),
            Err(err) => Err(io::Error::new(err.kind(), err.to_string())),
        };
        match result {
            Ok(()) if self.unreported > 0 => {
                warn!("notifications dropped: count={}", self.unreported);
                self.unreported = 0;
            }
            Ok(()) => {}
            Err(err) => {
                if self.unreported == 0 {
                    warn!(
                        "cannot notify the service manager: socket={} error={}; dropping notifications until it takes them",
                        target.name,
                        crate::error::os_reason(&err)
                    );
                }
                self.dropped += 1;
                self.unreported += 1;
            }
        }
    }
}

impl Target {
    fn open(name: &OsStr) -> Target {
        Target {
            name: name.to_string_lossy().into_owned(),
            socket: notify_socket(name),
        }
    }
}

/// An unbound datagram socket of our own and the manager's address. The
/// socket is ours alone, so `O_NONBLOCK` on it changes no one else's writes.
fn notify_socket(name: &OsStr) -> io::Result<(UnixDatagram, SocketAddr)> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = name.as_bytes();
    let addr = match bytes.first() {
        Some(b'/') => SocketAddr::from_pathname(name)?,
        Some(b'@') => abstract_address(&bytes[1..])?,
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "not a socket path or @name",
            ));
        }
    };
    let socket = UnixDatagram::unbound()?;
    socket.set_nonblocking(true)?;
    Ok((socket, addr))
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn abstract_address(name: &[u8]) -> io::Result<SocketAddr> {
    #[cfg(target_os = "android")]
    use std::os::android::net::SocketAddrExt;
    #[cfg(target_os = "linux")]
    use std::os::linux::net::SocketAddrExt;
    SocketAddr::from_abstract_name(name)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn abstract_address(_name: &[u8]) -> io::Result<SocketAddr> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "abstract sockets exist only on Linux",
    ))
}

/// `serving N connections`, singular for one.
fn serving(connections: usize, (idle, per_ip): (u64, u64)) -> String {
    let plural = if connections == 1 { "" } else { "s" };
    let mut text = format!("serving {connections} connection{plural}");
    // The protections' closes, once there are any (docs/protocol.md
    // "Protections"): a status with nothing to add stays short.
    if idle > 0 || per_ip > 0 {
        let _ = write!(text, "; closed idle {idle}, per address {per_ip}");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_counts_connections_in_english() {
        assert_eq!(serving(0, (0, 0)), "serving 0 connections");
        assert_eq!(serving(1, (0, 0)), "serving 1 connection");
        assert_eq!(serving(2, (0, 0)), "serving 2 connections");
        assert_eq!(
            serving(2, (3, 1)),
            "serving 2 connections; closed idle 3, per address 1"
        );
    }

    #[test]
    fn notify_socket_takes_a_path_or_an_abstract_name() {
        assert!(notify_socket(OsStr::new("/run/systemd/notify")).is_ok());
        let (_, addr) = notify_socket(OsStr::new("@echod/notify")).unwrap();
        assert!(addr.as_pathname().is_none());
        assert!(notify_socket(OsStr::new("relative")).is_err());
        assert!(notify_socket(OsStr::new("")).is_err());
    }

    #[test]
    fn a_full_queue_drops_the_datagram_without_waiting() {
        let dir = std::env::temp_dir().join(format!("echod-notify-unit-{}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let receiver = UnixDatagram::bind(&dir).unwrap();
        let mut notifier = Notifier {
            target: Some(Target::open(dir.as_os_str())),
            ..Notifier::default()
        };
        // Never read: past the queue limit every send would wait if it could.
        for _ in 0..1000 {
            notifier.send("STATUS=test\n");
        }
        assert!(notifier.dropped() > 0, "the queue never filled");
        drop(receiver);
        let _ = std::fs::remove_file(&dir);
    }
}
