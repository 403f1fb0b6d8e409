//! `Server`: the one `Poll`, its sources and tokens, event dispatch and the
//! poll timeout (SPEC "Shape"; STYLE "Loop shape").
//!
//! This is the only module that owns the `Poll` and registers, reregisters
//! or deregisters sources. Connections say what they want next
//! ([`crate::connection::Step`]); the lifecycle says when the drain starts and
//! ends ([`crate::drain::Lifecycle`]); accepting lives in `accept.rs`. The
//! loop: compute the timeout from the nearest deadline, poll (retrying on
//! `Interrupted`), dispatch by token, remove connections closed during the
//! batch, let the lifecycle react to the clock, stop at `Stopped`.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};
use mio::event::Event;
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Registry, Token, Waker};
use slab::Slab;

use crate::config::Config;
use crate::connection::{Closed, Connection, Ctx, Readiness, Resume, Step};
use crate::drain::{DrainEnd, DrainReason, Due, Lifecycle, State};
use crate::error::Error;
use crate::notify::Notifier;
use crate::shutdown::ShutdownHandle;
use crate::signals::SignalWatcher;

/// The signal pipe's token; the slab never reaches the top of the range.
pub(crate) const SIGNAL_TOKEN: Token = Token(usize::MAX);
/// The waker's token ([`ShutdownHandle::drain`]).
pub(crate) const WAKER_TOKEN: Token = Token(usize::MAX - 1);
/// Listener `index`'s token, counting down from below the waker's.
pub(crate) fn listener_token(index: usize) -> Token {
    Token(usize::MAX - 2 - index)
}

/// The shared read buffer's size: big enough to take a whole socket buffer's
/// worth of small messages in one read, small enough to stay in cache.
const READ_BUFFER: usize = 64 * 1024;
/// Reads one connection may make per event before the others get a turn.
const READS_PER_EVENT: usize = 16;
/// Events taken from the kernel per `poll`.
const EVENTS_PER_POLL: usize = 1024;
/// Freed pending memory after which the heap's free pages go back to the
/// OS: the allocator keeps freed blocks for reuse, so without this RSS stays
/// at its peak after never-reading clients leave (docs/protocol.md "Running").
/// Large enough that a connection emptying its buffer now and then costs
/// nothing; small enough that RSS follows a crowd of leaving clients.
const TRIM_AFTER: usize = 1024 * 1024;

/// Counters kept over the server's life, logged on SIGUSR1 and at the end.
/// (Echoed bytes are counted in the connections' shared context.)
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Connections accepted since start.
    pub accepted: u64,
    /// Connections that closed on their own after the drain began.
    pub left: u64,
    /// Connections closed by the server at the deadline.
    pub closed_at_deadline: u64,
    /// Connections closed by a forced stop (a second signal while draining).
    pub closed_forced: u64,
}

/// How the server's run ended, returned by [`Server::run`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// What started the drain.
    pub reason: Option<DrainReason>,
    /// How it ended: emptied, at the deadline, or forced.
    pub end: DrainEnd,
    /// Connections accepted over the server's life.
    pub accepted: u64,
    /// Bytes echoed over the server's life.
    pub bytes_echoed: u64,
    /// Connections that left on their own during the drain.
    pub left: u64,
    /// Connections the server closed at the deadline.
    pub closed_at_deadline: u64,
    /// Connections the server closed at a forced stop.
    pub closed_forced: u64,
    /// Log lines dropped because stderr would not take them at once
    /// (docs/protocol.md "Logs and notifications are best effort"); 0 unless
    /// echod's own logger ([`crate::logging`]) is installed.
    pub log_lines_dropped: u64,
}

/// A bound listener and the address it really got.
#[derive(Debug)]
pub(crate) struct Listener {
    /// The non-blocking listening socket, registered with `listener_token(index)`.
    pub(crate) socket: TcpListener,
    /// Its local address, with the real port when port 0 was asked for.
    pub(crate) addr: SocketAddr,
}

