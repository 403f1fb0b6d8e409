//! The health listener: `GET /livez`, `/readyz` and `/metrics` over HTTP/1.x
//! on the server's one `Poll` (docs/protocol.md "Lame duck and health").
//!
//! It owns the health listener's socket, its connections (at most
//! [`MAX_CONNECTIONS`], in a small slab of their own), each connection's
//! request buffer, response and deadline, the parsing of requests (by
//! `httparse`) and the answers: `health/conn.rs` is one connection's
//! exchange, `health/metrics.rs` renders `/metrics`. It does not own the
//! `Poll`: registration goes through closures the server passes in, and a
//! connection's step returns what it waits for next ([`HealthStep`]), like
//! `connection.rs`. It does not know the server's
//! internals: the server hands it a [`MetricsSnapshot`] of its counters.
//! Health connections are not client connections: keeping them out of the
//! client counts, the connection limit and the drain's end is the server's
//! side of the contract. Time: [`Health::next_wakeup`] and
//! [`Health::on_clock`] answer for the request deadlines and the accept
//! back-off, and say `None` when there is nothing to wait for.
//!
//! What a peer gets: `/livez` 200 while the loop runs; `/readyz` 200 while
//! serving, 503 from the first drain signal on (lame duck included);
//! `/metrics` the text format 0.0.4; an unknown path 404; a method other than
//! `GET` or `HEAD` on a known path 405 with `Allow: GET, HEAD`; `HEAD` the
//! headers alone; a request `httparse` rejects, or an HTTP/1.1 request
//! without exactly one `Host`, 400. One response per connection
//! (`Connection: close`), then the write side is shut and input is read and
//! dropped until the peer closes. A request over [`REQUEST_LIMIT`] bytes, or
//! a connection still open [`REQUEST_TIMEOUT`] after it was accepted, is
//! closed without an answer.

mod conn;
mod metrics;

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use log::debug;
use mio::Interest;
use mio::net::{TcpListener, TcpStream};
use slab::Slab;

pub use conn::{HealthConn, HealthStep};
pub use metrics::{CloseReason, MetricsSnapshot};
// Filled from the UDP sockets' counters (`UdpStats::to_metrics`).
pub use metrics::UdpCounters;

/// Health connections open at once; the next one waits in the listener's
/// backlog until one closes.
pub const MAX_CONNECTIONS: usize = 16;
/// The longest request head accepted, in bytes; a longer one is closed.
pub const REQUEST_LIMIT: usize = 8 * 1024;
/// How long a health connection may stay open after it was accepted: its
/// request, its answer and the wait for the peer's close all fit in it, so a
/// slot is never held longer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The health listener's backlog: room for probes waiting behind the 16.
const BACKLOG: i32 = 128;
/// How long accepting pauses after it failed (descriptors ran out).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The health listener and its connections.
#[derive(Debug)]
pub struct Health {
    /// The listening socket; the server registers it (readable) and closes
    /// it at exit by dropping this. `None` once handed over to a new
    /// instance ([`Health::close_listener`]): the open connections are
    /// still answered, nothing new is accepted.
    listener: Option<TcpListener>,
    /// Its local address, with the real port when port 0 was asked for.
    addr: SocketAddr,
    /// Open health connections; keys stay below [`MAX_CONNECTIONS`], since
    /// no more are ever open at once.
    conns: Slab<HealthConn>,
    /// Keys closed during this batch, removed by [`Health::remove_closed`].
    closing: Vec<usize>,
    /// Accepting stopped at [`MAX_CONNECTIONS`]; the next close resumes it.
    at_limit: bool,
    /// Accepting pauses until then after an accept failed.
    backoff_until: Option<Instant>,
}

impl Health {
    /// Binds the health listener on `addr` (with `SO_REUSEADDR`, like the
    /// echo listeners, so a restarted echod can bind it at once).
    ///
    /// # Errors
    ///
    /// The OS error when the socket cannot be created, bound or put to listen.
    pub fn bind(addr: SocketAddr) -> io::Result<Health> {
        use socket2::{Domain, Protocol, Socket, Type};
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(BACKLOG)?;
        Health::from_listener(TcpListener::from_std(socket.into()))
    }

