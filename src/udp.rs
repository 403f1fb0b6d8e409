//! UDP echo: one [`UdpEcho`] per `--udp` address, the shared reply budget
//! ([`RateLimit`], `--udp-max-rate`) and the counters ([`UdpStats`])
//! (docs/protocol.md "UDP echo (RFC 862)").
//!
//! A datagram is sent back to its source byte-exact, from the loop's one
//! read buffer, with no allocation. Because a UDP echo answers whoever the
//! source address claims to be, an open one is a reflector and an amplifier
//! for spoofed traffic (CERT CA-1996-01: two echo or chargen ports pointed at
//! each other loop forever). So before it answers, this module drops
//! datagrams from privileged source ports, from addresses that can never be
//! a real sender (broadcast, multicast, unspecified), and beyond a reply
//! rate shared by all UDP sockets; every drop is counted by reason.
//!
//! It does not own the `Poll`, read the clock or log: the server registers
//! the socket, passes `now` and the one [`RateLimit`], and turns a
//! [`Readable::Capped`] answer into another turn. It is not a time-driven
//! source either: the bucket refills from the `now` it is handed when
//! datagrams arrive, so nothing here ever needs the loop to wake up.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Instant;

/// Datagrams one socket may take per readable event before the other
/// sources get a turn. A TCP connection gets 16 reads of up to 64 KiB; a
/// datagram is usually under 1.5 KiB, so 64 of them (128 system calls) is a
/// comparable share of the loop without an extra `epoll_wait` per handful.
pub(crate) const DATAGRAMS_PER_EVENT: usize = 64;

/// The largest UDP payload over IPv6 without a jumbogram: 65,535 (the
/// payload length field) minus the 8-byte UDP header. IPv4's largest is
/// 65,507 (65,535 minus a 20-byte IP header and the UDP header). Linux
/// sockets cannot send or receive UDP jumbograms (RFC 2675), so a receive
/// buffer of at least this many bytes never cuts a datagram short.
pub(crate) const MAX_PAYLOAD: usize = 65_527;

/// One reply's worth of the bucket, in units of 1/1e9 reply: refilling
/// `elapsed_ns * rate` units is exact integer arithmetic, so no fraction of a
/// token is ever lost between calls, however often they come.
const UNIT: u64 = 1_000_000_000;

/// The socket operations the echo needs; implemented for
/// `mio::net::UdpSocket`, and by a scripted fake in the unit tests (which
/// is how the kernel's refusals, hard to provoke on loopback, get tested).
pub(crate) trait DatagramSocket {
    /// Receives one datagram like `UdpSocket::recv_from` on a non-blocking socket.
    fn recv_from(&mut self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)>;
    /// Sends one datagram like `UdpSocket::send_to` on a non-blocking socket.
    fn send_to(&mut self, buf: &[u8], target: SocketAddr) -> io::Result<usize>;
}

impl DatagramSocket for mio::net::UdpSocket {
    #[inline]
    fn recv_from(&mut self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        mio::net::UdpSocket::recv_from(self, buf)
    }
    #[inline]
    fn send_to(&mut self, buf: &[u8], target: SocketAddr) -> io::Result<usize> {
        mio::net::UdpSocket::send_to(self, buf, target)
    }
}

/// Why a datagram got no reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The source port is below 1024: a system service (echo, chargen,
    /// DNS, NTP) a forged datagram would have us talk to.
    LowPort,
    /// The source is a broadcast, multicast or unspecified address, which no
    /// real sender has: a reply would go to many hosts or to nobody.
    BadSource,
    /// `--udp-max-rate` replies were already sent in the last second.
    Rate,
    /// The kernel would not take the reply at once (send buffer full,
    /// `ENOBUFS`, `ENOMEM`); a datagram service drops rather than queues.
    KernelFull,
    /// Sending failed for another reason (no route, refused by a firewall).
    SendFailed,
}

impl DropReason {
    /// Every reason, in the order the stats line and `/metrics` list them.
    pub const ALL: [DropReason; 5] = [
        DropReason::LowPort,
        DropReason::BadSource,
        DropReason::Rate,
        DropReason::KernelFull,
        DropReason::SendFailed,
    ];

    /// The reason as logs and `/metrics` labels spell it (`low_port`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::LowPort => "low_port",
            DropReason::BadSource => "bad_source",
            DropReason::Rate => "rate",
            DropReason::KernelFull => "kernel_full",
            DropReason::SendFailed => "send_failed",
        }
    }
}

