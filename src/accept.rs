//! `Acceptor`: the listeners, admission at `--max-connections` and
//! `--max-connections-per-ip`, and the back-off after a failed accept
//! (docs/protocol.md "Running", "Protections", "Command line" `--backlog`,
//! "Operations" socket activation).
//!
//! The acceptor owns the listening sockets and decides whether the next
//! connection may be taken; it hands each accepted stream to the server,
//! which registers it and keeps it. It never touches the `Poll` (the server
//! registers the listeners it lends out, [`Acceptor::listeners_mut`]) and
//! never decides the drain: the server asks it once more for the backlog
//! ([`Acceptor::accept`]) and then closes it ([`Acceptor::close`]), after
//! which it is a dead time-driven source that answers `None`.
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::net::TcpListener;
use socket2::{Domain, Protocol, Socket, Type};

use crate::config::Config;
use crate::episode::{Episode, QUIET, earliest};
use crate::error::Error;
use crate::per_ip::{Admit, PerIp, Source};

/// A bound listener and the address it really got.
#[derive(Debug)]
pub(crate) struct Listener {
    /// The non-blocking listening socket, registered with `listener_token(index)`.
    pub(crate) socket: TcpListener,
    /// Its local address, with the real port when port 0 was asked for.
    pub(crate) addr: SocketAddr,
}

/// How long accepting pauses after `EMFILE`/`ENFILE` (or another accept error).
const BACKOFF: Duration = Duration::from_millis(100);

/// Admission state: whether accepting is paused, why, and the episodes of
/// its warnings. A time-driven source of the loop: it answers
/// [`AcceptState::next_wakeup`] and [`AcceptState::on_clock`] in every
/// state, and once the listeners close ([`Acceptor::close`]) it is dead
/// and answers `None`. Every change goes through a method here, which
/// keeps `next` up to date.
#[derive(Debug, Default)]
struct AcceptState {
    /// At `--max-connections`; cleared (and accepting resumed) when one closes.
    at_limit: bool,
    /// The `connection limit reached` warning: opened when a client is seen
    /// waiting at the limit, kept while the server keeps reaching the limit,
    /// ended after a second below it.
    limit: Episode,
    /// Accepting pauses until then after an accept error.
    backoff_until: Option<Instant>,
    /// The `cannot accept` warning: opened by a failed accept, kept while
    /// accepts keep failing, ended after a second without a failure.
    failing: Episode,
    /// The `cannot register connection` warning, like `failing`.
    unregistered: Episode,
    /// The earliest of the back-off's and the episodes' ends, kept by
    /// [`AcceptState::schedule`] after every change: the loop asks for it on
    /// every turn, and a stored answer costs the steady path one compare.
    next: Option<Instant>,
}

impl AcceptState {
    /// The nearest instant [`AcceptState::on_clock`] has something to do:
    /// the back-off's end or an episode's end.
    #[inline]
    pub(crate) fn next_wakeup(&self) -> Option<Instant> {
        self.next
    }

    /// Ends the back-off and the episodes whose time has come, saying so
    /// for the episodes; true when accepting should be retried now.
    pub(crate) fn on_clock(&mut self, now: Instant, connections: usize) -> bool {
        if self.limit.on_clock(now) {
            info!("connection limit cleared: connections={connections}");
        }
        if self.failing.on_clock(now) {
            info!("accepting again: no accept error for {}s", QUIET.as_secs());
        }
        if self.unregistered.on_clock(now) {
            info!(
                "registering connections again: no failure for {}s",
                QUIET.as_secs()
            );
        }
        let retry = self.backoff_until.is_some_and(|until| now >= until);
        if retry {
            self.backoff_until = None;
        }
        self.schedule();
        retry
    }

    /// The server is at the limit; `client_waiting` when a client was seen
    /// waiting (a listener event), not merely reached by our own accepts.
    /// True when the warning is to be said.
    fn reached_limit(&mut self, client_waiting: bool) -> bool {
        self.at_limit = true;
        let warn = if client_waiting {
            self.limit.seen()
        } else {
            self.limit.holds();
            false
        };
        self.schedule();
        warn
    }

    /// The server went below the limit.
    fn left_limit(&mut self) {
        self.at_limit = false;
        self.limit.gone(Instant::now);
        self.schedule();
    }

    /// An accept failed: pause. True when the warning is to be said.
    fn failed(&mut self) -> bool {
        self.backoff_until = Some(Instant::now() + BACKOFF);
        let warn = self.failing.seen();
        self.schedule();
        warn
    }

    /// An accept did not fail (a connection, or an empty backlog).
    #[inline]
    fn did_not_fail(&mut self) {
        if self.failing.is_open() {
            self.failing.gone(Instant::now);
            self.schedule();
        }
    }