/// The echo server: bound, then run on the caller's thread.
///
/// # Examples
///
/// ```
/// let mut config = echod::Config::default();
/// config.listen = vec!["127.0.0.1:0".parse().unwrap()];
/// let server = echod::Server::bind(config).unwrap();
/// let addr = server.local_addrs()[0];
/// assert_ne!(addr.port(), 0);
/// server.shutdown_handle().drain();
/// let summary = server.run().unwrap();
/// assert_eq!(summary.end, echod::DrainEnd::Emptied);
/// ```
#[derive(Debug)]
pub struct Server {
    /// The one `Poll` of the process.
    poll: Poll,
    /// The configuration it was bound with.
    pub(crate) config: Config,
    /// Listening sockets; emptied (closed) when the drain begins.
    pub(crate) listeners: Vec<Listener>,
    /// Addresses bound at start, kept after the listeners close.
    addrs: Vec<SocketAddr>,
    /// Connections; the slab key is the connection's token.
    pub(crate) conns: Slab<Connection>,
    /// What every connection step shares: the one read buffer, the notice,
    /// the limits, and the echoed-bytes counter.
    ctx: Ctx,
    /// Running -> Draining -> Stopped.
    pub(crate) life: Lifecycle,
    /// Keys of connections closed during this batch, removed after it so a
    /// key is never reused while the batch may still name it.
    closing: Vec<usize>,
    /// Connections that stopped reading at the per-event cap with input left;
    /// served again next turn, since no new edge will report that input.
    rearm: Vec<usize>,
    /// Connections that stopped reading because the memory budget was spent
    /// (or an allocation failed), oldest first; served again when memory is
    /// freed, as many as the budget then allows. A key is listed once
    /// (`Connection::awaiting_budget`); a stale key is skipped.
    waiters: VecDeque<usize>,
    /// Allocation-failure episodes already warned about, and when the last
    /// warning was logged (at most one a second).
    memory_warned: (u64, Option<Instant>),
    /// Accept admission and back-off (see accept.rs).
    pub(crate) accept: crate::accept::AcceptState,
    /// Counters.
    pub(crate) stats: Stats,
    /// The programmatic drain trigger, sharing the waker.
    handle: ShutdownHandle,
    /// The signal pipe, once the embedder turned signals on.
    signals: Option<SignalWatcher>,
    /// systemd notifications (a no-op unless `NOTIFY_SOCKET` is set).
    notifier: Notifier,
    /// When the server started, for uptime.
    started: Instant,
}

impl Server {
    /// Creates the `Poll`, binds every `--listen` address and registers
    /// them. Nothing is accepted until [`Server::run`].
    ///
    /// # Errors
    ///
    /// [`Error::Usage`] for an invalid config, [`Error::Listen`] when an
    /// address cannot be bound, [`Error::Setup`] when the `Poll` or waker
    /// cannot be created.
    ///
    /// # Notes
    ///
    /// Raises the soft `RLIMIT_NOFILE` to the hard limit.
    pub fn bind(config: Config) -> Result<Server, Error> {
        config.validate()?;
        let listeners = crate::accept::bind_listeners(&config)?;
        Server::new(config, listeners)
    }

    /// Like [`Server::bind`], but serves listening sockets the caller
    /// already has (a service manager's, from
    /// [`crate::sys::inherited_listeners`]) instead of binding
    /// `config.listen`, which becomes their addresses.
    ///
    /// # Errors
    ///
    /// [`Error::Inherit`] when there is no socket or one has no address,
    /// [`Error::Usage`] for an invalid config, [`Error::Setup`] when the
    /// `Poll` or waker cannot be created.
    ///
    /// # Notes
    ///
    /// Raises the soft `RLIMIT_NOFILE` to the hard limit.
    pub fn from_listeners(
        mut config: Config,
        sockets: Vec<std::net::TcpListener>,
    ) -> Result<Server, Error> {
        let listeners = crate::accept::adopt_listeners(sockets)?;
        config.listen = listeners.iter().map(|l| l.addr).collect();
        config.validate()?;
        Server::new(config, listeners)
    }

