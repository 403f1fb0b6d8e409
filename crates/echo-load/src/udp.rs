//! The UDP mode (`echo-load --udp`): one thread, one `mio::Poll`, one
//! socket per flow, datagrams sent on an open-loop schedule and every
//! reply checked and accounted.
//!
//! Owns the run: the sockets, the schedule, sending, receiving, progress
//! and the final tally. It does not own the wire format (`datagram.rs`),
//! the per-flow figures (`udp_flow.rs`) or the report (`udp_report.rs`).
//! Implements docs/protocol.md "The load generator": open loop at a rate,
//! a sequence number and send time in each datagram, every reply verified,
//! round trips, loss, duplicates, reordering and jitter, against any
//! RFC 862 server (nothing here knows echod).
//!
//! - Schedule: datagram `k` of the run (from 0) is due at `start + k /
//!   rate` and goes to flow `k % flows` with sequence number `k / flows`.
//!   The round trip runs from that due time, not from the actual send, so
//!   a sender that fell behind cannot hide it (as in the TCP open loop).
//! - Each flow's socket is `connect()`ed to the server: the kernel then
//!   drops datagrams from any other source, and an ICMP port unreachable
//!   comes back as `ECONNREFUSED` on the next send or receive.
//! - Pacing uses a `timerfd`, since a poll timeout is rounded up to whole
//!   milliseconds, which would show in every round trip. (A timerfd's
//!   timer has no slack range: the thread's timer slack does not delay it.)
//! - Nothing is allocated per datagram: one send and one receive buffer,
//!   bitmaps reserved up front.

use std::io::{self, Write as _};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd as _;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mio::net::UdpSocket;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use crate::datagram::{self, Verdict};
use crate::sys::Timer;
use crate::udp_flow::{Arrival, FlowStats};
use crate::udp_report::{Tally, UdpReport};
use crate::{LoadError, UdpConfig};

/// The timer's token; flows use their index, which never gets this high.
const TIMER_TOKEN: Token = Token(usize::MAX);

/// How long after the timer's time the poll gives up waiting for it. It
/// never should have to: this only bounds the harm if it did not fire.
const TIMER_BACKSTOP: Duration = Duration::from_millis(2);

/// Datagrams sent in one go before the sockets are read again, so a
/// sender catching up after a stall does not leave replies to overflow
/// the receive buffers.
const SEND_BATCH: usize = 256;

/// Replies read from one flow in one go before the others get a turn.
const READ_BATCH: usize = 256;

/// The kernel receive buffer asked for each flow's socket (capped by
/// `net.core.rmem_max`, often 208 KiB): about 1,300 replies of 64 bytes.
const FLOW_RECV_BUFFER: usize = 1 << 20;

/// The receive buffer: larger than any datagram, so a reply longer than
/// what was sent is seen whole and judged corrupt.
const RECV_BUFFER: usize = 65_536;

/// A progress sample of a UDP run, taken at each whole second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpProgress {
    /// Time since the load started.
    pub elapsed: Duration,
    /// Datagrams sent over the last second.
    pub sent: u64,
    /// Datagrams answered (first replies) over the last second.
    pub answered: u64,
    /// Datagrams sent so far and not answered yet.
    pub outstanding: u64,
    /// Duplicates, truncated and corrupt replies so far.
    pub wrong: u64,
}

/// Runs the UDP load described by `config` and returns what it measured.
///
/// Loss, duplicates and wrong replies do not stop the run; they are counted
/// in the report (see [`UdpReport::is_clean`]). With
/// [`UdpConfig::progress`] set, prints one progress line a second on stderr.
///
/// # Errors
///
/// [`LoadError::InvalidConfig`] for a bad configuration (or a plan whose
/// bitmaps cannot be reserved); [`LoadError::Socket`] when a flow's socket
/// cannot be opened or connected; [`LoadError::Poll`] when polling fails.
///
/// # Notes
///
/// Linux only (`timerfd`, `/proc/net/udp`). Raises the process's soft
/// `RLIMIT_NOFILE` to its hard limit first. Runs on the calling thread.
pub fn run_udp(config: &UdpConfig) -> Result<UdpReport, LoadError> {
    run_udp_with_progress(config, |p| {
        if config.progress {
            let line = format!(
                "echo-load: {:>4.0}s {:>10} sent/s {:>10} answered/s {:>8} outstanding {:>6} wrong\n",
                p.elapsed.as_secs_f64(),
                p.sent,
                p.answered,
                p.outstanding,
                p.wrong
            );
            // Progress is best effort; a closed stderr must not stop the run.
            let _ = io::stderr().write_all(line.as_bytes());
        }
    })
}