    /// Registering a connection failed. True when the warning is to be said.
    fn registration_failed(&mut self) -> bool {
        let warn = self.unregistered.seen();
        self.schedule();
        warn
    }

    /// A connection was registered.
    #[inline]
    fn registered(&mut self) {
        if self.unregistered.is_open() {
            self.unregistered.gone(Instant::now);
            self.schedule();
        }
    }

    fn schedule(&mut self) {
        let episodes = earliest(
            self.limit.next_wakeup(),
            earliest(self.failing.next_wakeup(), self.unregistered.next_wakeup()),
        );
        self.next = earliest(self.backoff_until, episodes);
    }

    fn is_backing_off(&self) -> bool {
        self.backoff_until.is_some()
    }
}

/// Builds one listener by hand: `mio`'s `bind` fixes the backlog at 128,
/// too small for a burst of thousands of connects (docs/protocol.md "Running").
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

/// Whether [`Acceptor::accept`] applies the limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Serving: `--max-connections` and the back-off apply.
    Limited,
    /// The drain is taking the backlog (docs/protocol.md "Draining" 2):
    /// every connection already queued is taken, whatever the limit says.
    Backlog,
}

/// The listeners and their admission state; owned by the server and closed
/// when the drain begins.
#[derive(Debug)]
pub(crate) struct Acceptor {
    /// Listening sockets, in `--listen` order; empty once closed.
    listeners: Vec<Listener>,
    /// `--max-connections`: at this many open connections accepting stops.
    max_connections: usize,
    /// Whether accepting is paused, why, and the episodes of its warnings.
    state: AcceptState,
    /// `--max-connections-per-ip`: open connections per source, and when to
    /// warn (docs/protocol.md "Protections"). Empty and unused when off.
    per_ip: PerIp,
    /// Each admitted connection's source, by slab key, for
    /// [`Acceptor::release`]; only while the limit is on (empty otherwise,
    /// so the default costs no memory per connection), and freed whenever
    /// no source holds a connection. Kept here, not asked of the socket at
    /// close: that would be a system call, and fails once the peer reset.
    sources: Vec<Option<Source>>,
    /// The source of the connection [`Acceptor::accept`] just handed out,
    /// until the server says whether it registered it.
    admitting: Option<Source>,
    /// This accept batch's time, read at most once per batch and only when
    /// the per-address limit looks at a connection.
    batch_now: Option<Instant>,
    /// Connections closed by the per-address limit since the server last
    /// took the count ([`Acceptor::take_rejected`]).
    rejected: u64,
}

impl Acceptor {
    /// Binds one listener per `config.listen` address.
    ///
    /// # Errors
    ///
    /// [`Error::Listen`] naming the address that could not be bound.
    pub(crate) fn bind(config: &Config) -> Result<Acceptor, Error> {
        let listeners = config
            .listen
            .iter()
            .map(|&addr| bind_one(addr, config).map_err(|source| Error::Listen { addr, source }))
            .collect::<Result<_, _>>()?;
        Ok(Acceptor::new(listeners, config))
    }

    /// Takes listening sockets the caller already has (docs/protocol.md
    /// "Operations": socket activation, take-over), learning their addresses.
    ///
    /// # Errors
    ///
    /// [`Error::Inherit`] when there is none, or one cannot be made
    /// non-blocking or has no address.
    pub(crate) fn adopt(
        sockets: Vec<std::net::TcpListener>,
        config: &Config,
    ) -> Result<Acceptor, Error> {
        if sockets.is_empty() {
            return Err(Error::Inherit {
                detail: "no listening socket was given".to_owned(),
            });
        }
        let inherit = |what: &str, err: io::Error| Error::Inherit {
            detail: format!("{what}: {}", crate::error::os_reason(&err)),
        };
        let listeners = sockets
            .into_iter()
            .map(|socket| {
                // mio needs non-blocking sockets; one from an embedder may not be.
                socket
                    .set_nonblocking(true)
                    .map_err(|err| inherit("cannot make a socket non-blocking", err))?;
                let addr = socket
                    .local_addr()
                    .map_err(|err| inherit("cannot read a socket's address", err))?;
                Ok(Listener {
                    socket: TcpListener::from_std(socket),
                    addr,
                })
            })
            .collect::<Result<_, Error>>()?;
        Ok(Acceptor::new(listeners, config))
    }

    fn new(listeners: Vec<Listener>, config: &Config) -> Acceptor {
        Acceptor {
            listeners,
            max_connections: config.max_connections,
            state: AcceptState::default(),
            per_ip: PerIp::new(config.max_connections_per_ip, config.max_connections),
            sources: Vec::new(),
            admitting: None,
            batch_now: None,
            rejected: 0,
        }
    }