/// Counters of one UDP socket, or (summed with `+` or `Iterator::sum`) of
/// all of them. Invariant: `received == echoed + dropped_total()`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UdpStats {
    /// Datagrams received, whatever became of them.
    pub received: u64,
    /// Datagrams sent back whole.
    pub echoed: u64,
    /// Dropped: source port below 1024.
    pub dropped_low_port: u64,
    /// Dropped: broadcast, multicast or unspecified source.
    pub dropped_bad_source: u64,
    /// Dropped: over `--udp-max-rate`.
    pub dropped_rate: u64,
    /// Dropped: the kernel would not take the reply at once.
    pub dropped_kernel_full: u64,
    /// Dropped: sending failed for another reason.
    pub dropped_send_failed: u64,
    /// Receives that failed with something other than `WouldBlock` or
    /// `Interrupted` (no datagram is lost to us by these; Linux reports none
    /// on an unconnected socket without `IP_RECVERR`, so this stays 0).
    pub receive_errors: u64,
}

impl UdpStats {
    /// How many datagrams were dropped for `reason`.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        match reason {
            DropReason::LowPort => self.dropped_low_port,
            DropReason::BadSource => self.dropped_bad_source,
            DropReason::Rate => self.dropped_rate,
            DropReason::KernelFull => self.dropped_kernel_full,
            DropReason::SendFailed => self.dropped_send_failed,
        }
    }

    /// Datagrams dropped for any reason.
    pub fn dropped_total(&self) -> u64 {
        DropReason::ALL.iter().map(|&r| self.dropped(r)).sum()
    }

    /// The counters as the health listener's `/metrics` lists them
    /// (docs/protocol.md "Lame duck and health"). The hook for wiring the
    /// health listener in: its snapshot's `udp` is
    /// `server.udp.configured_stats().map(UdpStats::to_metrics)`.
    pub(crate) fn to_metrics(self) -> crate::health::UdpCounters {
        crate::health::UdpCounters {
            received: self.received,
            echoed: self.echoed,
            dropped: DropReason::ALL
                .iter()
                .map(|&reason| (reason.as_str(), self.dropped(reason)))
                .collect(),
        }
    }

    fn count_drop(&mut self, reason: DropReason) {
        let counter = match reason {
            DropReason::LowPort => &mut self.dropped_low_port,
            DropReason::BadSource => &mut self.dropped_bad_source,
            DropReason::Rate => &mut self.dropped_rate,
            DropReason::KernelFull => &mut self.dropped_kernel_full,
            DropReason::SendFailed => &mut self.dropped_send_failed,
        };
        *counter += 1;
    }
}

impl std::ops::AddAssign for UdpStats {
    fn add_assign(&mut self, other: UdpStats) {
        self.received += other.received;
        self.echoed += other.echoed;
        self.dropped_low_port += other.dropped_low_port;
        self.dropped_bad_source += other.dropped_bad_source;
        self.dropped_rate += other.dropped_rate;
        self.dropped_kernel_full += other.dropped_kernel_full;
        self.dropped_send_failed += other.dropped_send_failed;
        self.receive_errors += other.receive_errors;
    }
}

impl std::ops::Add for UdpStats {
    type Output = UdpStats;
    fn add(mut self, other: UdpStats) -> UdpStats {
        self += other;
        self
    }
}

impl std::iter::Sum for UdpStats {
    fn sum<I: Iterator<Item = UdpStats>>(iter: I) -> UdpStats {
        iter.fold(UdpStats::default(), |a, b| a + b)
    }
}

/// The reply budget of all UDP sockets together (`--udp-max-rate`): a token
/// bucket holding one second's worth of replies, refilled from the `now`
/// it is handed. The server owns one and lends it to every socket's step.
///
/// A burst of up to one second's worth is answered at once; after that,
/// replies follow the rate. Replies are what an attacker buys with spoofed
/// datagrams, so they are what is limited, in total: one budget per socket
/// would multiply the limit by the number of `--udp` addresses.
#[derive(Debug, Clone)]
pub(crate) struct RateLimit {
    /// Replies a second; 0 means no limit. A server never has 0:
    /// `Config::validate` refuses it, as the limit is a reflection guard.
    rate: u64,
    /// The bucket's capacity in [`UNIT`]s: one second's worth, `rate * UNIT`.
    capacity: u64,
    /// Tokens left, in [`UNIT`]s; never above `capacity`.
    units: u64,
    /// The latest `now` the bucket was refilled to; never moves backwards.
    updated: Instant,
}

impl RateLimit {
    /// A full bucket of `rate` replies a second at `now`; `rate == 0` is no limit.
    pub(crate) fn new(rate: u32, now: Instant) -> RateLimit {
        let rate = u64::from(rate);
        // u32::MAX * 1e9 < 2^63: no overflow.
        let capacity = rate * UNIT;
        RateLimit {
            rate,
            capacity,
            units: capacity,
            updated: now,
        }
    }

