//! `Server`: the one `Poll`, its sources and tokens, event dispatch and the
//! poll timeout (docs/protocol.md "Shape"; docs/design.md "The event loop").
//!
//! This is the only module that owns the `Poll` and registers, reregisters
//! or deregisters sources. Connections say what they want next
//! ([`crate::connection::Step`]); the lifecycle says when the drain starts and
//! ends ([`crate::drain::Lifecycle`]); the [`Acceptor`] says which
//! connections may come in. The loop: compute the timeout from the nearest
//! deadline, poll (retrying on `Interrupted`), dispatch by token, remove
//! connections closed during the batch, let every time-driven source react
//! to the clock, stop at `Stopped`.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};
use mio::event::Event;
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;

use crate::accept::{Acceptor, Admission};
use crate::config::Config;
use crate::connection::{Closed, Connection, Ctx, Readiness, Resume, Step};
use crate::drain::{DrainEnd, DrainReason, Due, Lifecycle, Signalled, State};
use crate::error::Error;
use crate::health::{Health, MetricsSnapshot};
use crate::idle::{IdleClock, Stamp};
use crate::notify::Notifier;
use crate::shutdown::ShutdownHandle;
use crate::signals::SignalWatcher;
use crate::stats::{Stats, Summary};
use crate::udp::{LogFields, UdpSockets};

// Take-over (docs/protocol.md "Operations"): `offer_take_over` and the
// handover listener's events, in a file of their own; `from_sockets`, the
// new instance's way in, in another.
mod handover;
mod sockets;

pub use sockets::Sockets;

// When the loop reads the clock (docs/design.md "Timers").
mod clock;
// The protections' side of the loop: the idle sweep, the lingers of
// idle-closed connections, the per-address count (docs/protocol.md "Protections").
mod protections;

use clock::{BLIND_POLL, Clock};

// Tokens. A connection's token is its slab key; fixed sources take tokens
// from the top of the range, which no slab reaches. `source` below is the
// inverse of this table, in one place.
//
//   usize::MAX                 signal pipe
//   usize::MAX - 1             waker
//   usize::MAX - 2             handover listener (--handover-socket)
//   usize::MAX - 3             handover connection
//   usize::MAX - 4             health listener (--health)
//   usize::MAX - 16 - k        health connection k (k < 16)
//   usize::MAX - 64 - j        UDP socket j (j < MAX_UDP_SOCKETS)
//   usize::MAX - 320 - i       TCP listener i (i < MAX_LISTENERS)
//   below FIRST_FIXED          client connections

/// The signal pipe's token.
const SIGNAL_TOKEN: Token = Token(usize::MAX);
/// The waker's token ([`ShutdownHandle::drain`]).
const WAKER_TOKEN: Token = Token(usize::MAX - 1);
/// The handover listener's token.
const HANDOVER_LISTENER_TOKEN: Token = Token(usize::MAX - 2);
/// The handover connection's token (one exchange at a time).
const HANDOVER_CONNECTION_TOKEN: Token = Token(usize::MAX - 3);
/// The health listener's token.
const HEALTH_LISTENER_TOKEN: Token = Token(usize::MAX - 4);
/// The first health connection's token; connection `k` counts down from it.
const HEALTH_BASE: usize = usize::MAX - 16;
/// Health connections at once (docs/protocol.md "Lame duck and health").
const HEALTH_SLOTS: usize = 16;
/// The first UDP socket's token; socket `j` counts down from it.
const UDP_BASE: usize = usize::MAX - 64;
/// The first TCP listener's token; listener `i` counts down from it.
const LISTENER_BASE: usize = usize::MAX - 320;
/// Tokens at or above this one belong to fixed sources; slab keys (client
/// connections) stay below it.
const FIRST_FIXED: usize = usize::MAX - 1023;

// The ranges of the table do not overlap (checked when compiling).
const _: () = assert!(HEALTH_LISTENER_TOKEN.0 > HEALTH_BASE);
const _: () = assert!(HEALTH_BASE - HEALTH_SLOTS >= UDP_BASE);
const _: () = assert!(UDP_BASE - crate::config::MAX_UDP_SOCKETS >= LISTENER_BASE);
const _: () = assert!(LISTENER_BASE - crate::config::MAX_LISTENERS >= FIRST_FIXED);

/// Listener `index`'s token.
fn listener_token(index: usize) -> Token {
    Token(LISTENER_BASE - index)
}

/// Health connection `k`'s token.
fn health_token(k: usize) -> Token {
    Token(HEALTH_BASE - k)
}

/// UDP socket `j`'s token.
fn udp_token(j: usize) -> Token {
    Token(UDP_BASE - j)
}

/// What a token names: the inverse of the table above.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// The signal pipe.
    Signal,
    /// The waker ([`ShutdownHandle::drain`]).
    Waker,
    /// The handover listener.
    HandoverListener,
    /// The handover connection.
    HandoverConnection,
    /// The health listener.
    HealthListener,
    /// Health connection `k`.
    Health(usize),
    /// UDP socket `j`.
    Udp(usize),
    /// The TCP listener at this index.
    Listener(usize),
    /// The client connection with this slab key.
    Connection(usize),
    /// A token no source was given; ignored like any spurious event.
    Unknown,
}