    /// The listeners' addresses, with real ports.
    pub(crate) fn addrs(&self) -> Vec<SocketAddr> {
        self.listeners.iter().map(|l| l.addr).collect()
    }

    /// How many listeners are open.
    pub(crate) fn len(&self) -> usize {
        self.listeners.len()
    }

    /// The open listeners, in `--listen` order, for the server to lend to
    /// a take-over (docs/protocol.md "Operations").
    pub(crate) fn listeners(&self) -> impl Iterator<Item = &Listener> {
        self.listeners.iter()
    }

    /// Each listener with its index, for the server to register.
    pub(crate) fn listeners_mut(&mut self) -> impl Iterator<Item = (usize, &mut TcpListener)> {
        self.listeners
            .iter_mut()
            .enumerate()
            .map(|(index, l)| (index, &mut l.socket))
    }

    /// When [`Acceptor::on_clock`] has something to do: the end of a
    /// back-off or of a warning's episode. `None` once closed.
    #[inline]
    pub(crate) fn next_wakeup(&self) -> Option<Instant> {
        self.state.next_wakeup()
    }

    /// Ends the back-off and the episodes whose time has come, saying so for
    /// the episodes; true when accepting should be retried now.
    pub(crate) fn on_clock(&mut self, now: Instant, open: usize) -> bool {
        self.state.on_clock(now, open)
    }