    /// Adds what the time since the last refill earned, up to one second's worth.
    ///
    /// A `now` earlier than the last one (two sockets handed instants read
    /// at different moments) adds nothing and is otherwise ignored.
    pub(crate) fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated);
        if elapsed.is_zero() {
            return;
        }
        self.updated = now;
        // A second or more refills the bucket whatever the rate; capping
        // here keeps `ns * rate` within u64 (1e9 * u32::MAX < 2^63).
        let ns = u64::try_from(elapsed.as_nanos())
            .unwrap_or(u64::MAX)
            .min(UNIT);
        self.units = self.units.saturating_add(ns * self.rate).min(self.capacity);
    }

    /// Takes one reply's token; false when the bucket is empty.
    #[inline]
    pub(crate) fn try_take(&mut self) -> bool {
        if self.rate == 0 {
            return true;
        }
        if self.units < UNIT {
            return false;
        }
        self.units -= UNIT;
        true
    }

    /// Returns a token taken for a reply that was not sent after all: the
    /// limit counts what reaches the wire, not what we attempted.
    #[inline]
    pub(crate) fn give_back(&mut self) {
        self.units = self.units.saturating_add(UNIT).min(self.capacity);
    }

    /// Whole replies the bucket allows right now.
    #[cfg(test)]
    pub(crate) fn available(&self) -> u64 {
        if self.rate == 0 {
            u64::MAX
        } else {
            self.units / UNIT
        }
    }
}

/// Where a socket stands after [`UdpEcho::on_readable`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Readable {
    /// Read until `WouldBlock` (or a receive error): the next datagram
    /// raises a new edge, so the loop waits for it.
    Drained,
    /// Stopped at [`DATAGRAMS_PER_EVENT`] with datagrams possibly still
    /// queued. mio is edge-triggered and those arrived before the last
    /// edge, so no new event will report them: the loop must call
    /// `on_readable` again next turn by itself (as it does for a TCP
    /// connection left with input at its cap), polling with a zero timeout.
    Capped,
}

/// One `--udp` socket and its counters.
#[derive(Debug)]
pub(crate) struct UdpEcho<S = mio::net::UdpSocket> {
    /// The non-blocking socket, bound to `addr`.
    socket: S,
    /// The address it is bound to, with the real port when port 0 was asked for.
    addr: SocketAddr,
    /// What happened to the datagrams it received.
    stats: UdpStats,
}

impl UdpEcho {
    /// Binds a non-blocking UDP socket to `addr` (IPv4 or IPv6).
    ///
    /// # Errors
    ///
    /// The OS error from `socket`, `bind` or `getsockname` (address in use,
    /// permission denied for a port below 1024, no such local address).
    ///
    /// # Notes
    ///
    /// `SO_REUSEADDR` is deliberately not set: on a UDP socket it would let
    /// another process bind the same port and receive part of its
    /// datagrams. An IPv6 wildcard (`[::]`) follows
    /// `net.ipv6.bindv6only`, as the TCP listeners do; when it is 0 (the
    /// default) IPv4 sources arrive as IPv4-mapped addresses, which the
    /// source guard unwraps.
    pub(crate) fn bind(addr: SocketAddr) -> io::Result<UdpEcho> {
        let socket = mio::net::UdpSocket::bind(addr)?;
        let addr = socket.local_addr()?;
        Ok(UdpEcho::new(socket, addr))
    }

    /// The socket, for the server to register with its `Poll` (and to
    /// deregister before dropping this at drain start).
    pub(crate) fn socket_mut(&mut self) -> &mut mio::net::UdpSocket {
        &mut self.socket
    }

    /// The socket, for the server to lend to a take-over's offer.
    pub(crate) fn socket(&self) -> &mio::net::UdpSocket {
        &self.socket
    }

    /// The socket, for the server to deregister and drop (drain start);
    /// read [`UdpEcho::stats`] first, they go with this.
    pub(crate) fn into_socket(self) -> mio::net::UdpSocket {
        self.socket
    }
}

impl<S: DatagramSocket> UdpEcho<S> {
    /// Wraps a socket already bound to `addr`.
    pub(crate) fn new(socket: S, addr: SocketAddr) -> UdpEcho<S> {
        UdpEcho {
            socket,
            addr,
            stats: UdpStats::default(),
        }
    }

    /// The bound address, with the real port when port 0 was asked for.
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// This socket's counters so far.
    pub(crate) fn stats(&self) -> UdpStats {
        self.stats
    }