    fn new(config: Config, mut listeners: Vec<Listener>) -> Result<Server, Error> {
        match crate::sys::raise_nofile_limit() {
            Ok(limit) => debug!("descriptor limit: nofile={limit}"),
            Err(err) => warn!("cannot raise descriptor limit: {err}"),
        }
        let setup = |what| move |source| Error::Setup { what, source };
        let poll = Poll::new().map_err(setup("the event loop"))?;
        let waker = Waker::new(poll.registry(), WAKER_TOKEN).map_err(setup("the waker"))?;
        for (index, listener) in listeners.iter_mut().enumerate() {
            poll.registry()
                .register(
                    &mut listener.socket,
                    listener_token(index),
                    Interest::READABLE,
                )
                .map_err(setup("the listener"))?;
        }
        let addrs = listeners.iter().map(|l| l.addr).collect();
        Ok(Server {
            poll,
            listeners,
            addrs,
            conns: Slab::new(),
            ctx: Ctx::new(
                READ_BUFFER,
                &config.shutdown_message,
                config.max_pending,
                config.max_pending_total,
                READS_PER_EVENT,
            ),
            // No lame duck until --drain-delay is wired into Config.
            life: Lifecycle::new(Duration::ZERO, config.drain_timeout),
            closing: Vec::new(),
            rearm: Vec::new(),
            waiters: VecDeque::new(),
            memory_warned: (0, None),
            accept: Default::default(),
            stats: Stats::default(),
            handle: ShutdownHandle::new(waker),
            signals: None,
            notifier: Notifier::from_env(),
            started: Instant::now(),
            config,
        })
    }