/// [`run_udp`], handing a [`UdpProgress`] sample to `on_progress` at each
/// whole second of the load, on the calling thread.
///
/// # Errors
///
/// As [`run_udp`].
///
/// # Notes
///
/// As [`run_udp`].
pub fn run_udp_with_progress(
    config: &UdpConfig,
    mut on_progress: impl FnMut(&UdpProgress),
) -> Result<UdpReport, LoadError> {
    let planned = config.planned()?;
    if let Err(err) = crate::sys::raise_nofile_limit() {
        log::debug!("cannot raise the descriptor limit: {err}");
    }
    let mut run = Run::open(config, planned)?;
    let cpu_before = crate::sys::process_cpu_time();
    run.start = Instant::now();
    run.load(&mut on_progress).map_err(LoadError::Poll)?;
    let end = Instant::now();
    let cpu_after = crate::sys::process_cpu_time();
    Ok(run.report(end, cpu_before, cpu_after))
}

/// One flow: its socket, its key and its accounting.
#[derive(Debug)]
struct Flow {
    socket: UdpSocket,
    /// Mixes the run's nonce and the flow number into every tag.
    key: u64,
    stats: FlowStats,
}

/// A UDP run in progress.
struct Run<'a> {
    config: &'a UdpConfig,
    poll: Poll,
    timer: Timer,
    flows: Vec<Flow>,
    /// When the timer is set to expire, in nanoseconds since the start;
    /// `None` once it has expired.
    armed_ns: Option<u64>,
    /// The datagram being sent; its length is the datagram size.
    send_buf: Box<[u8]>,
    /// Where every reply is read.
    recv_buf: Box<[u8]>,
    /// When the load started; every time in a datagram counts from here.
    start: Instant,
    /// Datagrams the run sends in all.
    planned: u64,
    /// Index of the next datagram to send. Invariant: `next <= planned`.
    next: u64,
    /// Nanoseconds between two datagrams of the schedule.
    interval_ns: f64,
    /// When the last datagram was sent; replies are awaited until
    /// `reply_timeout` after it.
    last_send: Option<Instant>,
    /// Flows whose socket may still hold replies: a read batch ended
    /// before `WouldBlock`, so no new edge will announce them.
    unread: Vec<usize>,
    /// Per flow: true while it is in `unread`.
    is_unread: Vec<bool>,
    tally: Tally,
    /// Round trips from the scheduled send time, microseconds.
    rtt: Histogram<u64>,
}

