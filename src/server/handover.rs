//! The server's side of a take-over (docs/protocol.md "Operations",
//! take-over): [`Server::offer_take_over`], the handover listener's events,
//! its deadline, and what the loop does once a new instance serves the
//! sockets.
//!
//! The exchange itself (the wire format, the peer check, the refusals and
//! their log lines) belongs to [`crate::handover::HandoverListener`]; this
//! file only registers what its steps ask for, lends it the listening
//! sockets for the offer, and carries out a hand-over: let go of the
//! handover socket, drop every passed descriptor (the TCP listeners, the
//! UDP sockets, the health listener) without disturbing the shared
//! sockets, and drain.

use std::os::fd::AsFd;
use std::path::Path;
use std::time::Instant;

use log::warn;

use super::{HANDOVER_CONNECTION_TOKEN, HANDOVER_LISTENER_TOKEN, Server};
use crate::error::Error;
use crate::handover::{HandoverListener, Kind, Shared, Step, TAKE_OVER_TIMEOUT};

impl Server {
    /// Offers this server's listening sockets to a successor: listens on a
    /// Unix socket at `path` (mode 0600), a source on this server's `Poll`.
    /// A process of the same user that connects there and speaks the
    /// take-over protocol ([`crate::take_over`]) receives every listening
    /// socket; once it confirms that it serves them, this server closes its
    /// own descriptors of them (never the sockets themselves) and drains its
    /// connections. Anything else that connects is refused and logged, and
    /// service goes on untouched. At the drain's start for any other reason
    /// the socket file is removed.
    ///
    /// Call it before [`Server::run`], once. A peer has
    /// [`crate::TAKE_OVER_TIMEOUT`] for its request, and as long again for
    /// its confirmation once the sockets are sent.
    ///
    /// # Errors
    ///
    /// [`Error::Handover`] when the socket cannot be created: another
    /// process listens at `path`, something that is not a socket is there,
    /// the directory is not writable, the path is too long, or a take-over
    /// is already offered.
    ///
    /// # Notes
    ///
    /// A socket file already at `path` is replaced only when nothing
    /// answers on it (a dead instance's, or one that let go after a
    /// take-over). Put it in a directory only the service's user may write
    /// to (`/run/echod/`).
    pub fn offer_take_over(&mut self, path: &Path) -> Result<(), Error> {
        let failed = |source| Error::Handover {
            path: path.to_owned(),
            source,
        };
        if self.handover.is_some() {
            return Err(failed(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "a take-over is already offered",
            )));
        }
        let mut handover = HandoverListener::bind(path, TAKE_OVER_TIMEOUT).map_err(failed)?;
        self.poll
            .registry()
            .register(
                handover.listener_mut(),
                HANDOVER_LISTENER_TOKEN,
                mio::Interest::READABLE,
            )
            .map_err(failed)?;
        log::info!("offering take-over: path={}", path.display());
        self.handover = Some(handover);
        Ok(())
    }

    /// The handover listener is readable: accept, and begin an exchange.
    pub(super) fn on_handover_listener(&mut self) {
        let now = Instant::now();
        if let Some(handover) = self.handover.as_mut() {
            let step = handover.accept_ready(now);
            self.apply_handover(step, now);
        }
    }

    /// The exchange's connection is ready: move it on, lending every
    /// listening socket for the offer.
    pub(super) fn on_handover_connection(&mut self) {
        let now = Instant::now();
        let Some(handover) = self.handover.as_mut() else {
            return; // spurious: the offer was withdrawn in this batch
        };
        // docs/protocol.md "Operations": every listening socket is passed,
        // the health listener included. The offer lists them by kind: the
        // TCP listeners, then the UDP sockets, then the health listener.
        let tcp = self.acceptor.listeners().map(|l| Shared {
            kind: Kind::Tcp,
            addr: l.addr,
            fd: l.socket.as_fd(),
        });
        let udp = self.udp.open().map(|(addr, socket)| Shared {
            kind: Kind::Udp,
            addr,
            fd: socket.as_fd(),
        });
        let health = self.health.as_ref().and_then(|h| {
            h.listener().map(|listener| Shared {
                kind: Kind::Health,
                addr: h.local_addr(),
                fd: listener.as_fd(),
            })
        });
        let shared: Vec<Shared<'_>> = tcp.chain(udp).chain(health).collect();
        let step = handover.connection_ready(now, &shared);
        self.apply_handover(step, now);
    }

    /// The exchange's deadline, in every state (a dead offer answers `None`).
    pub(super) fn handover_on_clock(&mut self, now: Instant) {
        if let Some(handover) = self.handover.as_mut() {
            let step = handover.on_clock(now);
            self.apply_handover(step, now);
        }
    }

    /// Does what an exchange step asks of the loop, then refreshes the
    /// deadline the loop reads ([`Server::deadlines`]).
    fn apply_handover(&mut self, step: Step, now: Instant) {
        self.apply_handover_step(step, now);
        self.handover_deadline = self.handover.as_ref().and_then(|h| h.next_wakeup());
    }

    fn apply_handover_step(&mut self, step: Step, now: Instant) {
        let Some(handover) = self.handover.as_mut() else {
            return;
        };
        let registry = self.poll.registry();
        match step {
            Step::Idle => {}
            Step::Register(interest) | Step::Keep(interest) => {
                let path = handover.path().display().to_string();
                let Some(conn) = handover.connection_mut() else {
                    return;
                };
                let done = if matches!(step, Step::Register(_)) {
                    registry.register(conn, HANDOVER_CONNECTION_TOKEN, interest)
                } else {
                    registry.reregister(conn, HANDOVER_CONNECTION_TOKEN, interest)
                };
                if let Err(err) = done {
                    // The peer reads end-of-stream before any offer: its
                    // take-over fails with one line; service goes on.
                    warn!(
                        "take-over refused, still serving: path={} reason=cannot register its connection: {}",
                        path,
                        crate::error::os_reason(&err)
                    );
                    let _ = registry.deregister(conn);
                    handover.close_connection();
                }
            }
            // Already logged, and the peer told why; serving goes on.
            Step::Refused(_) => {
                if let Some(conn) = handover.connection_mut() {
                    let _ = registry.deregister(conn);
                }
                handover.close_connection();
            }
            Step::HandedOver => self.hand_over(now),
        }
    }

    /// The new instance serves the sockets: let go of them and drain, in
    /// this turn (docs/protocol.md "Operations", take-over).
    fn hand_over(&mut self, now: Instant) {
        if let Some(mut handover) = self.handover.take() {
            let registry = self.poll.registry();
            if let Some(conn) = handover.connection_mut() {
                let _ = registry.deregister(conn);
            }
            let _ = registry.deregister(handover.listener_mut());
            // Its listener closes before the exchange's connection, so the
            // new instance, reading end-of-stream, finds the socket file
            // dead and may replace it. The file is left: it is theirs now.
            drop(handover);
        }
        // Only this process's descriptors go, never the sockets (no
        // `shutdown`): each is deregistered, then closed. Deregistering
        // first matters: epoll forgets a registration only when the last
        // descriptor of its open file closes, and the new instance holds
        // one, so a socket closed while registered would go on waking
        // this loop. With no listener left, the drain's backlog sweep
        // ("Draining" 2) takes nothing: that backlog is the new
        // instance's, which accepts it. Datagrams queued on a UDP socket
        // are the new instance's too, as are probes waiting in the health
        // listener's backlog.
        self.close_listeners();
        self.close_udp();
        self.close_health_listener();
        if self.life.hand_over(now) {
            self.begin_drain(now);
        }
    }

    /// Lets go of the health listener (it was handed over): deregistered,
    /// then dropped. Health connections already open here are answered
    /// until they finish, or until this process exits, whichever is first
    /// (docs/protocol.md "Operations", take-over).
    fn close_health_listener(&mut self) {
        let Some(health) = self.health.as_mut() else {
            return;
        };
        if let Some(mut listener) = health.close_listener() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        self.health_wakeup = health.next_wakeup();
    }

    /// The drain begins for another reason than a hand-over: stop offering
    /// take-overs and remove the socket file (if it is still ours). An
    /// exchange in progress ends with its connection: a new instance that
    /// has not confirmed yet fails with one line; one that has confirmed
    /// reads that as the old instance letting go, and serves.
    pub(super) fn withdraw_take_over(&mut self) {
        let Some(mut handover) = self.handover.take() else {
            return;
        };
        self.handover_deadline = None;
        let registry = self.poll.registry();
        if let Some(conn) = handover.connection_mut() {
            let _ = registry.deregister(conn);
        }
        let _ = registry.deregister(handover.listener_mut());
        handover.remove_socket_file();
    }
}