    /// The addresses the listeners are bound to, with real ports.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// A handle that starts the drain from any thread.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.handle.clone()
    }

    /// Turns signal handling on: the watcher's pipe joins this server's `Poll`.
    ///
    /// # Errors
    ///
    /// [`Error::Setup`] when the pipe cannot be registered.
    pub fn watch_signals(&mut self, mut watcher: SignalWatcher) -> Result<(), Error> {
        self.poll
            .registry()
            .register(watcher.source(), SIGNAL_TOKEN, Interest::READABLE)
            .map_err(|source| Error::Setup {
                what: "signal handling",
                source,
            })?;
        self.signals = Some(watcher);
        Ok(())
    }

    /// Runs the loop on this thread until the drain ends.
    ///
    /// # Errors
    ///
    /// [`Error::Poll`] when `poll` fails other than by `Interrupted`.
    pub fn run(mut self) -> Result<Summary, Error> {
        let mut events = Events::with_capacity(EVENTS_PER_POLL);
        self.notifier.ready(self.conns.len());
        // Whether anything time-driven is pending; checked once per turn so
        // the steady path reads no clock at all.
        let mut timers = self.has_timers();
        while !self.life.is_stopped() {
            let timeout = if timers || !self.rearm.is_empty() {
                self.poll_timeout()
            } else {
                None
            };
            if let Err(err) = self.poll.poll(&mut events, timeout) {
                if err.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                error!("event loop failed: {err}");
                return Err(Error::Poll(err));
            }
            if self.rearm.is_empty() {
                for event in events.iter() {
                    self.dispatch(event);
                }
            } else {
                // Taken before dispatch, which may queue connections for next turn.
                let rearmed = std::mem::take(&mut self.rearm);
                for event in events.iter() {
                    self.dispatch(event);
                }
                for key in rearmed {
                    self.serve(key, Readiness::READABLE);
                }
            }
            self.remove_closed();
            if self.ctx.budget.is_changed() {
                self.on_memory_freed();
            }
            timers = self.has_timers();
            if timers {
                self.on_clock(Instant::now());
            }
        }
        Ok(self.finish())
    }

    /// The nearest instant the loop must wake at, if any: every time-driven
    /// source is asked, in every state, and a source with nothing scheduled,
    /// or dead (the acceptor once the drain began), answers `None`.
    /// [`Server::on_clock`] asks the same sources, so the two cannot disagree
    /// about which source is live (STYLE "Some rules").
    fn next_wakeup(&self) -> Option<Instant> {
        [
            self.life.next_wakeup(),
            self.accept.next_wakeup(),
            self.notifier.next_wakeup(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// True when anything time-driven is pending: a drain, an accept
    /// back-off, a warning's episode, a status update. While serving with
    /// none, the steady path reads no clock.
    ///
    /// The same sources as [`Server::next_wakeup`], asked one at a time:
    /// on the steady path (every turn of the loop) that is three compares,
    /// where computing the minimum costs more.
    #[inline]
    fn has_timers(&self) -> bool {
        self.life.next_wakeup().is_some()
            || self.accept.next_wakeup().is_some()
            || self.notifier.next_wakeup().is_some()
    }

    fn poll_timeout(&self) -> Option<Duration> {
        if !self.rearm.is_empty() {
            return Some(Duration::ZERO);
        }
        let at = self.next_wakeup()?;
        // Round up so we never wake a hair early and spin until the deadline.
        Some(at.saturating_duration_since(Instant::now()) + Duration::from_micros(500))
    }

    #[inline(always)]
    fn dispatch(&mut self, event: &Event) {
        match event.token() {
            SIGNAL_TOKEN => self.on_signals(),
            WAKER_TOKEN => {
                if self.handle.is_drain_requested() {
                    self.begin_drain(DrainReason::Handle);
                }
            }
            Token(key) if key < usize::MAX - 2 - self.addrs.len() => {
                let ready = Readiness {
                    readable: event.is_readable() || event.is_read_closed() || event.is_error(),
                    eof_reported: event.is_read_closed(),
                };
                self.serve(key, ready);
            }
            Token(token) => {
                let index = usize::MAX - 2 - token;
                if self.life.is_running() {
                    self.accept_ready(index);
                }
            }
        }
    }

    /// Runs one connection's step and applies what it asks for.
    #[inline(always)]
    fn serve(&mut self, key: usize, ready: Readiness) {
        // A missing or closing entry is a spurious event (mio allows them) or
        // a stale rearm: ignore it.
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.closing {
            return;
        }
        let step = conn.on_ready(&mut self.ctx, ready);
        if matches!(step, Step::Keep { interest, resume: Resume::OnEvent } if interest == conn.registered)
        {
            // The steady path: nothing to reregister, nothing to queue.
            return;
        }
        apply(
            self.poll.registry(),
            key,
            conn,
            step,
            &mut self.closing,
            &mut self.rearm,
            &mut self.waiters,
        );
    }

    /// Pending memory was freed (a buffer written out, a connection closed):
    /// give the heap's free pages back to the OS once enough has been freed,
    /// and serve the connections waiting for memory, oldest first, while the
    /// budget has room. Only waiters are visited, never every connection.
    ///
    /// Kept out of the loop: inlined into it, it cost the steady path two
    /// instructions per round trip (callgrind).
    #[cold]
    #[inline(never)]
    fn on_memory_freed(&mut self) {
        // Serving waiters and removing those that closed may free more; a
        // few rounds, and whatever is left waits for the next freeing.
        for _ in 0..4 {
            if !self.ctx.budget.take_changed() {
                return;
            }
            self.warn_allocation_failure();
            if self.ctx.budget.freed() >= TRIM_AFTER {
                self.ctx.budget.take_freed();
                crate::sys::release_free_memory();
            }
            // Each waiter at most once: one that finds no room lists itself again.
            for _ in 0..self.waiters.len() {
                if !self.ctx.budget.has_room() {
                    break;
                }
                let Some(key) = self.waiters.pop_front() else {
                    break;
                };
                match self.conns.get_mut(key) {
                    // A stale key: that connection closed, or the key was reused.
                    Some(conn) if conn.awaiting_budget => conn.awaiting_budget = false,
                    _ => continue,
                }
                self.serve(key, Readiness::READABLE);
            }
            self.remove_closed();
        }
    }

    pub(crate) fn admit(&mut self, stream: mio::net::TcpStream, peer: SocketAddr) {
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        let mut conn = Connection::new(stream);
        if let Err(err) =
            self.poll
                .registry()
                .register(conn.stream_mut(), Token(key), Interest::READABLE)
        {
            self.registration_failed(peer, &err);
            return;
        }
        entry.insert(conn);
        self.registration_succeeded();
        self.stats.accepted += 1;
        self.notifier.connections_changed();
        debug!("connection opened: peer={peer} token={key}");
    }

    /// An operator should know that memory ran out before the budget did
    /// (a container or `RLIMIT_AS` limit below it): warned once per episode,
    /// at most once a second.
    fn warn_allocation_failure(&mut self) {
        let failures = self.ctx.budget.failures();
        if failures == self.memory_warned.0 {
            return;
        }
        let now = Instant::now();
        if self
            .memory_warned
            .1
            .is_some_and(|last| now.duration_since(last) < Duration::from_secs(1))
        {
            return;
        }
        self.memory_warned = (failures, Some(now));
        warn!(
            "memory allocation failed: pending={} connections={}; reading paused until memory is freed",
            self.ctx.budget.charged(),
            self.conns.len()
        );
    }

    /// Removes the connections closed during the batch. Inlined for the
    /// check alone: the steady path has nothing to remove, and a call per
    /// turn cost it 17 instructions (callgrind).
    #[inline(always)]
    fn remove_closed(&mut self) {
        if !self.closing.is_empty() {
            self.remove_closed_now();
        }
    }

    fn remove_closed_now(&mut self) {
        let draining = !self.life.is_running();
        for key in self.closing.drain(..) {
            if let Some(mut conn) = self.conns.try_remove(key) {
                conn.release(&mut self.ctx);
                if draining {
                    self.stats.left += 1;
                }
            }
        }
        self.notifier.connections_changed();
        if self.life.is_running() {
            self.resume_accepting();
        }
    }

    fn on_signals(&mut self) {
        let Some(watcher) = self.signals.as_mut() else {
            return;
        };
        let received = watcher.take();
        if received.stats {
            self.log_stats();
        }
        for _ in 0..received.drain_count {
            match self.life.state() {
                State::Running => {
                    let name = received.drain.unwrap_or("signal");
                    self.begin_drain(DrainReason::Signal(name));
                }
                State::Draining { .. } => {
                    warn!("second signal while draining: closing every connection now");
                    self.life.force();
                    self.close_all(DrainEnd::Forced);
                }
                // Never entered yet: `begin_drain` skips the lame duck.
                State::LameDuck { .. } | State::Stopped { .. } => {}
            }
        }
    }

    /// SPEC Draining 1-3: log, take the backlog, close the listeners, then
    /// start every connection's echo-notice-FIN sequence.
    fn begin_drain(&mut self, reason: DrainReason) {
        let now = Instant::now();
        if !self.life.begin_drain(reason, now) {
            return;
        }
        self.notifier.stopping();
        // SPEC Draining 2: connections already in the backlog are accepted
        // (regardless of --max-connections) and drained like the others.
        for index in 0..self.listeners.len() {
            self.accept_ready(index);
        }
        self.close_listeners();
        info!(
            "drain started: reason={reason} connections={} deadline={:?}",
            self.conns.len(),
            self.config.drain_timeout
        );
        // The first draining status now, not a second later: a short drain
        // would otherwise only ever say STOPPING.
        let open = self.conns.len();
        self.notifier
            .on_clock(now, open, Some(self.config.drain_timeout));
        let keys: Vec<usize> = self.conns.iter().map(|(key, _)| key).collect();
        for key in keys {
            self.drain_connection(key);
        }
    }

    // The same shape as `serve`, kept apart on purpose: sharing one generic
    // step function cost the steady path 18 instructions per message
    // (callgrind), as the drain code got inlined into the loop.
    fn drain_connection(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.closing {
            return;
        }
        let step = conn.begin_drain(&mut self.ctx);
        apply(
            self.poll.registry(),
            key,
            conn,
            step,
            &mut self.closing,
            &mut self.rearm,
            &mut self.waiters,
        );
    }

    /// Lets every time-driven source of [`Server::next_wakeup`] act on the
    /// clock, whatever the state: each knows when it has nothing to do.
    fn on_clock(&mut self, now: Instant) {
        if self.accept.on_clock(now, self.conns.len()) {
            self.resume_accepting();
        }
        self.notifier.on_clock(now, self.conns.len(), None);
        match self.life.on_clock(now, self.conns.len()) {
            Due::Nothing => {}
            Due::Countdown(remaining) => {
                info!(
                    "drain countdown: remaining={:.1}s connections={}",
                    remaining.as_secs_f64(),
                    self.conns.len()
                );
                self.notifier
                    .on_clock(now, self.conns.len(), Some(remaining));
            }
            Due::Stop(DrainEnd::Deadline) => self.close_all(DrainEnd::Deadline),
            Due::Stop(_) => {}
            // TODO(--drain-delay): never due yet: this loop drains through
            // `Lifecycle::begin_drain`, which skips the lame duck.
            Due::BeginDrain => {}
        }
    }

    /// Closes every connection now (`why`: the deadline or a forced stop),
    /// reading off queued input first so each close sends FIN rather than
    /// RST where it can.
    fn close_all(&mut self, why: DrainEnd) {
        for (_, conn) in self.conns.iter_mut() {
            conn.discard_unread(&mut self.ctx.buf);
            conn.release(&mut self.ctx);
        }
        let open = (self.conns.len() - self.closing.len()) as u64;
        match why {
            DrainEnd::Forced => self.stats.closed_forced += open,
            _ => self.stats.closed_at_deadline += open,
        }
        // Those already closing left on their own.
        self.stats.left += self.closing.len() as u64;
        self.closing.clear();
        self.conns.clear();
    }

    fn close_listeners(&mut self) {
        for mut listener in self.listeners.drain(..) {
            // Closing the socket frees the port at once; new connects are refused.
            let _ = self.poll.registry().deregister(&mut listener.socket);
        }
        // Nothing is accepted any more: the acceptor's timers die with it.
        self.accept.close();
    }

    fn log_stats(&self) {
        let state = match self.life.state() {
            State::Running => "running",
            State::LameDuck { .. } => "lame_duck",
            State::Draining { .. } => "draining",
            State::Stopped { .. } => "stopped",
        };
        info!(
            "stats: state={state} connections={} accepted={} bytes_echoed={} pending={} uptime={:.1}s log_lines_dropped={} notifications_dropped={}",
            self.conns.len(),
            self.stats.accepted,
            self.ctx.bytes_echoed,
            self.ctx.budget.charged(),
            self.started.elapsed().as_secs_f64(),
            crate::logging::lines_dropped(),
            self.notifier.dropped()
        );
    }

    fn finish(self) -> Summary {
        let (reason, end) = match self.life.state() {
            State::Stopped { reason, end } => (Some(reason), end),
            _ => (None, DrainEnd::Emptied),
        };
        let summary = Summary {
            reason,
            end,
            accepted: self.stats.accepted,
            bytes_echoed: self.ctx.bytes_echoed,
            left: self.stats.left,
            closed_at_deadline: self.stats.closed_at_deadline,
            closed_forced: self.stats.closed_forced,
            log_lines_dropped: crate::logging::lines_dropped() as u64,
        };
        let label = if end == DrainEnd::Forced {
            "drain forced"
        } else {
            "drain finished"
        };
        let reason = reason.map_or_else(|| "none".to_owned(), |r| r.to_string());
        info!(
            "{label}: reason={reason} end={end} left={} closed_at_deadline={} closed_forced={} accepted={} bytes_echoed={} log_lines_dropped={}",
            summary.left,
            summary.closed_at_deadline,
            summary.closed_forced,
            summary.accepted,
            summary.bytes_echoed,
            summary.log_lines_dropped
        );
        summary
    }
}

/// Applies a connection's step: reregister when the interest changed, queue
/// it for another turn or for freed memory, or schedule its removal after
/// the batch.
#[inline]
fn apply(
    registry: &Registry,
    key: usize,
    conn: &mut Connection,
    step: Step,
    closing: &mut Vec<usize>,
    rearm: &mut Vec<usize>,
    waiters: &mut VecDeque<usize>,
) {
    match step {
        Step::Keep { interest, resume } => {
            if interest != conn.registered {
                if let Err(err) = registry.reregister(conn.stream_mut(), Token(key), interest) {
                    debug!("connection closed: token={key} reregister failed: {err}");
                    conn.closing = true;
                    closing.push(key);
                    return;
                }
                conn.registered = interest;
            }
            match resume {
                Resume::OnEvent => {}
                Resume::NextTurn => rearm.push(key),
                Resume::WhenBudget if !conn.awaiting_budget => {
                    conn.awaiting_budget = true;
                    waiters.push_back(key);
                }
                Resume::WhenBudget => {}
            }
        }
        Step::Close(why) => {
            match why {
                Closed::PeerDone => debug!("connection closed: token={key} peer done"),
                Closed::Failed(kind) => debug!("connection closed: token={key} error={kind}"),
            }
            conn.closing = true;
            closing.push(key);
        }
    }
}
