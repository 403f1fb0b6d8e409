//! Listeners and accepting: building the listening sockets, admission at
//! `--max-connections`, and the back-off on descriptor exhaustion (SPEC
//! "Running", "Command line" `--backlog`, "Operations" socket activation).
//!
//! Accepting is part of the server's loop (these are `Server` methods); this
//! file only keeps that part readable on its own. It never decides the
//! drain; `begin_drain` calls [`Server::accept_ready`] once more to take the
//! backlog before the listeners close.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::net::TcpListener;
use socket2::{Domain, Protocol, Socket, Type};

use crate::config::Config;
use crate::error::Error;
use crate::server::{Listener, Server};

/// How long accepting pauses after `EMFILE`/`ENFILE`.
const BACKOFF: Duration = Duration::from_millis(100);
/// At most one descriptor-exhaustion warning per this interval.
const WARN_INTERVAL: Duration = Duration::from_secs(1);

/// Admission state: whether accepting is paused, and why. A time-driven
/// source of the loop: it answers [`AcceptState::next_wakeup`] and
/// [`AcceptState::on_clock`] in every state, and once the listeners close
/// ([`AcceptState::close`]) it is dead and answers `None`.
#[derive(Debug, Default)]
pub(crate) struct AcceptState {
    /// At `--max-connections`; cleared (and accepting resumed) when one closes.
    at_limit: bool,
    /// The limit warning was logged in this episode (a client was seen waiting).
    limit_warned: bool,
    /// Accepting pauses until then after descriptor exhaustion.
    backoff_until: Option<Instant>,
    /// Last exhaustion warning, for the once-a-second limit.
    last_warning: Option<Instant>,
}

impl AcceptState {
    /// When the back-off ends, for the poll timeout.
    pub(crate) fn next_wakeup(&self) -> Option<Instant> {
        self.backoff_until
    }

    /// Ends the back-off when its time has come; true when accepting should
    /// be retried now.
    pub(crate) fn on_clock(&mut self, now: Instant) -> bool {
        if self.backoff_until.is_some_and(|until| now >= until) {
            self.backoff_until = None;
            return true;
        }
        false
    }

    /// The listeners closed (the drain began): nothing is accepted any more,
    /// so the back-off ends here and nothing is scheduled again. Without
    /// this a back-off begun before the drain stayed the nearest deadline and
    /// the loop woke every 0.5 ms until the end (issue 8).
    pub(crate) fn close(&mut self) {
        *self = AcceptState::default();
    }

    fn is_backing_off(&self) -> bool {
        self.backoff_until.is_some()
    }
}

/// Opens the listeners: the service manager's sockets if `LISTEN_FDS` names
/// this process, else one per `--listen` address.
pub(crate) fn open_listeners(config: &Config) -> Result<Vec<Listener>, Error> {
    if let Some(inherited) =
        crate::sys::inherited_listeners().map_err(|detail| Error::Inherit { detail })?
    {
        let mut listeners = Vec::with_capacity(inherited.len());
        for std_listener in inherited {
            let addr = std_listener.local_addr().map_err(|err| Error::Inherit {
                detail: err.to_string(),
            })?;
            info!("using inherited socket: addr={addr}");
            listeners.push(Listener {
                socket: TcpListener::from_std(std_listener),
                addr,
            });
        }
        return Ok(listeners);
    }
    config
        .listen
        .iter()
        .map(|&addr| bind_one(addr, config).map_err(|source| Error::Listen { addr, source }))
        .collect()
}

/// Builds one listener by hand: `mio`'s `bind` fixes the backlog at 128,
/// too small for a burst of thousands of connects (SPEC "Running").
fn bind_one(addr: SocketAddr, config: &Config) -> io::Result<Listener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // Lets a new process bind at once while old connections sit in TIME_WAIT.
    socket.set_reuse_address(true)?;
    if config.reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    // validate() keeps the backlog within i32.
    socket.listen(i32::try_from(config.backlog).unwrap_or(i32::MAX))?;
    let std_listener: std::net::TcpListener = socket.into();
    let addr = std_listener.local_addr()?;
    Ok(Listener {
        socket: TcpListener::from_std(std_listener),
        addr,
    })
}

impl Server {
    /// Accepts from listener `index` until the backlog is empty, the
    /// connection limit is reached (only while running) or descriptors run out.
    ///
    /// At the limit, accepting stops until a connection closes; new clients
    /// wait in the kernel backlog. The warning is logged once per episode,
    /// when a client is seen waiting, not merely because the limit was reached.
    /// On `EMFILE`/`ENFILE` it warns at most once a second and pauses for
    /// [`BACKOFF`]: the loop keeps serving, and it does not spin, because the
    /// edge-triggered listener does not report the waiting clients again.
    pub(crate) fn accept_ready(&mut self, index: usize) {
        let running = self.life.is_running();
        if running && self.accept.is_backing_off() {
            return;
        }
        // Called at the limit, this is a listener event: a client is waiting.
        // Reaching the limit with our own accepts says nothing yet.
        let mut client_waiting = true;
        loop {
            if running && self.conns.len() >= self.config.max_connections {
                self.accept.at_limit = true;
                if client_waiting && !self.accept.limit_warned {
                    self.accept.limit_warned = true;
                    warn!(
                        "connection limit reached: max_connections={}; new connections wait in the backlog",
                        self.config.max_connections
                    );
                }
                return;
            }
            client_waiting = false;
            let Some(listener) = self.listeners.get(index) else {
                return;
            };
            match listener.socket.accept() {
                Ok((stream, peer)) => {
                    // Echo replies are written as soon as the bytes arrive;
                    // Nagle would hold a small echo behind an unacknowledged one.
                    let _ = stream.set_nodelay(true);
                    self.admit(stream, peer);
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) if crate::sys::is_resource_exhausted(&err) => {
                    self.back_off(&err);
                    return;
                }
                // The client gave up between SYN and accept: nothing to do.
                Err(err) if is_per_connection(&err) => debug!("accept: {err}"),
                Err(err) => {
                    warn!("accept failed: listener={} error={err}", listener.addr);
                    self.back_off(&err);
                    return;
                }
            }
        }
    }

    /// Accepts again on every listener after the limit cleared or the back-off ended.
    pub(crate) fn resume_accepting(&mut self) {
        if self.accept.at_limit {
            if self.conns.len() >= self.config.max_connections {
                return;
            }
            self.accept.at_limit = false;
            if std::mem::take(&mut self.accept.limit_warned) {
                info!("connection limit cleared: connections={}", self.conns.len());
            }
        }
        for index in 0..self.listeners.len() {
            self.accept_ready(index);
        }
    }

    fn back_off(&mut self, err: &io::Error) {
        let now = Instant::now();
        self.accept.backoff_until = Some(now + BACKOFF);
        let due = self
            .accept
            .last_warning
            .is_none_or(|last| now.duration_since(last) >= WARN_INTERVAL);
        if due {
            self.accept.last_warning = Some(now);
            warn!(
                "cannot accept: {}; pausing accepts for {}ms, open connections are still served",
                crate::error::os_reason(err),
                BACKOFF.as_millis()
            );
        }
    }
}

fn is_per_connection(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::PermissionDenied
    ) || matches!(
        err.raw_os_error(),
        Some(libc::EPROTO | libc::ENETDOWN | libc::EHOSTUNREACH)
    )
}
