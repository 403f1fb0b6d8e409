//! [`UdpSockets`]: every `--udp` socket of one server, the reply budget they
//! share and the counters of those already closed (docs/protocol.md "UDP
//! echo (RFC 862)").
//!
//! The server owns one. It registers the sockets with its `Poll` (this
//! module never touches the `Poll`), hands each readable event here with
//! the loop's read buffer and the turn's clock, serves a socket left at its
//! cap again next turn, and takes the sockets back at drain start to
//! deregister and drop them. Kept apart from `udp.rs`, which echoes on one
//! socket, so that file stays about one socket's rules.

use std::fmt;
use std::net::SocketAddr;
use std::time::Instant;

use super::{RateLimit, Readable, UdpEcho, UdpStats};
use crate::config::Config;
use crate::error::Error;

/// One open `--udp` socket and whether it is queued for another turn.
#[derive(Debug)]
struct Member {
    /// The socket and its counters.
    echo: UdpEcho,
    /// It stopped at its per-event cap and the server was asked to serve it
    /// next turn; while set, asking again is not repeated, so a flood keeps
    /// it listed once, however many turns it lasts.
    queued: bool,
}

/// The `--udp` sockets of one server (socket `j` is `config.udp[j]`).
#[derive(Debug)]
pub(crate) struct UdpSockets {
    /// Open sockets, in `config.udp` order; empty once closed at drain start.
    members: Vec<Member>,
    /// The addresses bound, with real ports; kept after the sockets close.
    addrs: Vec<SocketAddr>,
    /// The reply budget of all sockets together (`--udp-max-rate`).
    rate: RateLimit,
    /// The counters of the sockets closed at drain start.
    closed: UdpStats,
}