impl<'a> Run<'a> {
    /// Opens and connects every flow's socket and reserves every bitmap.
    fn open(config: &'a UdpConfig, planned: u64) -> Result<Run<'a>, LoadError> {
        let poll = Poll::new().map_err(LoadError::Poll)?;
        let timer = Timer::new().map_err(LoadError::Poll)?;
        poll.registry()
            .register(
                &mut SourceFd(&timer.as_raw_fd()),
                TIMER_TOKEN,
                Interest::READABLE,
            )
            .map_err(LoadError::Poll)?;
        let nonce = datagram::random_nonce();
        let count = config.flows as u64;
        let mut flows = Vec::new();
        // The plan passed its bound but this machine cannot hold its
        // bitmaps: still a usage error, naming what set the plan's size.
        let too_big = |_| LoadError::InvalidConfig {
            field: match config.stop {
                crate::Stop::Duration(_) => "duration",
                crate::Stop::Messages(_) => "messages",
            },
            reason: format!(
                "too large for this machine: no memory for {planned} datagrams' bitmaps"
            ),
        };
        flows.try_reserve_exact(config.flows).map_err(too_big)?;
        for f in 0..count {
            let share = planned / count + u64::from(f < planned % count);
            let stats = FlowStats::new(share).map_err(too_big)?;
            let mut socket = connect(config.addr).map_err(|source| LoadError::Socket {
                addr: config.addr,
                source,
            })?;
            // `f` is below MAX_FLOWS, far from the timer's token.
            poll.registry()
                .register(&mut socket, Token(f as usize), Interest::READABLE)
                .map_err(LoadError::Poll)?;
            let key = datagram::flow_key(nonce, f);
            flows.push(Flow { socket, key, stats });
        }
        Ok(Run {
            config,
            poll,
            timer,
            flows,
            armed_ns: None,
            send_buf: vec![0; config.size].into_boxed_slice(),
            recv_buf: vec![0; RECV_BUFFER].into_boxed_slice(),
            start: Instant::now(),
            planned,
            next: 0,
            interval_ns: 1e9 / config.rate,
            last_send: None,
            unread: Vec::with_capacity(config.flows),
            is_unread: vec![false; config.flows],
            tally: Tally::default(),
            rtt: crate::report::new_histogram(),
        })
    }

    /// Sends, receives and samples progress until the reply timeout after
    /// the last send has passed.
    fn load(&mut self, on_progress: &mut dyn FnMut(&UdpProgress)) -> io::Result<()> {
        const SECOND_NS: u64 = 1_000_000_000;
        let mut events = Events::with_capacity(1024);
        let mut tick_ns = SECOND_NS;
        let mut last_sample = (0, 0);
        let reply_ns = duration_ns(self.config.reply_timeout);
        loop {
            let now_ns = self.ns_since_start(Instant::now());
            let behind = self.send_due(now_ns);
            if now_ns >= tick_ns {
                let answered = self.answered();
                let sample = UdpProgress {
                    elapsed: Duration::from_nanos(tick_ns),
                    sent: self.tally.sent - last_sample.0,
                    answered: answered - last_sample.1,
                    outstanding: self.tally.sent.saturating_sub(answered),
                    wrong: self.wrong(),
                };
                on_progress(&sample);
                last_sample = (self.tally.sent, answered);
                tick_ns = tick_ns.saturating_add(SECOND_NS);
            }
            // Replies are awaited until reply_timeout after the last send.
            let end_ns = (self.next == self.planned)
                .then(|| self.last_send.map(|t| self.ns_since_start(t)))
                .flatten()
                .map(|t| t.saturating_add(reply_ns));
            if end_ns.is_some_and(|end| now_ns >= end) {
                return Ok(());
            }
            let timeout = if behind || !self.unread.is_empty() {
                Some(Duration::ZERO)
            } else {
                let next_send = (self.next < self.planned).then(|| self.due_ns(self.next));
                let wake = [next_send, end_ns, Some(tick_ns)]
                    .into_iter()
                    .flatten()
                    .min()
                    .unwrap_or(tick_ns);
                let until = Duration::from_nanos(wake.saturating_sub(now_ns));
                // A reply woke the loop before the timer: it is still set.
                if self.armed_ns != Some(wake) {
                    self.timer.arm(until)?;
                    self.armed_ns = Some(wake);
                }
                // The timer wakes the poll; the timeout is only a backstop.
                Some(until.saturating_add(TIMER_BACKSTOP))
            };
            poll_events(&mut self.poll, &mut events, timeout)?;
            for event in &events {
                match event.token() {
                    // Nothing to read: re-arming resets the timerfd, and
                    // each expiry is a new edge for the poll.
                    TIMER_TOKEN => self.armed_ns = None,
                    Token(f) => self.read_flow(f),
                }
            }
            // Flows left with replies last time, then any this batch left.
            let pending = self.unread.len();
            for i in 0..pending {
                let Some(&f) = self.unread.get(i) else { break };
                if let Some(queued) = self.is_unread.get_mut(f) {
                    *queued = false;
                }
                self.read_flow(f);
            }
            self.unread.drain(..pending);
        }
    }

    /// Nanoseconds from the start of the load to `t`.
    fn ns_since_start(&self, t: Instant) -> u64 {
        duration_ns(t.saturating_duration_since(self.start))
    }

    /// When datagram `k` is due, in nanoseconds since the start. The same
    /// rounding decides when it is sent and what its round trip counts
    /// from. The cast saturates; validation keeps it far below that.
    fn due_ns(&self, k: u64) -> u64 {
        (k as f64 * self.interval_ns).ceil() as u64
    }

    /// Sends every datagram due by `now_ns`, at most a batch. Returns true
    /// when more are due already.
    fn send_due(&mut self, now_ns: u64) -> bool {
        for _ in 0..SEND_BATCH {
            if self.next >= self.planned || self.due_ns(self.next) > now_ns {
                return false;
            }
            self.send_next();
        }
        self.next < self.planned && self.due_ns(self.next) <= now_ns
    }

    /// Sends datagram `next` on its flow. Its send time is read just
    /// before the send, for the jitter.
    fn send_next(&mut self) {
        let k = self.next;
        self.next += 1;
        let flow_count = self.flows.len() as u64;
        let due_ns = self.due_ns(k);
        let Some(flow) = self.flows.get_mut((k % flow_count) as usize) else {
            return;
        };
        let seq = flow.stats.number_next();
        let now = Instant::now();
        let send_ns = duration_ns(now.saturating_duration_since(self.start));
        let lag = send_ns.saturating_sub(due_ns);
        self.tally.send_lag_max_ns = self.tally.send_lag_max_ns.max(lag);
        datagram::encode(&mut self.send_buf, flow.key, seq, send_ns);
        self.last_send = Some(now);
        let mut refused_once = false;
        loop {
            match flow.socket.send(&self.send_buf) {
                Ok(_) => {
                    self.tally.sent += 1;
                    return;
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                // The kernel had no room: the local host, not the path,
                // failed, so the datagram stays out of the loss.
                Err(err) if is_no_room(&err) => {
                    self.tally.not_sent += 1;
                    return;
                }
                // An earlier ICMP port unreachable, reported now instead
                // of sending: count it, and send this datagram anyway.
                Err(err) if err.kind() == io::ErrorKind::ConnectionRefused && !refused_once => {
                    self.tally.refused += 1;
                    refused_once = true;
                }
                // Any other failure is the path's: sent, and lost.
                Err(err) => {
                    if err.kind() == io::ErrorKind::ConnectionRefused {
                        self.tally.refused += 1;
                    } else {
                        self.tally.send_errors += 1;
                    }
                    self.tally.sent += 1;
                    return;
                }
            }
        }
    }

    /// Reads up to a batch of replies from flow `f`, queueing the flow to
    /// be read again when the batch ran out before the socket did.
    fn read_flow(&mut self, f: usize) {
        for _ in 0..READ_BATCH {
            let Some(flow) = self.flows.get_mut(f) else {
                return;
            };
            match flow.socket.recv(&mut self.recv_buf) {
                Ok(n) => {
                    let recv_ns = self.ns_since_start(Instant::now());
                    self.tally.received += 1;
                    self.reply(f, n, recv_ns);
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) if err.kind() == io::ErrorKind::ConnectionRefused => {
                    self.tally.refused += 1;
                }
                // Reported once per ICMP error; the replies queued behind
                // it are still read.
                Err(_) => self.tally.receive_errors += 1,
            }
        }
        if let Some(queued) = self.is_unread.get_mut(f) {
            if !*queued {
                *queued = true;
                self.unread.push(f);
            }
        }
    }

    /// Checks and accounts the `n`-byte reply just read on flow `f`.
    fn reply(&mut self, f: usize, n: usize, recv_ns: u64) {
        let flow_count = self.flows.len() as u64;
        let Some(flow) = self.flows.get_mut(f) else {
            return;
        };
        let Some(data) = self.recv_buf.get(..n) else {
            return;
        };
        let (seq, send_ns) = match datagram::check(data, flow.key, self.config.size) {
            Verdict::Intact { seq, send_ns } => (seq, send_ns),
            Verdict::Truncated { seq, send_ns } => {
                self.tally.truncated += 1;
                (seq, send_ns)
            }
            Verdict::Corrupt { seq, send_ns } => {
                self.tally.corrupt += 1;
                (seq, send_ns)
            }
            Verdict::Foreign => {
                self.tally.corrupt += 1;
                return;
            }
        };
        // A reply whose header verifies proves the round trip, even with a
        // cut or damaged payload: it answers its datagram.
        match flow.stats.arrive(seq, send_ns, recv_ns) {
            Arrival::First => {
                let k = seq.saturating_mul(flow_count).saturating_add(f as u64);
                let due_ns = (k as f64 * self.interval_ns).ceil() as u64;
                let us = recv_ns.saturating_sub(due_ns) / 1_000;
                self.rtt.saturating_record(us);
            }
            Arrival::Duplicate => {}
            // The tag says this run sent it, yet the flow never numbered it.
            Arrival::Unsent => self.tally.corrupt += 1,
        }
    }

    /// Datagrams answered so far, over every flow.
    fn answered(&self) -> u64 {
        self.flows.iter().map(|f| f.stats.answered()).sum()
    }

    /// Duplicates and wrong replies so far.
    fn wrong(&self) -> u64 {
        let duplicates: u64 = self.flows.iter().map(|f| f.stats.duplicates()).sum();
        duplicates + self.tally.truncated + self.tally.corrupt
    }

    /// The final report, once the reply window has closed at `end`.
    fn report(
        &self,
        end: Instant,
        cpu_before: (Duration, Duration),
        cpu_after: (Duration, Duration),
    ) -> UdpReport {
        let stats = self.flows.iter().map(|f| &f.stats);
        let mut report = UdpReport::new(self.config, self.planned, &self.tally, stats);
        report.started = self.start;
        report.elapsed = end.saturating_duration_since(self.start);
        report.sending = self
            .last_send
            .map_or(Duration::ZERO, |t| t.saturating_duration_since(self.start));
        report.rtt = crate::Latency::from_histogram(&self.rtt);
        report.local_drops = self.local_drops();
        report.cpu_user = cpu_after.0.saturating_sub(cpu_before.0);
        report.cpu_sys = cpu_after.1.saturating_sub(cpu_before.1);
        report
    }
}

impl Run<'_> {
    /// Replies the kernel dropped at the flows' own sockets, full because
    /// echo-load fell behind; `None` where `/proc` cannot tell.
    fn local_drops(&self) -> Option<u64> {
        let inodes = self
            .flows
            .iter()
            .map(|f| crate::sys::socket_inode(f.socket.as_raw_fd()))
            .collect::<io::Result<_>>();
        let drops = inodes.and_then(|inodes| crate::sys::udp_drops(&inodes));
        drops
            .inspect_err(|err| log::debug!("cannot read the UDP drop counters: {err}"))
            .ok()
    }
}

/// A socket bound to any port of `addr`'s family and connected to `addr`.
fn connect(addr: SocketAddr) -> io::Result<UdpSocket> {
    let local = match addr {
        SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        SocketAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
    };
    let socket = UdpSocket::bind(local)?;
    socket.connect(addr)?;
    // Room for replies while echo-load is held up (a busy machine), so its
    // own receive buffer loses as little as it can; best effort.
    if let Err(err) = crate::sys::set_recv_buffer(socket.as_raw_fd(), FLOW_RECV_BUFFER) {
        log::debug!("cannot enlarge a flow's receive buffer: {err}");
    }
    Ok(socket)
}

/// True for a send the local kernel had no room for: a full socket send
/// buffer (`EAGAIN`) or a full device queue (`ENOBUFS`).
fn is_no_room(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::WouldBlock || err.raw_os_error() == Some(libc::ENOBUFS)
}

/// Nanoseconds in `d`, saturating (u64 holds 584 years).
fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// `poll` that retries on `Interrupted`.
fn poll_events(poll: &mut Poll, events: &mut Events, timeout: Option<Duration>) -> io::Result<()> {
    loop {
        match poll.poll(events, timeout) {
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}