    /// The next connection waiting on listener `index`, or `None` when the
    /// backlog is empty, the limit is reached ([`Admission::Limited`] only)
    /// or accepting failed. `first` says the call follows a listener event:
    /// a client is waiting.
    ///
    /// At the limit, accepting stops until a connection closes; new clients
    /// wait in the kernel backlog. The warning is said once per episode: when
    /// a client is first seen waiting, not merely because the limit was
    /// reached, and not again until the server has stayed below the limit for
    /// a second (docs/protocol.md "Logs and notifications are best effort").
    /// On `EMFILE`/`ENFILE` (or any other error that is not one client's) it
    /// pauses for [`BACKOFF`], warning once per episode of failures: the loop
    /// keeps serving, and it does not spin, because the edge-triggered
    /// listener does not report the waiting clients again.
    ///
    /// With `--max-connections-per-ip`, a connection whose source already
    /// holds the limit is closed here and never handed out (docs/protocol.md
    /// "Protections"); the next one is accepted instead. The drain's backlog
    /// ([`Admission::Backlog`]) is taken whatever the limit says. The server
    /// then says whether it registered the connection it got
    /// ([`Acceptor::registration_succeeded`] with its key, or
    /// [`Acceptor::registration_failed`]), and [`Acceptor::release`]s its key
    /// when it closes.
    pub(crate) fn accept(
        &mut self,
        index: usize,
        open: usize,
        admission: Admission,
        first: bool,
    ) -> Option<(mio::net::TcpStream, SocketAddr)> {
        let limited = admission == Admission::Limited;
        if first {
            self.batch_now = None;
        }
        if limited && self.state.is_backing_off() {
            return None;
        }
        if limited && open >= self.max_connections {
            // Reaching the limit with our own accepts says nothing yet.
            if self.state.reached_limit(first) {
                warn!(
                    "connection limit reached: max_connections={}; new connections wait in the backlog",
                    self.max_connections
                );
            }
            return None;
        }
        let addr = self.listeners.get(index)?.addr;
        loop {
            let accepted = self.listeners.get(index)?.socket.accept();
            match accepted {
                Ok((mut stream, peer)) => {
                    self.state.did_not_fail();
                    if limited && self.per_ip.is_enabled() && !self.admit_source(&mut stream, peer)
                    {
                        continue;
                    }
                    // Echo replies are written as soon as the bytes arrive;
                    // Nagle would hold a small echo behind an unacknowledged one.
                    let _ = stream.set_nodelay(true);
                    return Some((stream, peer));
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    self.state.did_not_fail();
                    return None;
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                // The client gave up between SYN and accept: nothing to do.
                Err(err) if is_per_connection(&err) => debug!("accept: {err}"),
                // Descriptor exhaustion (retrying at once would spin) or worse.
                Err(err) => {
                    if self.state.failed() {
                        warn!(
                            "cannot accept: listener={} error={}; pausing accepts for {}ms at a time, open connections are still served",
                            addr,
                            crate::error::os_reason(&err),
                            BACKOFF.as_millis()
                        );
                    }
                    return None;
                }
            }
        }
    }

    /// A connection closed, leaving `open`: true when accepting should be
    /// retried on every listener (the server was at the limit and is below
    /// it now).
    pub(crate) fn connection_closed(&mut self, open: usize) -> bool {
        if !self.state.at_limit {
            return false;
        }
        if open >= self.max_connections {
            return false;
        }
        // The "cleared" line waits for a second below the limit: with clients
        // churning through a full server the limit clears and is reached
        // again on every connection (issue 8).
        self.state.left_limit();
        true
    }

    /// Asks the per-address table about a connection just accepted from
    /// `peer`. True to serve it; false when it was closed here: its source
    /// already holds the limit (or the table could not take a new source).
    /// Input that already arrived is read off first, so the close is a FIN,
    /// not a reset, and nothing is sent (docs/protocol.md "Protections").
    #[cold]
    #[inline(never)]
    fn admit_source(&mut self, stream: &mut mio::net::TcpStream, peer: SocketAddr) -> bool {
        let now = *self.batch_now.get_or_insert_with(Instant::now);
        let source = Source::of(peer.ip());
        let warn_now = match self.per_ip.admit(source, now) {
            Admit::Accepted => {
                self.admitting = Some(source);
                return true;
            }
            Admit::Rejected { warn } => warn,
            Admit::NoRoom => false,
        };
        if warn_now {
            warn!(
                "per-address limit reached: source={source} limit={}; new connections from it are closed",
                self.per_ip.limit()
            );
        }
        debug!("connection rejected: peer={peer} source={source} per-address limit");
        // Input that already arrived is read off, so the close is a FIN.
        crate::connection::read_off(stream, &mut [0u8; 2048], 32);
        self.rejected += 1;
        // The caller drops the stream: the close sends FIN.
        false
    }

    /// Connections closed by the per-address limit since the last call.
    #[inline]
    pub(crate) fn take_rejected(&mut self) -> u64 {
        std::mem::take(&mut self.rejected)
    }

    /// A connection accepted but not registered with the `Poll` (it is
    /// closed): warned once per episode of such failures.
    pub(crate) fn registration_failed(&mut self, peer: SocketAddr, err: &io::Error) {
        if let Some(source) = self.admitting.take() {
            self.per_ip.release(source);
        }
        if self.state.registration_failed() {
            warn!(
                "cannot register connection: peer={peer} error={}; such connections are closed",
                crate::error::os_reason(err)
            );
        }
    }

    /// The connection just handed out was registered with slab key `key`:
    /// an episode of registration failures may end, and its source (with the
    /// per-address limit on) is kept for [`Acceptor::release`].
    #[inline]
    pub(crate) fn registration_succeeded(&mut self, key: usize) {
        self.state.registered();
        if let Some(source) = self.admitting.take() {
            self.remember(key, source);
        }
    }

    /// Keeps `source` as connection `key`'s. If the list cannot grow (an
    /// allocation failed) the connection is served uncounted rather than
    /// the process aborting: its count is given back at once.
    #[cold]
    fn remember(&mut self, key: usize, source: Source) {
        if key >= self.sources.len() {
            let grow = key + 1 - self.sources.len();
            if self.sources.try_reserve(grow).is_err() {
                self.per_ip.release(source);
                return;
            }
            self.sources.resize(key + 1, None);
        }
        if let Some(entry) = self.sources.get_mut(key) {
            *entry = Some(source);
        }
    }

    /// Connection `key` closed: its source's count goes down (with the
    /// per-address limit on; otherwise nothing is kept and this is one test).
    #[inline]
    pub(crate) fn release(&mut self, key: usize) {
        if !self.sources.is_empty() {
            self.release_source(key);
        }
    }

    #[cold]
    fn release_source(&mut self, key: usize) {
        if let Some(source) = self.sources.get_mut(key).and_then(Option::take) {
            self.per_ip.release(source);
        }
        if self.per_ip.is_empty() && self.sources.capacity() > 64 {
            // No source holds a connection, so every entry is None: give a
            // big list back (a small one is kept, so one client coming and
            // going costs no allocation).
            self.sources = Vec::new();
        }
    }

    /// Closes the acceptor (the drain began): hands back the listeners for
    /// the server to deregister and drop (dropping closes them: new connects
    /// are refused and the port is free at once). Nothing is accepted any
    /// more, so the back-off and the episodes end here, silently, and nothing
    /// is scheduled again. Without this a back-off begun before the drain
    /// stayed the nearest deadline and the loop woke every 0.5 ms until the
    /// end (issue 8).
    pub(crate) fn close(&mut self) -> Vec<Listener> {
        self.state = AcceptState::default();
        // The per-address table too: nothing is admitted any more, and the
        // connections still open are drained whatever their source.
        self.per_ip.clear();
        self.sources = Vec::new();
        self.admitting = None;
        std::mem::take(&mut self.listeners)
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