    /// Serves the socket after a readable event (or a [`Readable::Capped`]
    /// turn): receives datagrams into `buf` until `WouldBlock` or
    /// [`DATAGRAMS_PER_EVENT`], and answers each one that passes the guards
    /// and the shared `rate` budget with one `send_to` of the same bytes.
    ///
    /// `buf` is the loop's shared read buffer; it should hold at least
    /// [`MAX_PAYLOAD`] bytes, or a longer datagram would be cut short by the
    /// kernel (and its echo with it). `now` is the loop's clock for this
    /// turn; it only refills `rate`.
    pub(crate) fn on_readable(
        &mut self,
        buf: &mut [u8],
        rate: &mut RateLimit,
        now: Instant,
    ) -> Readable {
        debug_assert!(buf.len() >= MAX_PAYLOAD, "the read buffer cuts datagrams");
        rate.refill(now);
        let mut taken = 0;
        while taken < DATAGRAMS_PER_EVENT {
            let (len, source) = match self.socket.recv_from(buf) {
                Ok(received) => received,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Readable::Drained,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    // Linux reports no such error on an unconnected UDP
                    // socket without IP_RECVERR. Should one come, stop
                    // rather than spin: the next datagram's edge brings the
                    // loop back, and any still queued are served then.
                    self.stats.receive_errors += 1;
                    return Readable::Drained;
                }
            };
            taken += 1;
            self.stats.received += 1;
            // `recv_from` never reports more than it wrote into `buf`; `get`
            // keeps even a misbehaving socket from making this panic.
            let payload = buf.get(..len).unwrap_or_default();
            match self.answer(payload, source, rate) {
                Ok(()) => self.stats.echoed += 1,
                Err(reason) => self.stats.count_drop(reason),
            }
        }
        Readable::Capped
    }

    /// Sends `payload` back to `source` unless a guard or the budget says no.
    #[inline]
    fn answer(
        &mut self,
        payload: &[u8],
        source: SocketAddr,
        rate: &mut RateLimit,
    ) -> Result<(), DropReason> {
        if let Some(reason) = reflection_risk(source) {
            return Err(reason);
        }
        if !rate.try_take() {
            return Err(DropReason::Rate);
        }
        let sent = loop {
            match self.socket.send_to(payload, source) {
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                other => break other,
            }
        };
        match sent {
            // UDP sends all or nothing; a short count would be a kernel bug,
            // and a cut echo is worse than none, so it counts as a failure.
            Ok(n) if n == payload.len() => Ok(()),
            Ok(_) => Err(DropReason::SendFailed),
            Err(err) => {
                rate.give_back();
                // Queueing the reply for later would cost memory per
                // datagram and delay it past usefulness; a datagram service
                // drops instead (docs/protocol.md "UDP echo (RFC 862)").
                if err.kind() == io::ErrorKind::WouldBlock
                    || crate::sys::is_resource_exhausted(&err)
                {
                    Err(DropReason::KernelFull)
                } else {
                    Err(DropReason::SendFailed)
                }
            }
        }
    }
}

/// Why a datagram from `source` must not be answered, if it must not
/// (CERT CA-1996-01).
///
/// - A source port below 1024 belongs to a system service: a forged
///   datagram "from" another host's echo or chargen port (7, 19) would start
///   an endless ping-pong between the two services, and one from DNS or NTP
///   (53, 123) would bounce off a service that answers in turn. No ordinary
///   client sends from there (ports are assigned from 32768 up on Linux).
/// - Broadcast, multicast and unspecified sources are never real senders:
///   a reply to them reaches every host on a segment, or nobody. An IPv6
///   socket bound to `[::]` sees IPv4 sources as IPv4-mapped addresses
///   (`::ffff:a.b.c.d`), which are unwrapped and checked as IPv4.
///
/// Only the limited broadcast 255.255.255.255 is recognised as broadcast:
/// a subnet's directed broadcast (say 192.0.2.255) looks like any unicast
/// address without that subnet's mask, which only the routing tables
/// know. Linux already drops, as martians, datagrams whose source is the
/// broadcast address of a directly attached subnet, and a remote subnet's
/// broadcast is not ours to know; the rate limit bounds what is left.
pub(crate) fn reflection_risk(source: SocketAddr) -> Option<DropReason> {
    if source.port() < 1024 {
        return Some(DropReason::LowPort);
    }
    let bad = match source.ip() {
        IpAddr::V4(ip) => is_bad_v4(ip),
        IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
            Some(v4) => is_bad_v4(v4),
            None => ip.is_multicast() || ip.is_unspecified(),
        },
    };
    bad.then_some(DropReason::BadSource)
}

fn is_bad_v4(ip: Ipv4Addr) -> bool {
    ip.is_broadcast() || ip.is_multicast() || ip.is_unspecified()
}

mod sockets;
pub(crate) use sockets::{LogFields, UdpSockets};

#[cfg(test)]
mod tests;