/// Decodes a token (the inverse of the token table).
#[inline(always)]
fn source(token: Token) -> Source {
    let Token(t) = token;
    if t < FIRST_FIXED {
        return Source::Connection(t);
    }
    match t {
        _ if token == SIGNAL_TOKEN => Source::Signal,
        _ if token == WAKER_TOKEN => Source::Waker,
        _ if token == HANDOVER_LISTENER_TOKEN => Source::HandoverListener,
        _ if token == HANDOVER_CONNECTION_TOKEN => Source::HandoverConnection,
        _ if token == HEALTH_LISTENER_TOKEN => Source::HealthListener,
        _ if t <= HEALTH_BASE && t > HEALTH_BASE - HEALTH_SLOTS => Source::Health(HEALTH_BASE - t),
        _ if t <= UDP_BASE && t > UDP_BASE - crate::config::MAX_UDP_SOCKETS => {
            Source::Udp(UDP_BASE - t)
        }
        _ if t <= LISTENER_BASE && t > LISTENER_BASE - crate::config::MAX_LISTENERS => {
            Source::Listener(LISTENER_BASE - t)
        }
        _ => Source::Unknown,
    }
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

/// A connection and the server's bookkeeping about it, which the connection
/// itself never reads.
#[derive(Debug)]
struct Slot {
    /// The connection: its socket, pending bytes and phase.
    conn: Connection,
    /// The interest its socket is registered with; changed only by
    /// reregistering, so a step asking for the same interest costs nothing.
    registered: Interest,
    /// Removed after this batch; later events for it in the batch are ignored.
    closing: bool,
    /// Its key is in the server's `waiters` (it waits for memory), so it is
    /// listed once.
    awaiting_budget: bool,
    /// The idle sweep's epoch at its last event (docs/protocol.md
    /// "Protections"): a two-byte store per event, no clock read; it fits
    /// in the slot's padding.
    stamp: Stamp,
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
    config: Config,
    /// The listeners and admission; closed (dead) once the drain begins.
    acceptor: Acceptor,
    /// Addresses bound at start, kept after the listeners close.
    addrs: Vec<SocketAddr>,
    /// Connections; the slab key is the connection's token.
    slots: Slab<Slot>,
    /// What every connection step shares: the one read buffer, the notice,
    /// the limits, the memory budget and the echoed-bytes counter.
    ctx: Ctx,
    /// Running -> (LameDuck) -> Draining -> Stopped.
    life: Lifecycle,
    /// Keys of connections closed during this batch, removed after it so a
    /// key is never reused while the batch may still name it.
    closing: Vec<usize>,
    /// Connections whose step asked for [`Resume::NextTurn`]: reading stopped
    /// at the per-event cap with input left, and no new edge will report
    /// that input, so they are served again next turn. UDP sockets stopped
    /// at their cap are listed here too, by their token's value (at or
    /// above `FIRST_FIXED`, so never a slab key), each at most once.
    next_turn: Vec<usize>,
    /// Connections whose step asked for [`Resume::WhenBudget`]: reading
    /// stopped because the memory budget was spent (or an allocation
    /// failed), oldest first; served again when memory is freed, as many as
    /// the budget then allows. A stale key is skipped.
    waiters: VecDeque<usize>,
    /// Allocation failures already warned about, and when the last warning
    /// was logged (at most one a second).
    memory_warned: (u64, Option<Instant>),
    /// Counters.
    stats: Stats,
    /// The programmatic drain trigger, sharing the waker.
    handle: ShutdownHandle,
    /// The signal pipe, once the embedder turned signals on.
    signals: Option<SignalWatcher>,
    /// systemd notifications; silent unless the embedder turned them on.
    notifier: Notifier,
    /// When the server started, for uptime.
    started: Instant,
    /// The take-over offer (`--handover-socket`): the Unix listener and its
    /// one exchange. `None` when none is offered, and from the drain on.
    handover: Option<crate::handover::HandoverListener>,
    /// `handover`'s `next_wakeup()`, refreshed after every step it takes:
    /// read from a field, the steady path pays 3 instructions per turn for
    /// it instead of 13 (callgrind).
    handover_deadline: Option<Instant>,
    /// The health listener and its connections (`--health`); open until
    /// the server is dropped at exit, through the lame duck and the drain
    /// (a take-over takes the listener earlier, server/handover.rs).
    health: Option<Health>,
    /// The health listener's [`Health::next_wakeup`] as of its last change,
    /// set after every call that changes `health`. `deadlines()` is read
    /// every turn of the loop: this field costs the steady path 3
    /// instructions per round trip, asking `health` there cost 9 (callgrind).
    health_wakeup: Option<Instant>,
    /// The `--udp` sockets, their shared reply budget and counters; the
    /// sockets close at drain start, the counters stay.
    udp: UdpSockets,
    /// The clock for this turn's UDP events, read at the first one: one
    /// read per wake-up that has any, none on a TCP-only turn. Cleared
    /// before every poll.
    udp_now: Option<Instant>,
    /// `--idle-timeout`: the sweep's epoch (what slots are stamped with)
    /// and schedule, and the lingers of idle-closed connections (each
    /// closed after at most a second); a dead source without a timeout, and
    /// once the drain began and the last linger ended.
    idle: IdleClock,
}

impl Server {
    /// Creates the `Poll`, binds every `config.listen` address, then the
    /// `config.health` address, then every `config.udp` address, and
    /// registers them. Nothing is accepted or echoed until [`Server::run`].
    /// The library reads no environment variable, raises no limit and
    /// installs no handler here.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for an invalid config, [`Error::Listen`] when an
    /// address cannot be bound ([`Error::ListenFor`] for the health or a
    /// UDP one), [`Error::Setup`] when the `Poll` or waker cannot be created.
    pub fn bind(config: Config) -> Result<Server, Error> {
        config.validate()?;
        let acceptor = Acceptor::bind(&config)?;
        Server::bind_the_rest(config, acceptor)
    }

    /// Like [`Server::bind`], but serves listening sockets the caller
    /// already has (a service manager's, or another instance's in a
    /// take-over) instead of binding `config.listen`, which becomes their
    /// addresses. The sockets are the server's from here on: it closes them
    /// when the drain begins. The `config.health` and `config.udp`
    /// addresses are bound here, as [`Server::bind`] binds them; to serve
    /// sockets of those kinds too (a take-over's), use
    /// [`Server::from_sockets`].
    ///
    /// # Errors
    ///
    /// [`Error::Inherit`] when there is no socket or one has no address,
    /// [`Error::Config`] for an invalid config, [`Error::ListenFor`] when
    /// the health or a UDP address cannot be bound, [`Error::Setup`] when
    /// the `Poll` or waker cannot be created.
    pub fn from_listeners(
        mut config: Config,
        sockets: Vec<std::net::TcpListener>,
    ) -> Result<Server, Error> {
        let acceptor = Acceptor::adopt(sockets, &config)?;
        config.listen = acceptor.addrs();
        config.validate()?;
        Server::bind_the_rest(config, acceptor)
    }

    /// Binds the health listener, then the UDP sockets, after the TCP
    /// listeners (docs/protocol.md "UDP echo (RFC 862)"), and builds the server.
    fn bind_the_rest(config: Config, acceptor: Acceptor) -> Result<Server, Error> {
        let health = bind_health(&config)?;
        let udp = UdpSockets::bind(&config, Instant::now())?;
        Server::new(config, acceptor, health, udp)
    }

    /// Creates the `Poll` and registers every socket given: the one place
    /// a server is assembled, whether its sockets were bound or adopted.
    fn new(
        config: Config,
        mut acceptor: Acceptor,
        mut health: Option<Health>,
        mut udp: UdpSockets,
    ) -> Result<Server, Error> {
        let setup = |what| move |source| Error::Setup { what, source };
        let poll = Poll::new().map_err(setup("the event loop"))?;
        let waker = Waker::new(poll.registry(), WAKER_TOKEN).map_err(setup("the waker"))?;
        for (index, listener) in acceptor.listeners_mut() {
            poll.registry()
                .register(listener, listener_token(index), Interest::READABLE)
                .map_err(setup("the listener"))?;
        }
        let addrs = acceptor.addrs();
        if let Some(listener) = health.as_mut().and_then(Health::listener_mut) {
            poll.registry()
                .register(listener, HEALTH_LISTENER_TOKEN, Interest::READABLE)
                .map_err(setup("the health listener"))?;
        }
        for (j, socket) in udp.sockets_mut() {
            poll.registry()
                .register(socket, udp_token(j), Interest::READABLE)
                .map_err(setup("a UDP socket"))?;
        }
        Ok(Server {
            poll,
            acceptor,
            addrs,
            slots: Slab::new(),
            ctx: Ctx::new(
                READ_BUFFER,
                &config.shutdown_message,
                config.max_pending,
                config.max_pending_total,
                READS_PER_EVENT,
            ),
            life: Lifecycle::new(config.drain_delay, config.drain_timeout),
            closing: Vec::new(),
            next_turn: Vec::new(),
            waiters: VecDeque::new(),
            memory_warned: (0, None),
            stats: Stats::default(),
            handle: ShutdownHandle::new(waker),
            signals: None,
            notifier: Notifier::default(),
            started: Instant::now(),
            handover: None,
            handover_deadline: None,
            health,
            health_wakeup: None,
            udp,
            udp_now: None,
            idle: IdleClock::new(config.idle_timeout, Instant::now()),
            config,
        })
    }

    /// The addresses the listeners are bound to, with real ports.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The health listener's address, with its real port, when `--health`
    /// asked for one; it logs its own `listening on ... proto=http` line.
    pub fn health_addr(&self) -> Option<SocketAddr> {
        self.health.as_ref().map(Health::local_addr)
    }

    /// The addresses the `--udp` sockets are bound to, with real ports
    /// (empty without `--udp`); still answered after they close.
    pub fn udp_addrs(&self) -> &[SocketAddr] {
        self.udp.addrs()
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
        watcher.set_exit_at(self.life.handler_exit_at());
        self.signals = Some(watcher);
        Ok(())
    }

    /// Turns systemd notifications on: `READY=1` once running, `STATUS=` as
    /// the state changes, `STOPPING=1` at the first drain signal. Returns
    /// whether there is a service manager to tell (`NOTIFY_SOCKET` is set).
    ///
    /// # Notes
    ///
    /// Reads `NOTIFY_SOCKET` from the environment, now; nothing else in the
    /// library does. Notifications never block the loop: a datagram the
    /// socket will not take at once is dropped.
    pub fn notify_systemd(&mut self) -> bool {
        self.notifier = Notifier::from_env();
        self.notifier.is_enabled()
    }

    /// Runs the loop on this thread until the drain ends.
    ///
    /// # Errors
    ///
    /// [`Error::Poll`] when `poll` fails other than by `Interrupted`.
    ///
    /// # Notes
    ///
    /// The loop takes a short read as "nothing more to read" and saves the
    /// read that would only return `WouldBlock`. That relies on Linux epoll's
    /// edge-triggered semantics (a new edge for every new segment), which
    /// mio's portable contract does not promise; Linux is the target.
    pub fn run(mut self) -> Result<Summary, Error> {
        let mut events = Events::with_capacity(EVENTS_PER_POLL);
        self.notifier.ready(self.slots.len());
        // Whether anything time-driven is pending; checked once per turn so
        // the steady path reads no clock at all without a timer. With one
        // (--idle-timeout keeps one) the clock is read at most once per
        // wake-up, and a busy loop skips it on most (see `Clock`).
        let mut timers = self.has_timers();
        let mut clock = Clock::default();
        if timers {
            self.read_clock(&mut clock);
        }
        while !self.life.is_stopped() {
            // The two common cases pass constants, so that mio's conversion
            // of the timeout to milliseconds folds away (17 instructions per
            // wake-up under callgrind).
            let polled = if !self.next_turn.is_empty() || (timers && events.is_empty()) {
                self.poll.poll(&mut events, self.poll_timeout(&clock))
            } else if timers {
                self.poll.poll(&mut events, Some(BLIND_POLL))
            } else {
                self.poll.poll(&mut events, None)
            };
            self.udp_now = None;
            if let Err(err) = polled {
                if err.kind() == std::io::ErrorKind::Interrupted {
                    // A signal (no events): the time spent waiting must not
                    // be waited again.
                    if timers {
                        self.read_clock(&mut clock);
                    }
                    continue;
                }
                error!("event loop failed: {err}");
                return Err(Error::Poll(err));
            }
            if self.next_turn.is_empty() {
                for event in events.iter() {
                    self.dispatch(event);
                }
            } else {
                // Taken before dispatch, which may queue connections for next turn.
                let again = std::mem::take(&mut self.next_turn);
                for event in events.iter() {
                    self.dispatch(event);
                }
                for key in again {
                    if key < FIRST_FIXED {
                        self.serve(key, Readiness::READABLE);
                    } else {
                        self.udp_next_turn(key);
                    }
                }
            }
            self.remove_closed();
            if self.ctx.budget.is_changed() {
                self.on_memory_freed();
            }
            timers = self.has_timers();
            if timers {
                self.after_turn(&mut clock, events.iter().count());
            }
        }
        Ok(self.finish())
    }

    /// Every time-driven source's next deadline. [`Server::next_deadline`],
    /// and through it the poll timeout and the call of [`Server::on_clock`],
    /// start from this one list, in every state, so they cannot disagree
    /// about which source is live (a dead source answers `None`): that
    /// disagreement is how a drain once woke the loop 900 times a second
    /// (issue 8).
    #[inline(always)]
    fn deadlines(&self) -> [Option<Instant>; 6] {
        [
            self.life.next_wakeup(),
            self.acceptor.next_wakeup(),
            self.notifier.next_wakeup(),
            self.handover_deadline,
            // An open health connection always has a deadline, so the clock
            // runs after every batch while one is open: `on_clock` is where
            // health connections closed in the batch are removed (after the
            // batch, so a key is never reused while the batch may name it).
            self.health_wakeup,
            self.idle.next_wakeup(),
        ]
    }

    /// True when anything time-driven is pending. While serving with none,
    /// the steady path reads no clock.
    #[inline(always)]
    fn has_timers(&self) -> bool {
        self.deadlines().iter().any(Option::is_some)
    }

    /// The nearest of [`Server::deadlines`]; `None` when nothing
    /// time-driven is pending.
    #[inline(always)]
    fn next_deadline(&self) -> Option<Instant> {
        self.deadlines()
            .into_iter()
            .fold(None, crate::episode::earliest)
    }

    #[inline(always)]
    fn dispatch(&mut self, event: &Event) {
        match source(event.token()) {
            Source::Connection(key) => {
                let ready = Readiness {
                    readable: event.is_readable() || event.is_read_closed() || event.is_error(),
                    eof_reported: event.is_read_closed(),
                };
                self.serve(key, ready);
            }
            Source::Signal => self.on_signals(),
            Source::Waker => {
                if self.handle.take_drain_request() {
                    self.trigger(DrainReason::Handle);
                }
            }
            Source::Listener(index) => {
                if self.life.is_accepting() {
                    self.accept_ready(index, Admission::Limited);
                }
            }
            Source::HandoverListener => self.on_handover_listener(),
            Source::HandoverConnection => self.on_handover_connection(),
            Source::HealthListener => self.health_accept(Instant::now()),
            Source::Health(k) => self.health_ready(k),
            Source::Udp(j) => self.udp_ready(j),
            // A token no source was given: a spurious event.
            Source::Unknown => {}
        }
    }

    /// Runs one connection's step and applies what it asks for.
    #[inline(always)]
    fn serve(&mut self, key: usize, ready: Readiness) {
        // A missing or closing entry is a spurious event (mio allows them) or
        // a stale queue entry: ignore it.
        let Some(slot) = self.slots.get_mut(key) else {
            return;
        };
        if slot.closing {
            return;
        }
        slot.stamp = self.idle.epoch();
        let step = slot.conn.on_ready(&mut self.ctx, ready);
        if matches!(step, Step::Keep { interest, resume: Resume::OnEvent } if interest == slot.registered)
        {
            // The steady path: nothing to reregister, nothing to queue.
            return;
        }
        self.apply(key, step);
    }

    /// Applies a connection's step: reregister when the interest changed,
    /// queue it for another turn or for freed memory, or schedule its
    /// removal after the batch.
    #[inline]
    fn apply(&mut self, key: usize, step: Step) {
        let Some(slot) = self.slots.get_mut(key) else {
            return;
        };
        match step {
            Step::Keep { interest, resume } => {
                if interest != slot.registered {
                    let registry = self.poll.registry();
                    if let Err(err) =
                        registry.reregister(slot.conn.stream_mut(), Token(key), interest)
                    {
                        debug!("connection closed: token={key} reregister failed: {err}");
                        slot.closing = true;
                        self.closing.push(key);
                        self.stats.count_close(Closed::Failed(err.kind()));
                        return;
                    }
                    slot.registered = interest;
                }
                match resume {
                    Resume::OnEvent => {}
                    Resume::NextTurn => self.next_turn.push(key),
                    Resume::WhenBudget if !slot.awaiting_budget => {
                        slot.awaiting_budget = true;
                        self.waiters.push_back(key);
                    }
                    Resume::WhenBudget => {}
                }
            }
            Step::Close(why) => {
                match why {
                    Closed::PeerDone => debug!("connection closed: token={key} peer done"),
                    Closed::Failed(kind) => debug!("connection closed: token={key} error={kind}"),
                }
                // An idle-closed one was counted when it was given up.
                if !slot.conn.is_idle_closed() {
                    self.stats.count_close(why);
                }
                slot.closing = true;
                self.closing.push(key);
            }
        }
    }

    /// UDP socket `j` is readable: echo what it holds (docs/protocol.md "UDP
    /// echo (RFC 862)"), listing it for next turn if it stopped at its cap.
    /// Out of line: the TCP steady path never comes here.
    #[inline(never)]
    fn udp_ready(&mut self, j: usize) {
        // One clock read per wake-up, for the reply budget's refill.
        let now = *self.udp_now.get_or_insert_with(Instant::now);
        if self.udp.on_readable(j, &mut self.ctx.buf, now) {
            self.next_turn.push(udp_token(j).0);
        }
    }

    /// A UDP socket listed in `next_turn` by its token's value: it stopped
    /// at its cap last turn and no new edge reports what it left queued.
    #[inline(never)]
    fn udp_next_turn(&mut self, key: usize) {
        let Source::Udp(j) = source(Token(key)) else {
            return;
        };
        let now = *self.udp_now.get_or_insert_with(Instant::now);
        if self.udp.on_next_turn(j, &mut self.ctx.buf, now) {
            self.next_turn.push(key);
        }
    }

    /// Closes the UDP sockets (the drain began, docs/protocol.md "UDP echo
    /// (RFC 862)"): deregistered, then dropped; a datagram sent to them now
    /// gets ICMP port unreachable, unless a take-over passed them on (then
    /// only this process's descriptors close). Their counters are kept.
    fn close_udp(&mut self) {
        for mut socket in self.udp.close() {
            let _ = self.poll.registry().deregister(&mut socket);
        }
    }

    /// Accepts from listener `index` while the acceptor gives connections.
    fn accept_ready(&mut self, index: usize, admission: Admission) {
        let mut first = true;
        while let Some((stream, peer)) =
            self.acceptor
                .accept(index, self.slots.len(), admission, first)
        {
            first = false;
            self.admit(stream, peer);
        }
        self.count_rejected();
    }

    /// Accepts again on every listener, after the limit cleared or a back-off ended.
    fn accept_all(&mut self) {
        for index in 0..self.acceptor.len() {
            self.accept_ready(index, Admission::Limited);
        }
    }

    /// Registers an accepted connection and keeps it.
    fn admit(&mut self, stream: mio::net::TcpStream, peer: SocketAddr) {
        let entry = self.slots.vacant_entry();
        let key = entry.key();
        let mut conn = Connection::new(stream);
        if let Err(err) =
            self.poll
                .registry()
                .register(conn.stream_mut(), Token(key), Interest::READABLE)
        {
            self.acceptor.registration_failed(peer, &err);
            return;
        }
        entry.insert(Slot {
            conn,
            registered: Interest::READABLE,
            closing: false,
            awaiting_budget: false,
            stamp: self.idle.epoch(),
        });
        self.acceptor.registration_succeeded(key);
        self.stats.accepted += 1;
        self.notifier.connections_changed();
        debug!("connection opened: peer={peer} token={key}");
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
                match self.slots.get_mut(key) {
                    // A stale key: that connection closed, or the key was reused.
                    Some(slot) if slot.awaiting_budget => slot.awaiting_budget = false,
                    _ => continue,
                }
                self.serve(key, Readiness::READABLE);
            }
            self.remove_closed();
        }
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
            self.slots.len()
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
        let draining = self.life.is_draining();
        for key in self.closing.drain(..) {
            if let Some(mut slot) = self.slots.try_remove(key) {
                slot.conn.release(&mut self.ctx);
                self.acceptor.release(key);
                if draining {
                    self.stats.left += 1;
                }
            }
        }
        self.notifier.connections_changed();
        if self.acceptor.connection_closed(self.slots.len()) {
            self.accept_all();
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
        let name = received.drain.unwrap_or("signal");
        for _ in 0..received.drain_count {
            self.trigger(DrainReason::Signal(name));
        }
    }

    /// A drain signal or [`ShutdownHandle::drain`]: the lifecycle says what
    /// it means now (docs/protocol.md "Draining" 6, "Lame duck and health").
    fn trigger(&mut self, reason: DrainReason) {
        let now = Instant::now();
        let signalled = self.life.signal(reason, now);
        self.update_handler_exit();
        match signalled {
            Signalled::LameDuck => {
                info!(
                    "lame duck started: reason={reason} delay={:?} connections={}; still serving, not ready",
                    self.config.drain_delay,
                    self.slots.len()
                );
                self.notifier.stopping();
                self.notifier.lame_duck(self.config.drain_delay);
            }
            Signalled::Draining => self.begin_drain(now),
            Signalled::Forced => {
                warn!("another signal while draining: closing every connection now");
                self.close_all(DrainEnd::Forced);
            }
            Signalled::Ignored => {}
        }
    }

    /// What the protections closed so far, `(idle, per address)`, for the
    /// systemd status (docs/protocol.md "Protections").
    fn protection_closes(&self) -> (u64, u64) {
        (self.stats.idle_closed, self.stats.rejected_per_ip)
    }

    /// Tells the signal handler how many drain signals make it exit.
    fn update_handler_exit(&self) {
        if let Some(watcher) = &self.signals {
            watcher.set_exit_at(self.life.handler_exit_at());
        }
    }

    /// docs/protocol.md "Draining" 1-3: log, take the backlog, close the
    /// listeners, then start every connection's echo-notice-FIN sequence. The
    /// lifecycle is already draining.
    fn begin_drain(&mut self, now: Instant) {
        let State::Draining { reason, .. } = self.life.state() else {
            return;
        };
        self.notifier.stopping();
        // No take-over once draining; a hand-over already let go of it.
        self.withdraw_take_over();
        // Every connection gets the notice now; the drain's deadline bounds
        // them instead (an idle close would end one without the notice).
        self.idle.stop();
        // "Draining" 2: connections already in the backlog are accepted
        // (regardless of --max-connections) and drained like the others.
        for index in 0..self.acceptor.len() {
            self.accept_ready(index, Admission::Backlog);
        }
        self.close_listeners();
        self.close_udp();
        info!(
            "drain started: reason={reason} connections={} deadline={:?}",
            self.slots.len(),
            self.config.drain_timeout
        );
        // The first draining status now, not a second later: a short drain
        // would otherwise only ever say STOPPING.
        let open = self.slots.len();
        self.notifier.on_clock(
            now,
            open,
            self.protection_closes(),
            Some(self.config.drain_timeout),
        );
        let keys: Vec<usize> = self.slots.iter().map(|(key, _)| key).collect();
        for key in keys {
            self.drain_connection(key);
        }
    }

    // The same shape as `serve`, kept apart on purpose: sharing one generic
    // step function cost the steady path 18 instructions per message
    // (callgrind), as the drain code got inlined into the loop.
    fn drain_connection(&mut self, key: usize) {
        let Some(slot) = self.slots.get_mut(key) else {
            return;
        };
        if slot.closing {
            return;
        }
        let step = slot.conn.begin_drain(&mut self.ctx);
        self.apply(key, step);
    }

    /// Lets every time-driven source of [`Server::deadlines`] act on the
    /// clock, whatever the state: each knows when it has nothing to do.
    fn on_clock(&mut self, now: Instant) {
        self.on_idle_clock(now);
        if self.acceptor.on_clock(now, self.slots.len()) {
            self.accept_all();
        }
        self.notifier
            .on_clock(now, self.slots.len(), self.protection_closes(), None);
        self.handover_on_clock(now);
        // No health connection open and no back-off: nothing to do there.
        if self.health_wakeup.is_some() {
            self.health_on_clock(now);
        }
        loop {
            match self.life.on_clock(now, self.slots.len()) {
                Due::Nothing => {}
                Due::Countdown(remaining) => {
                    info!(
                        "drain countdown: remaining={:.1}s connections={}",
                        remaining.as_secs_f64(),
                        self.slots.len()
                    );
                    self.notifier.on_clock(
                        now,
                        self.slots.len(),
                        self.protection_closes(),
                        Some(remaining),
                    );
                }
                Due::Stop(DrainEnd::Deadline) => self.close_all(DrainEnd::Deadline),
                Due::Stop(_) => {}
                Due::BeginDrain => {
                    self.update_handler_exit();
                    self.begin_drain(now);
                    // Asked again at once: a drain with nobody left (or a
                    // zero deadline) must not wait for the next tick.
                    continue;
                }
            }
            break;
        }
    }

    /// Closes every connection now (`why`: the deadline or a forced stop),
    /// reading off queued input first so each close sends FIN rather than
    /// RST where it can.
    fn close_all(&mut self, why: DrainEnd) {
        let mut idle_closed = 0;
        for (_, slot) in self.slots.iter_mut() {
            slot.conn.discard_unread(&mut self.ctx.buf);
            slot.conn.release(&mut self.ctx);
            // Counted as idle_closed already.
            idle_closed += u64::from(slot.conn.is_idle_closed() && !slot.closing);
        }
        self.idle.clear_lingers();
        let open = (self.slots.len() - self.closing.len()) as u64 - idle_closed;
        match why {
            DrainEnd::Forced => self.stats.closed_forced += open,
            _ => self.stats.closed_at_deadline += open,
        }
        // Those already closing left on their own.
        self.stats.left += self.closing.len() as u64;
        self.closing.clear();
        self.next_turn.clear();
        self.waiters.clear();
        self.slots.clear();
    }

    /// Closes the listeners (the drain began): deregistered, then dropped,
    /// which closes them; new connects are refused and the port is free at
    /// once. The acceptor's timers die with them.
    fn close_listeners(&mut self) {
        for mut listener in self.acceptor.close() {
            let _ = self.poll.registry().deregister(&mut listener.socket);
        }
    }

    fn log_stats(&self) {
        let state = match self.life.state() {
            State::Running => "running",
            State::LameDuck { .. } => "lame_duck",
            State::Draining { .. } => "draining",
            State::Stopped { .. } => "stopped",
        };
        let s = &self.stats;
        info!(
            "stats: state={state} connections={} accepted={} bytes_echoed={} pending={} uptime={:.1}s closed_by_peer={} closed_on_error={} idle_closed={} rejected_per_ip={} idle_timeout={}s max_connections_per_ip={} log_lines_dropped={} notifications_dropped={}{}",
            self.slots.len(),
            s.accepted,
            self.ctx.bytes_echoed,
            self.ctx.budget.charged(),
            self.started.elapsed().as_secs_f64(),
            s.closed_by_peer,
            s.closed_on_error,
            s.idle_closed,
            s.rejected_per_ip,
            self.config.idle_timeout.as_secs_f64(),
            self.config.max_connections_per_ip,
            crate::log_lines_dropped(),
            self.notifier.dropped(),
            LogFields(self.udp.configured_stats())
        );
    }

    // ---- The health listener (docs/protocol.md "Lame duck and health").
    // Its connections live in `Health`, never in `slots`: they are not
    // counted against --max-connections, do not delay the drain's end and
    // are not in `echod_connections`.

    /// Accepts health connections while the listener has them and a slot is free.
    #[cold]
    #[inline(never)]
    fn health_accept(&mut self, now: Instant) {
        let Some(health) = self.health.as_mut() else {
            return;
        };
        let registry = self.poll.registry();
        health.accept_ready(now, |stream, k| {
            registry.register(stream, health_token(k), Interest::READABLE)
        });
        self.health_wakeup = health.next_wakeup();
    }

    /// Closes health connections past their deadline, removes those closed
    /// in the batch, and accepts again when a slot freed or a back-off ended.
    /// Out of line: inlined into `on_clock`, and so into the loop, it cost
    /// the steady path 8 instructions per round trip (callgrind), though it
    /// never runs there.
    #[cold]
    #[inline(never)]
    fn health_on_clock(&mut self, now: Instant) {
        let Some(health) = self.health.as_mut() else {
            return;
        };
        let resume = health.on_clock(now);
        self.health_wakeup = health.next_wakeup();
        if resume {
            self.health_accept(now);
        }
    }

    /// Moves health connection `k`'s exchange on, answering with the
    /// counters as they are now.
    #[cold]
    #[inline(never)]
    fn health_ready(&mut self, k: usize) {
        let snapshot = self.metrics_snapshot();
        let Some(health) = self.health.as_mut() else {
            return;
        };
        let registry = self.poll.registry();
        health.conn_ready(k, &snapshot, |stream, k, interest| {
            registry.reregister(stream, health_token(k), interest)
        });
        self.health_wakeup = health.next_wakeup();
    }

    /// The server's counters for `/readyz` and `/metrics`.
    fn metrics_snapshot(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            state: self.life.serve_state(),
            // Those closed in this batch are gone for the client already.
            connections: self.slots.len().saturating_sub(self.closing.len()) as u64,
            accepted: self.stats.accepted,
            closed: self.stats.closed_by_reason(),
            bytes_echoed: self.ctx.bytes_echoed,
            pending_bytes: self.ctx.budget.charged() as u64,
            log_lines_dropped: crate::log_lines_dropped() as u64,
            // `None` without --udp: a server that serves no UDP shows no
            // UDP metric.
            udp: self
                .udp
                .configured_stats()
                .map(crate::udp::UdpStats::to_metrics),
        }
    }

    fn finish(mut self) -> Summary {
        let (reason, end) = match self.life.state() {
            State::Stopped { reason, end } => (reason, end),
            // The loop only returns once stopped; a summary is still owed.
            _ => (DrainReason::Handle, DrainEnd::Emptied),
        };
        self.stats.bytes_echoed = self.ctx.bytes_echoed;
        self.stats.log_lines_dropped = crate::log_lines_dropped() as u64;
        self.stats.udp = self.udp.stats();
        let summary = Summary {
            reason,
            end,
            stats: self.stats,
        };
        let label = if end == DrainEnd::Forced {
            "drain forced"
        } else {
            "drain finished"
        };
        let s = &summary.stats;
        info!(
            "{label}: reason={reason} end={end} left={} closed_at_deadline={} closed_forced={} accepted={} bytes_echoed={} log_lines_dropped={} idle_closed={} rejected_per_ip={}{}",
            s.left,
            s.closed_at_deadline,
            s.closed_forced,
            s.accepted,
            s.bytes_echoed,
            s.log_lines_dropped,
            s.idle_closed,
            s.rejected_per_ip,
            LogFields(self.udp.configured_stats())
        );
        summary
    }
}