    /// Serves an already bound listener (one handed over by a previous
    /// instance, for example).
    ///
    /// # Errors
    ///
    /// The OS error when its local address cannot be read.
    pub fn from_listener(listener: TcpListener) -> io::Result<Health> {
        let addr = listener.local_addr()?;
        Ok(Health {
            listener: Some(listener),
            addr,
            conns: Slab::with_capacity(MAX_CONNECTIONS),
            closing: Vec::with_capacity(MAX_CONNECTIONS),
            at_limit: false,
            backoff_until: None,
        })
    }

    /// The listener's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The listening socket, for lending to a take-over; `None` once closed.
    pub fn listener(&self) -> Option<&TcpListener> {
        self.listener.as_ref()
    }

    /// The listening socket, for registration; `None` once closed.
    pub fn listener_mut(&mut self) -> Option<&mut TcpListener> {
        self.listener.as_mut()
    }

    /// Gives up the listening socket (the take-over passed it on,
    /// docs/protocol.md "Operations"), for the server to deregister and
    /// drop, which closes only this process's descriptor. The open
    /// connections stay and are answered until they finish; nothing new is
    /// accepted here.
    pub fn close_listener(&mut self) -> Option<TcpListener> {
        self.backoff_until = None;
        self.at_limit = false;
        self.listener.take()
    }

    /// Health connections open now (those closing in this batch included).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    /// True when no health connection is open.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// Accepts until the backlog is empty or [`MAX_CONNECTIONS`] are open.
    /// `register(stream, key)` registers each new connection readable under
    /// the token the server gives `key`; one it cannot register is dropped.
    ///
    /// At the limit the rest wait in the backlog; the listener's edge will
    /// not come again for them, so the server calls this again when
    /// [`Health::remove_closed`] or [`Health::on_clock`] says a slot freed.
    /// After an accept error other than a client giving up (descriptors ran
    /// out), accepting pauses for [`ACCEPT_BACKOFF`]; the echo listeners'
    /// acceptor warns about that condition, so this only logs at debug.
    pub fn accept_ready(
        &mut self,
        now: Instant,
        mut register: impl FnMut(&mut TcpStream, usize) -> io::Result<()>,
    ) {
        if self.backoff_until.is_some() {
            return;
        }
        let Some(listener) = self.listener.as_ref() else {
            return; // handed over: the new instance accepts
        };
        loop {
            if self.conns.len() >= MAX_CONNECTIONS {
                self.at_limit = true;
                return;
            }
            match listener.accept() {
                Ok((mut stream, peer)) => {
                    let entry = self.conns.vacant_entry();
                    if let Err(err) = register(&mut stream, entry.key()) {
                        debug!("cannot register health connection: peer={peer} error={err}");
                        continue;
                    }
                    let deadline = now.checked_add(REQUEST_TIMEOUT).unwrap_or(now);
                    entry.insert(HealthConn::new(stream, peer, deadline));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // The client gave up between its SYN and the accept.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
                    ) => {}
                Err(err) => {
                    debug!("health accept failed: listener={} error={err}", self.addr);
                    self.backoff_until = now.checked_add(ACCEPT_BACKOFF);
                    return;
                }
            }
        }
    }