impl UdpSockets {
    /// Binds every `config.udp` address, in order; none when there is none.
    /// The reply budget starts full at `now`.
    ///
    /// # Errors
    ///
    /// [`Error::ListenFor`] naming the first address that cannot be bound
    /// (in use, not local, a port below 1024 without the privilege).
    pub(crate) fn bind(config: &Config, now: Instant) -> Result<UdpSockets, Error> {
        let members = config
            .udp
            .iter()
            .map(|&addr| {
                UdpEcho::bind(addr)
                    .map(|echo| Member {
                        echo,
                        queued: false,
                    })
                    .map_err(|source| Error::ListenFor {
                        purpose: "udp",
                        addr,
                        source,
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(UdpSockets::new(members, config, now))
    }

    /// Serves UDP sockets the caller already has (a take-over's,
    /// docs/protocol.md "Operations") instead of binding `config.udp`: their
    /// addresses are read from them, and they are made non-blocking. The
    /// reply budget (`config.udp_max_rate`) starts full at `now`.
    ///
    /// # Errors
    ///
    /// [`Error::Inherit`] when a socket cannot be made non-blocking or has
    /// no address.
    pub(crate) fn adopt(
        sockets: Vec<std::net::UdpSocket>,
        config: &Config,
        now: Instant,
    ) -> Result<UdpSockets, Error> {
        let inherit = |what: &str, err: std::io::Error| Error::Inherit {
            detail: format!("{what}: {}", crate::error::os_reason(&err)),
        };
        let members = sockets
            .into_iter()
            .map(|socket| {
                // mio needs non-blocking sockets; one from an embedder may not be.
                socket
                    .set_nonblocking(true)
                    .map_err(|err| inherit("cannot make a UDP socket non-blocking", err))?;
                let addr = socket
                    .local_addr()
                    .map_err(|err| inherit("cannot read a UDP socket's address", err))?;
                let socket = mio::net::UdpSocket::from_std(socket);
                Ok(Member {
                    echo: UdpEcho::new(socket, addr),
                    queued: false,
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        Ok(UdpSockets::new(members, config, now))
    }

    fn new(members: Vec<Member>, config: &Config, now: Instant) -> UdpSockets {
        let addrs = members.iter().map(|m| m.echo.local_addr()).collect();
        UdpSockets {
            members,
            addrs,
            rate: RateLimit::new(config.udp_max_rate, now),
            closed: UdpStats::default(),
        }
    }

    /// The open sockets with their addresses, for the server to lend to a
    /// take-over's offer.
    pub(crate) fn open(&self) -> impl Iterator<Item = (SocketAddr, &mio::net::UdpSocket)> {
        self.members
            .iter()
            .map(|m| (m.echo.local_addr(), m.echo.socket()))
    }

    /// The open sockets with their indices, for the server to register
    /// (socket `j` with its token for `j`).
    pub(crate) fn sockets_mut(
        &mut self,
    ) -> impl Iterator<Item = (usize, &mut mio::net::UdpSocket)> {
        self.members
            .iter_mut()
            .enumerate()
            .map(|(j, m)| (j, m.echo.socket_mut()))
    }

    /// The bound addresses, with real ports; kept after the sockets close.
    pub(crate) fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Serves socket `j` after a readable event: echoes its queued
    /// datagrams (up to the per-event cap) from `buf`, the loop's read
    /// buffer, against the shared budget refilled to `now`. True when it
    /// stopped at the cap and must be served again next turn by
    /// [`UdpSockets::on_next_turn`], and was not already listed for it. A
    /// socket that is closed (an event or a queued turn after drain start)
    /// is left alone.
    pub(crate) fn on_readable(&mut self, j: usize, buf: &mut [u8], now: Instant) -> bool {
        let Some(member) = self.members.get_mut(j) else {
            return false;
        };
        match member.echo.on_readable(buf, &mut self.rate, now) {
            Readable::Drained => false,
            Readable::Capped => !std::mem::replace(&mut member.queued, true),
        }
    }

    /// Serves socket `j` on the turn after it stopped at its cap: mio is
    /// edge-triggered, so no event reports the datagrams it left queued.
    /// Same answer as [`UdpSockets::on_readable`].
    pub(crate) fn on_next_turn(&mut self, j: usize, buf: &mut [u8], now: Instant) -> bool {
        if let Some(member) = self.members.get_mut(j) {
            member.queued = false;
        }
        self.on_readable(j, buf, now)
    }

    /// Closes every socket (the drain began, docs/protocol.md "UDP echo (RFC
    /// 862)", or a take-over passed them on): their counters are kept, and
    /// the sockets are handed back for the server to deregister before
    /// dropping them, which closes this process's descriptors.
    pub(crate) fn close(&mut self) -> Vec<mio::net::UdpSocket> {
        let mut sockets = Vec::with_capacity(self.members.len());
        for member in self.members.drain(..) {
            self.closed += member.echo.stats();
            sockets.push(member.echo.into_socket());
        }
        sockets
    }

    /// The counters of every socket, open or closed, since start.
    pub(crate) fn stats(&self) -> UdpStats {
        self.closed + self.members.iter().map(|m| m.echo.stats()).sum()
    }

    /// The counters when any `--udp` address was configured, `None`
    /// otherwise: the stats line, the summary line and `/metrics` show UDP
    /// figures only for a server that serves UDP.
    pub(crate) fn configured_stats(&self) -> Option<UdpStats> {
        (!self.addrs.is_empty()).then(|| self.stats())
    }
}

/// The UDP fields of the stats and summary lines, with a leading space, or
/// nothing when `--udp` is not configured. Formats without allocating.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LogFields(pub(crate) Option<UdpStats>);

impl fmt::Display for LogFields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(s) = self.0 else {
            return Ok(());
        };
        write!(f, " udp_received={} udp_echoed={}", s.received, s.echoed)?;
        for reason in super::DropReason::ALL {
            write!(f, " udp_dropped_{}={}", reason.as_str(), s.dropped(reason))?;
        }
        write!(f, " udp_receive_errors={}", s.receive_errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket as StdUdpSocket;
    use std::time::Duration;

    fn config(udp: &[&str], rate: u32) -> Config {
        Config {
            udp: udp.iter().map(|a| a.parse().unwrap()).collect(),
            udp_max_rate: rate,
            ..Config::default()
        }
    }

    #[test]
    fn binding_reports_real_ports_in_order_and_names_a_failure() {
        let sockets =
            UdpSockets::bind(&config(&["127.0.0.1:0", "127.0.0.1:0"], 10), Instant::now())
                .expect("bind two sockets");
        assert_eq!(sockets.addrs().len(), 2);
        assert!(sockets.addrs().iter().all(|a| a.port() != 0));
        let taken = sockets.addrs()[0].to_string();
        let err = UdpSockets::bind(&config(&[&taken], 10), Instant::now()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("cannot listen on {taken} (udp): address in use")
        );
    }

    #[test]
    fn nothing_configured_shows_no_udp_fields() {
        let sockets = UdpSockets::bind(&config(&[], 10), Instant::now()).unwrap();
        assert_eq!(sockets.configured_stats(), None);
        assert_eq!(LogFields(sockets.configured_stats()).to_string(), "");
    }

    #[test]
    fn counters_survive_the_close_and_a_closed_socket_is_left_alone() {
        let mut sockets = UdpSockets::bind(&config(&["127.0.0.1:0"], 10), Instant::now()).unwrap();
        let client = StdUdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        client.send_to(b"hello", sockets.addrs()[0]).unwrap();
        let mut buf = vec![0; 64 * 1024];
        // Loopback usually delivers within send_to, but nothing promises it.
        let start = Instant::now();
        while sockets.stats().received == 0 {
            assert!(start.elapsed() < Duration::from_secs(10), "no datagram");
            sockets.on_readable(0, &mut buf, Instant::now());
            std::thread::sleep(Duration::from_millis(1));
        }
        let mut back = [0; 16];
        let (len, _) = client.recv_from(&mut back).unwrap();
        assert_eq!(&back[..len], b"hello");
        assert_eq!(sockets.close().len(), 1);
        let stats = sockets.stats();
        assert_eq!((stats.received, stats.echoed), (1, 1));
        assert!(!sockets.on_readable(0, &mut buf, Instant::now()));
        assert!(!sockets.on_next_turn(0, &mut buf, Instant::now()));
        assert_eq!(sockets.addrs().len(), 1, "addresses outlive the sockets");
        assert_eq!(
            LogFields(sockets.configured_stats()).to_string(),
            " udp_received=1 udp_echoed=1 udp_dropped_low_port=0 udp_dropped_bad_source=0 \
             udp_dropped_rate=0 udp_dropped_kernel_full=0 udp_dropped_send_failed=0 \
             udp_receive_errors=0"
        );
    }

    #[test]
    fn adopted_sockets_keep_their_addresses_and_echo_like_bound_ones() {
        let given = StdUdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = given.local_addr().unwrap();
        // Blocking, as an embedder may hand it over: adopting fixes that.
        let mut sockets =
            UdpSockets::adopt(vec![given], &config(&["192.0.2.1:7"], 10), Instant::now())
                .expect("adopt");
        assert_eq!(
            sockets.addrs(),
            &[addr],
            "the socket's address, not config.udp"
        );
        assert_eq!(sockets.open().map(|(a, _)| a).collect::<Vec<_>>(), [addr]);
        let client = StdUdpSocket::bind("127.0.0.1:0").unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        client.send_to(b"adopted", addr).unwrap();
        let mut buf = vec![0; 64 * 1024];
        // Loopback usually delivers within send_to, but nothing promises
        // it; a blocking socket would hang here instead of returning.
        let start = Instant::now();
        while sockets.stats().received == 0 {
            assert!(start.elapsed() < Duration::from_secs(10), "no datagram");
            sockets.on_readable(0, &mut buf, Instant::now());
            std::thread::sleep(Duration::from_millis(1));
        }
        let mut back = [0; 16];
        let (len, _) = client.recv_from(&mut back).unwrap();
        assert_eq!(&back[..len], b"adopted");
        assert!(
            UdpSockets::adopt(Vec::new(), &config(&[], 10), Instant::now())
                .unwrap()
                .configured_stats()
                .is_none()
        );
    }

    #[test]
    fn a_socket_at_its_cap_is_listed_for_next_turn_once() {
        let mut sockets =
            UdpSockets::bind(&config(&["127.0.0.1:0"], 1_000_000), Instant::now()).unwrap();
        let client = StdUdpSocket::bind("127.0.0.1:0").unwrap();
        let to = sockets.addrs()[0];
        // Two caps' worth and one more, queued before the first read:
        // loopback delivers within send_to, and the default receive buffer
        // holds them.
        let cap = super::super::DATAGRAMS_PER_EVENT;
        for _ in 0..2 * cap + 1 {
            client.send_to(b"x", to).unwrap();
        }
        let mut buf = vec![0; 64 * 1024];
        assert!(
            sockets.on_readable(0, &mut buf, Instant::now()),
            "capped: listed for next turn"
        );
        // Another event while listed: capped again, but not listed twice.
        assert!(!sockets.on_readable(0, &mut buf, Instant::now()));
        // The listed turn clears the mark: one datagram left, then drained.
        assert!(!sockets.on_next_turn(0, &mut buf, Instant::now()));
        assert_eq!(sockets.stats().received, 2 * cap as u64 + 1);
        // Capped again later: listed again.
        for _ in 0..cap {
            client.send_to(b"x", to).unwrap();
        }
        assert!(sockets.on_readable(0, &mut buf, Instant::now()));
    }
}