/// Binds the health listener when `config.health` asks for one.
fn bind_health(config: &Config) -> Result<Option<Health>, Error> {
    let Some(addr) = config.health else {
        return Ok(None);
    };
    let listen_error = |source| Error::ListenFor {
        purpose: "health",
        addr,
        source,
    };
    Health::bind(addr).map(Some).map_err(listen_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_token_decodes_to_the_source_it_was_made_for() {
        assert_eq!(source(SIGNAL_TOKEN), Source::Signal);
        assert_eq!(source(WAKER_TOKEN), Source::Waker);
        assert_eq!(source(HANDOVER_LISTENER_TOKEN), Source::HandoverListener);
        assert_eq!(
            source(HANDOVER_CONNECTION_TOKEN),
            Source::HandoverConnection
        );
        assert_eq!(source(HEALTH_LISTENER_TOKEN), Source::HealthListener);
        for k in 0..HEALTH_SLOTS {
            assert_eq!(source(health_token(k)), Source::Health(k));
        }
        for j in 0..crate::config::MAX_UDP_SOCKETS {
            assert_eq!(source(udp_token(j)), Source::Udp(j));
        }
        for i in 0..crate::config::MAX_LISTENERS {
            assert_eq!(source(listener_token(i)), Source::Listener(i));
        }
        assert_eq!(source(Token(0)), Source::Connection(0));
        assert_eq!(
            source(Token(FIRST_FIXED - 1)),
            Source::Connection(FIRST_FIXED - 1)
        );
        assert_eq!(source(Token(FIRST_FIXED)), Source::Unknown);
        assert_eq!(source(Token(usize::MAX - 5)), Source::Unknown);
    }

    #[test]
    fn the_health_listener_is_bound_with_the_server_or_named_when_it_cannot_be() {
        let mut config = Config {
            listen: vec!["127.0.0.1:0".parse().unwrap()],
            ..Config::default()
        };
        assert_eq!(Server::bind(config.clone()).unwrap().health_addr(), None);
        config.health = Some("127.0.0.1:0".parse().unwrap());
        let server = Server::bind(config.clone()).unwrap();
        let addr = server.health_addr().expect("a health address");
        assert_ne!(addr.port(), 0);
        assert_eq!(server.deadlines(), [None; 6], "nothing to wake for yet");
        config.health = Some(addr);
        let err = Server::bind(config).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("cannot listen on {addr} (health): address in use")
        );
    }
}