    /// Runs connection `key`'s step with `snapshot` and applies it:
    /// `reregister(stream, key, interest)` when the interest changed, or
    /// removal after the batch. A missing or closing key is a spurious or
    /// stale event and is ignored.
    pub fn conn_ready(
        &mut self,
        key: usize,
        snapshot: &MetricsSnapshot,
        reregister: impl FnOnce(&mut TcpStream, usize, Interest) -> io::Result<()>,
    ) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.closing {
            return;
        }
        match conn.on_ready(snapshot) {
            HealthStep::Keep(interest) if interest == conn.registered => {}
            HealthStep::Keep(interest) => match reregister(&mut conn.stream, key, interest) {
                Ok(()) => conn.registered = interest,
                Err(err) => {
                    debug!(
                        "health connection closed: peer={} reregister failed: {err}",
                        conn.peer
                    );
                    conn.closing = true;
                    self.closing.push(key);
                }
            },
            HealthStep::Close => {
                conn.closing = true;
                self.closing.push(key);
            }
        }
    }

    /// Removes the connections closed during the batch (dropping a socket
    /// closes it, which also takes it out of the `Poll`). Returns true when
    /// a slot freed while accepting was stopped at the limit: the server
    /// then calls [`Health::accept_ready`].
    pub fn remove_closed(&mut self) -> bool {
        for key in self.closing.drain(..) {
            self.conns.try_remove(key);
        }
        self.take_resume()
    }

    /// The nearest instant this source needs the loop to wake at: the
    /// earliest connection deadline or the end of an accept back-off;
    /// `None` when there is neither.
    pub fn next_wakeup(&self) -> Option<Instant> {
        self.conns
            .iter()
            .map(|(_, conn)| conn.deadline)
            .chain(self.backoff_until)
            .min()
    }

    /// Closes the connections whose deadline has passed and ends an accept
    /// back-off whose time has come. Call it after the batch (it removes
    /// connections at once). Returns true when the server should call
    /// [`Health::accept_ready`].
    pub fn on_clock(&mut self, now: Instant) -> bool {
        let mut resume = false;
        if self.backoff_until.is_some_and(|until| now >= until) {
            self.backoff_until = None;
            resume = true;
        }
        for (key, conn) in self.conns.iter_mut() {
            if now >= conn.deadline && !conn.closing {
                // docs/protocol.md "Lame duck and health": not complete 5 s
                // after it was accepted: closed.
                debug!(
                    "health connection closed: peer={} deadline passed",
                    conn.peer
                );
                conn.discard_unread();
                conn.closing = true;
                self.closing.push(key);
            }
        }
        self.remove_closed() || resume
    }

    fn take_resume(&mut self) -> bool {
        if self.at_limit && self.conns.len() < MAX_CONNECTIONS {
            self.at_limit = false;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::thread::JoinHandle;

    use mio::{Events, Poll, Token};

    use crate::drain::ServeState;

    /// The listener's token in the test loop; connection `key` is `Token(key)`.
    const LISTENER: Token = Token(usize::MAX);

    /// A small loop shaped like the server's: one `Poll`, the health
    /// listener and its connections, removal after the batch, then the clock.
    struct Rig {
        poll: Poll,
        events: Events,
        health: Health,
        snapshot: MetricsSnapshot,
    }

    impl Rig {
        fn new() -> Rig {
            let poll = Poll::new().expect("poll");
            let mut health = Health::bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
            poll.registry()
                .register(
                    health.listener_mut().expect("open"),
                    LISTENER,
                    Interest::READABLE,
                )
                .expect("register the listener");
            Rig {
                poll,
                events: Events::with_capacity(64),
                health,
                snapshot: MetricsSnapshot::default(),
            }
        }

        fn accept(&mut self, now: Instant) {
            let registry = self.poll.registry();
            self.health.accept_ready(now, |stream, key| {
                registry.register(stream, Token(key), Interest::READABLE)
            });
        }

        /// One turn: poll (at most 50 ms), dispatch, remove, clock.
        fn turn(&mut self) {
            let timeout = Some(Duration::from_millis(50));
            if let Err(err) = self.poll.poll(&mut self.events, timeout) {
                assert_eq!(err.kind(), io::ErrorKind::Interrupted, "poll failed");
                return;
            }
            let tokens: Vec<Token> = self.events.iter().map(|e| e.token()).collect();
            for token in tokens {
                if token == LISTENER {
                    self.accept(Instant::now());
                    continue;
                }
                let registry = self.poll.registry();
                self.health
                    .conn_ready(token.0, &self.snapshot, |stream, key, interest| {
                        registry.reregister(stream, Token(key), interest)
                    });
            }
            if self.health.remove_closed() {
                self.accept(Instant::now());
            }
            if self.health.on_clock(Instant::now()) {
                self.accept(Instant::now());
            }
        }

        /// Turns until `done` holds, for at most 10 s.
        #[track_caller]
        fn turn_until(&mut self, what: &str, mut done: impl FnMut(&mut Rig) -> bool) {
            let limit = Instant::now() + Duration::from_secs(10);
            while !done(self) {
                assert!(Instant::now() < limit, "timed out waiting for {what}");
                self.turn();
            }
        }
    }

    /// A client on its own thread: connects, sends `request`, reads to the end.
    fn client(addr: SocketAddr, request: &'static [u8]) -> JoinHandle<io::Result<Vec<u8>>> {
        let stream = std::net::TcpStream::connect(addr);
        std::thread::spawn(move || {
            let mut stream = stream?;
            // A safety net against a hang, not a way to synchronise.
            stream.set_read_timeout(Some(Duration::from_secs(20)))?;
            stream.write_all(request)?;
            let mut answer = Vec::new();
            stream.read_to_end(&mut answer)?;
            Ok(answer)
        })
    }

    #[track_caller]
    fn answer(handle: JoinHandle<io::Result<Vec<u8>>>) -> String {
        let bytes = handle.join().expect("client thread").expect("client I/O");
        String::from_utf8(bytes).expect("UTF-8 answer")
    }

    #[test]
    fn a_probe_over_loopback_gets_its_answer_then_end_of_stream() {
        let mut rig = Rig::new();
        rig.snapshot.state = ServeState::LameDuck;
        let probe = client(
            rig.health.local_addr(),
            b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n",
        );
        rig.turn_until("the probe's answer", |_| probe.is_finished());
        let text = answer(probe);
        assert!(
            text.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{text}"
        );
        assert!(text.ends_with("\r\n\r\nnot ready: lame duck\n"), "{text}");
        rig.turn_until("the connection's removal", |rig| rig.health.is_empty());
        assert_eq!(
            rig.health.next_wakeup(),
            None,
            "no connection, nothing to wake for"
        );
    }

    #[test]
    fn a_scrape_over_loopback_gets_the_whole_metrics_body() {
        let mut rig = Rig::new();
        rig.snapshot = metrics::tests::sample_snapshot();
        let scrape = client(
            rig.health.local_addr(),
            b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: text/plain\r\n\r\n",
        );
        rig.turn_until("the scrape's answer", |_| scrape.is_finished());
        let text = answer(scrape);
        let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
        assert!(
            head.contains("\r\nContent-Type: text/plain; version=0.0.4\r\n"),
            "{head}"
        );
        assert!(
            head.contains(&format!("\r\nContent-Length: {}\r\n", body.len())),
            "{head}"
        );
        metrics::tests::check_text_format(body).unwrap_or_else(|why| panic!("{why}\n{body}"));
    }

    #[test]
    fn the_seventeenth_connection_waits_in_the_backlog_until_one_closes() {
        let mut rig = Rig::new();
        let addr = rig.health.local_addr();
        let mut held: Vec<std::net::TcpStream> = (0..MAX_CONNECTIONS)
            .map(|_| std::net::TcpStream::connect(addr).expect("connect"))
            .collect();
        // Connected last, so last in the backlog: the one left waiting.
        let waiting = client(addr, b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n");
        rig.turn_until("16 accepted", |rig| rig.health.len() == MAX_CONNECTIONS);
        // Nothing reports "not accepted": a short window in which the 17th
        // must stay unanswered while all 16 slots are held.
        let window = Instant::now() + Duration::from_millis(300);
        while Instant::now() < window {
            rig.turn();
        }
        assert_eq!(rig.health.len(), MAX_CONNECTIONS);
        assert!(
            !waiting.is_finished(),
            "the 17th was answered while 16 were open"
        );
        // One holder leaves: its slot goes to the 17th, which is answered.
        drop(held.remove(0));
        rig.turn_until("the 17th's answer", |_| waiting.is_finished());
        let text = answer(waiting);
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.ends_with("ok\n"), "{text}");
        drop(held);
        rig.turn_until("all closed", |rig| rig.health.is_empty());
    }

    #[test]
    fn a_request_not_complete_5_s_after_accept_is_closed() {
        let mut rig = Rig::new();
        let addr = rig.health.local_addr();
        let mut slow = std::net::TcpStream::connect(addr).expect("connect");
        slow.write_all(b"GET /livez HTTP/1.1\r\n")
            .expect("send half a request");
        // Accepted with a made-up clock, so the test needs no 5 s wait.
        let accepted = Instant::now();
        rig.turn_until("the accept", |rig| {
            rig.accept(accepted);
            !rig.health.is_empty()
        });
        let deadline = accepted + REQUEST_TIMEOUT;
        assert_eq!(rig.health.next_wakeup(), Some(deadline));
        assert!(!rig.health.on_clock(deadline - Duration::from_millis(1)));
        assert_eq!(rig.health.len(), 1, "open until its deadline");
        rig.health.on_clock(deadline);
        assert!(rig.health.is_empty(), "closed at its deadline");
        assert_eq!(rig.health.next_wakeup(), None);
        slow.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let mut rest = Vec::new();
        // Closed with no answer, and with FIN, not a reset: the half request
        // was read off before the close.
        let read = slow.read_to_end(&mut rest);
        assert!(matches!(read, Ok(0)), "{read:?} {rest:?}");
    }

    #[test]
    fn a_deadline_frees_a_slot_at_the_limit_and_accepting_resumes() {
        let mut rig = Rig::new();
        let addr = rig.health.local_addr();
        let held: Vec<std::net::TcpStream> = (0..=MAX_CONNECTIONS)
            .map(|_| std::net::TcpStream::connect(addr).expect("connect"))
            .collect();
        let start = Instant::now();
        rig.turn_until("16 accepted", |rig| {
            rig.accept(start);
            rig.health.len() == MAX_CONNECTIONS
        });
        // Every slot expires together; the one in the backlog comes in.
        assert!(
            rig.health.on_clock(start + REQUEST_TIMEOUT),
            "resume accepting"
        );
        assert!(rig.health.is_empty());
        rig.accept(start + REQUEST_TIMEOUT);
        assert_eq!(rig.health.len(), 1, "the 17th accepted once slots freed");
        drop(held);
    }

    #[test]
    fn a_dead_source_asks_for_no_wakeup() {
        let mut rig = Rig::new();
        assert_eq!(rig.health.next_wakeup(), None);
        assert!(!rig.health.on_clock(Instant::now()));
        assert!(!rig.health.remove_closed());
        // An event for a key that is not there is spurious and ignored.
        rig.health
            .conn_ready(3, &MetricsSnapshot::default(), |_, _, _| Ok(()));
        assert!(rig.health.is_empty());
        rig.turn();
        assert_eq!(rig.health.next_wakeup(), None);
    }

    /// docs/protocol.md "Operations", take-over: the listener goes to the
    /// new instance; a connection already open here is still answered.
    #[test]
    fn a_closed_listener_accepts_no_more_and_an_open_connection_is_still_answered() {
        let mut rig = Rig::new();
        let addr = rig.health.local_addr();
        let mut first = std::net::TcpStream::connect(addr).expect("connect");
        first
            .write_all(b"GET /livez HTTP/1.1\r\n")
            .expect("half a request");
        rig.turn_until("the first connection", |rig| rig.health.len() == 1);
        let mut listener = rig.health.close_listener().expect("the listener");
        rig.poll
            .registry()
            .deregister(&mut listener)
            .expect("deregister");
        assert!(rig.health.close_listener().is_none(), "closed once");
        // The socket lives on (the new instance holds it): a connect waits
        // in its backlog, and this side takes it no more.
        let _second = std::net::TcpStream::connect(addr).expect("connect");
        rig.accept(Instant::now());
        assert_eq!(rig.health.len(), 1, "nothing accepted once closed");
        let finish = std::thread::spawn(move || {
            // A safety net against a hang, not a way to synchronise.
            first.set_read_timeout(Some(Duration::from_secs(20)))?;
            first.write_all(b"Host: x\r\n\r\n")?;
            let mut answer = Vec::new();
            first.read_to_end(&mut answer)?;
            Ok(answer)
        });
        rig.turn_until("the first connection's answer", |_| finish.is_finished());
        let text = answer(finish);
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        rig.turn_until("the connection's removal", |rig| rig.health.is_empty());
        assert_eq!(rig.health.len(), 0);
        drop(listener);
    }
}
