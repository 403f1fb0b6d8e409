//! One load worker: a thread with its own `mio::Poll`, its share of the
//! connections in a `slab::Slab` (slab key = token), and their pacing.
//!
//! Owns connecting (non-blocking, a bounded number in flight), sending
//! (closed loop, or open loop at a fixed rate), reading and handing the bytes
//! to the [`Verifier`], latency measurement and classification of failures.
//! It does not decide how work is split or report anything itself: `lib.rs`
//! gives it a [`Plan`] and merges its [`Output`] (docs/protocol.md "The load
//! generator").
//!
//! The hot path allocates nothing: one `write` per batch of pipelined
//! messages straight from the shared pattern, reads into one buffer per
//! thread, verification in place.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use mio::event::Event;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use crate::payload::{Ending, Verifier};
use crate::report::{Failure, Meter, Output, classify};
use crate::{LoadError, Plan, Shared};

/// Connects in flight per worker: enough to open thousands of connections
/// quickly, few enough not to overflow the server's accept backlog (a
/// dropped SYN costs a one-second retransmit).
const MAX_CONNECTING: usize = 256;

/// Size of the per-thread read buffer.
const READ_BUFFER: usize = 64 * 1024;

/// A connection's lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Non-blocking connect in progress; fails at the deadline.
    Connecting(Instant),
    /// Established.
    Open,
    /// Marked for removal after the current batch of events.
    Closing,
}

/// One connection and its cursors into the stream it sends.
#[derive(Debug)]
struct Conn {
    stream: TcpStream,
    /// Global connection number.
    id: u64,
    phase: Phase,
    /// Position among this worker's open connections (open-loop schedule).
    slot: u64,
    verifier: Verifier,
    /// Where this connection's stream starts in the pattern.
    base: usize,
    /// Stream bytes written. Invariant: `sent <= queued`.
    sent: u64,
    /// Stream bytes of every message started.
    queued: u64,
    /// Messages started.
    started: u64,
    /// Messages whose echo is fully verified. Invariant: `completed <= started`.
    completed: u64,
    /// Send time of message `m` at `m % pipeline` (closed loop).
    send_times: Box<[Instant]>,
}

impl Conn {
    /// Messages this connection still waits for. Zero once a notice may
    /// have begun: no more echo is accepted after it.
    fn outstanding(&self) -> u64 {
        if self.verifier.has_candidate() {
            0
        } else {
            self.started - self.completed
        }
    }
}

/// The worker's state.
struct Worker<'a> {
    shared: &'a Shared,
    plan: &'a Plan,
    meter: &'a Meter,
    poll: Poll,
    conns: Slab<Conn>,
    /// Reused for every read.
    buf: Vec<u8>,
    /// Keys marked `Closing`, removed after each batch of events.
    closing: Vec<usize>,
    /// Connections in `Phase::Connecting`.
    connecting: usize,
    /// Start of the load; measurements begin at `start + warmup`.
    start: Instant,
    measure_start: Instant,
    /// False once nothing more will be sent.
    sending: bool,
    /// When sending stops in duration mode.
    stop_at: Option<Instant>,
    /// Messages this worker may still start, in count mode.
    budget: Option<u64>,
    /// Sum of every connection's `outstanding()`.
    in_flight: u64,
    /// Open connections whose stream has begun what can only be a notice:
    /// each still waits for its end-of-stream.
    noticed: usize,
    /// Set when a byte was read or written; the loop then moves `last_moved`.
    moved: bool,
    /// When a byte last moved, either way. While anything is awaited (an
    /// echo, or the end-of-stream after a notice), nothing moving for
    /// `connect_timeout` ends the run, and what was awaited counts as a
    /// timeout; however slowly a steady server answers, it is waited for.
    last_moved: Instant,
    /// Slab key of each open connection by slot (open loop).
    slots: Vec<usize>,
    /// Messages scheduled so far (open loop).
    due: u64,
    out: Output,
}

/// Runs one worker: pin, connect its share, wait at the gate, load, report.
///
/// # Errors
///
/// Fails when the thread cannot be pinned or its poll cannot be created or
/// used; per-connection failures are counted in the output instead.
pub(crate) fn run(shared: &Shared, plan: &Plan, meter: &Meter) -> Result<Output, LoadError> {
    let prepared = prepare(shared, plan, meter);
    let start = shared.gate.arrive(prepared.is_ok());
    let mut worker = prepared?;
    match start {
        Some(start) => worker.load(start).map_err(LoadError::Poll)?,
        // Another worker failed; its error is the run's.
        None => worker.close_all(Instant::now()),
    }
    Ok(worker.out)
}

fn prepare<'a>(
    shared: &'a Shared,
    plan: &'a Plan,
    meter: &'a Meter,
) -> Result<Worker<'a>, LoadError> {
    if let Some(cpu) = plan.cpu {
        crate::sys::pin_current_thread(cpu).map_err(|source| LoadError::Pin { cpu, source })?;
    }
    let now = Instant::now();
    let mut worker = Worker {
        shared,
        plan,
        meter,
        poll: Poll::new().map_err(LoadError::Poll)?,
        conns: Slab::with_capacity(plan.connections),
        buf: vec![0; READ_BUFFER],
        closing: Vec::new(),
        connecting: 0,
        start: now,
        measure_start: now,
        sending: false,
        stop_at: None,
        budget: plan.budget,
        in_flight: 0,
        noticed: 0,
        moved: false,
        last_moved: now,
        slots: Vec::new(),
        due: 0,
        out: Output::new(now),
    };
    worker.connect_all().map_err(LoadError::Poll)?;
    Ok(worker)
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

/// Whether a connect has finished: `Ok(true)` connected, `Ok(false)` not yet.
fn connect_result(stream: &TcpStream) -> io::Result<bool> {
    if let Some(err) = stream.take_error()? {
        return Err(err);
    }
    match stream.peer_addr() {
        Ok(_) => Ok(true),
        Err(err)
            if err.kind() == io::ErrorKind::NotConnected
                || err.raw_os_error() == Some(libc::EINPROGRESS) =>
        {
            Ok(false)
        }
        Err(err) => Err(err),
    }
}

impl Worker<'_> {
    /// Opens this worker's connections, at most `MAX_CONNECTING` at a time.
    /// Returns once every attempt has connected or failed.
    fn connect_all(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        // Deadlines in start order, so the front always expires first.
        let mut pending: VecDeque<(usize, u64, Instant)> = VecDeque::new();
        let mut next = 0;
        loop {
            while self.connecting < MAX_CONNECTING && next < self.plan.connections {
                let id = self.plan.first_conn_id + next as u64;
                next += 1;
                if let Some(entry) = self.start_connect(id) {
                    pending.push_back(entry);
                }
            }
            let now = Instant::now();
            while let Some(&(key, id, deadline)) = pending.front() {
                let connecting = self
                    .conns
                    .get(key)
                    .is_some_and(|c| c.id == id && matches!(c.phase, Phase::Connecting(_)));
                if connecting && deadline > now {
                    break;
                }
                pending.pop_front();
                if connecting {
                    self.connect_failed(key, Failure::Timeout, now);
                }
            }
            self.remove_closed();
            if self.connecting == 0 && next >= self.plan.connections {
                return Ok(());
            }
            let timeout = pending
                .front()
                .map(|&(_, _, d)| d.saturating_duration_since(now));
            poll_events(&mut self.poll, &mut events, timeout)?;
            for event in &events {
                self.handle(event);
            }
            self.remove_closed();
            self.publish();
        }
    }

    fn connect_failed(&mut self, key: usize, failure: Failure, now: Instant) {
        self.connecting -= 1;
        self.out.failed += 1;
        self.fail(key, failure, now);
    }

    /// Starts one non-blocking connect; returns its deadline entry.
    fn start_connect(&mut self, id: u64) -> Option<(usize, u64, Instant)> {
        let mut stream = match TcpStream::connect(self.shared.addr) {
            Ok(stream) => stream,
            Err(err) => {
                self.out.errors.count(classify(&err));
                self.out.failed += 1;
                log::debug!("cannot connect to {}: {err}", self.shared.addr);
                return None;
            }
        };
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        let interest = Interest::READABLE | Interest::WRITABLE;
        if let Err(err) = self
            .poll
            .registry()
            .register(&mut stream, Token(key), interest)
        {
            self.out.errors.count(classify(&err));
            self.out.failed += 1;
            return None;
        }
        let deadline = Instant::now() + self.shared.connect_timeout;
        let pipeline = self.shared.pipeline;
        entry.insert(Conn {
            stream,
            id,
            phase: Phase::Connecting(deadline),
            slot: 0,
            verifier: Verifier::new(self.shared.pattern.base_for(id)),
            base: self.shared.pattern.base_for(id),
            sent: 0,
            queued: 0,
            started: 0,
            completed: 0,
            send_times: vec![deadline; pipeline].into_boxed_slice(),
        });
        self.connecting += 1;
        Some((key, id, deadline))
    }

    /// Drives the load from `start` until it stops and the echoes are in.
    fn load(&mut self, start: Instant) -> io::Result<()> {
        self.start = start;
        self.measure_start = start + self.shared.warmup;
        self.stop_at = self.shared.duration.map(|d| self.measure_start + d);
        self.out.end = self.measure_start;
        self.sending = true;
        self.last_moved = start;
        self.moved = false;
        self.slots = self.conns.iter().map(|(key, _)| key).collect();
        for (slot, &key) in self.slots.iter().enumerate() {
            if let Some(conn) = self.conns.get_mut(key) {
                conn.slot = slot as u64;
            }
        }
        if self.plan.rate.is_none() {
            for i in 0..self.slots.len() {
                self.top_up(self.slots[i], start);
            }
        }
        let mut events = Events::with_capacity(1024);
        loop {
            let now = Instant::now();
            self.tick(now);
            // After the tick, so that what it just sent counts as movement.
            if std::mem::take(&mut self.moved) {
                self.last_moved = now;
            }
            if self.is_finished(now) {
                if self.is_waiting() {
                    // Stalled: sending ends here, as at a duration's end,
                    // so the measured window runs to this moment.
                    self.stop_sending(now);
                }
                break;
            }
            let timeout = self.timeout(now);
            poll_events(&mut self.poll, &mut events, timeout)?;
            for event in &events {
                self.handle(event);
            }
            self.remove_closed();
            self.publish();
        }
        self.close_all(Instant::now());
        Ok(())
    }

    /// Reacts to the clock: stops sending at the end, paces open-loop sends.
    fn tick(&mut self, now: Instant) {
        if self.sending && self.stop_at.is_some_and(|stop| now >= stop) {
            self.stop_sending(now);
        }
        if !self.sending {
            return;
        }
        let Some(rate) = self.plan.rate else { return };
        let n = self.slots.len() as u64;
        // The cast saturates; the add must too.
        let elapsed = now.saturating_duration_since(self.start).as_secs_f64();
        let mut due = ((elapsed * rate) as u64).saturating_add(1);
        if let Some(limit) = self.plan.budget {
            due = due.min(limit);
        }
        if n == 0 || due <= self.due {
            return;
        }
        // Only the slots that just got a new message due need a look.
        let first = self.due;
        let count = (due - first).min(n);
        self.due = due;
        for i in first..first + count {
            self.top_up(self.slots[(i % n) as usize], now);
        }
    }

    fn stop_sending(&mut self, now: Instant) {
        if self.sending {
            self.sending = false;
            self.out.end = self.out.end.max(now.min(self.stop_at.unwrap_or(now)));
        }
    }

    /// True while an echo, or the end-of-stream after a notice, is awaited.
    fn is_waiting(&self) -> bool {
        self.in_flight > 0 || self.noticed > 0
    }

    /// When the run ends if nothing moves before (docs/protocol.md "The
    /// load generator": it fails only when no byte moves for
    /// `--connect-timeout`).
    fn idle_deadline(&self) -> Instant {
        self.last_moved + self.shared.connect_timeout
    }

    /// True once every connection has gone, once nothing more is sent or
    /// awaited, or once nothing has moved for a whole timeout while
    /// something is awaited (close_all then counts what is left as
    /// timeouts instead of waiting forever).
    fn is_finished(&self, now: Instant) -> bool {
        if self.conns.is_empty() {
            return true;
        }
        if self.is_waiting() {
            return now >= self.idle_deadline();
        }
        !self.sending
    }

    /// Poll timeout: until the next scheduled send or deadline.
    fn timeout(&self, now: Instant) -> Option<Duration> {
        let mut next = if self.sending { self.stop_at } else { None };
        // Once the whole budget is scheduled there is no next send time:
        // waking for one would spin until the pipeline lets the last go.
        let all_due = self.plan.budget.is_some_and(|limit| self.due >= limit);
        if let (true, false, Some(rate)) = (self.sending, all_due, self.plan.rate) {
            if let Some(at) = self.scheduled(self.due, rate) {
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        }
        if self.is_waiting() {
            let idle = self.idle_deadline();
            next = Some(next.map_or(idle, |n| n.min(idle)));
        }
        next.map(|t| t.saturating_duration_since(now))
    }

    /// When message `index` of this worker's open-loop schedule is due;
    /// `None` past what an `Instant` can hold (never, in practice: the
    /// configuration bounds the rate's interval).
    fn scheduled(&self, index: u64, rate: f64) -> Option<Instant> {
        let offset = Duration::try_from_secs_f64(index as f64 / rate).ok()?;
        self.start.checked_add(offset)
    }

    /// Dispatches one event. Unknown keys are ignored: the connection was
    /// removed earlier, so the event is stale.
    fn handle(&mut self, event: &Event) {
        let key = event.token().0;
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        match conn.phase {
            Phase::Closing => {}
            Phase::Connecting(_) => {
                match connect_result(&conn.stream) {
                    Ok(false) => {}
                    Ok(true) => {
                        self.connecting -= 1;
                        conn.phase = Phase::Open;
                        // Small pipelined messages must not wait for Nagle.
                        let _ = conn.stream.set_nodelay(true);
                        self.out.opened += 1;
                    }
                    Err(err) => {
                        log::debug!("cannot connect to {}: {err}", self.shared.addr);
                        self.connect_failed(key, classify(&err), Instant::now());
                    }
                }
            }
            Phase::Open => {
                if event.is_error() {
                    if let Ok(Some(err)) | Err(err) = conn.stream.take_error() {
                        self.fail(key, classify(&err), Instant::now());
                        return;
                    }
                }
                if event.is_readable() || event.is_read_closed() {
                    self.read_ready(key, event.is_read_closed());
                }
                if event.is_writable() {
                    self.write_pending(key);
                }
            }
        }
    }

    /// Reads until the socket is empty. A short read means it is empty (one
    /// `read` saved per event), except when the event also reported the
    /// peer's end-of-stream, which must then be read to be seen.
    fn read_ready(&mut self, key: usize, read_closed: bool) {
        loop {
            let Some(conn) = self.conns.get_mut(key) else {
                return;
            };
            if conn.phase != Phase::Open {
                return;
            }
            match conn.stream.read(&mut self.buf) {
                Ok(0) => return self.end_of_stream(key, Instant::now()),
                Ok(n) => {
                    let now = Instant::now();
                    if !self.received(key, n, now) {
                        return;
                    }
                    self.top_up(key, now);
                    if n < self.buf.len() && !read_closed {
                        return;
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return self.fail(key, classify(&err), Instant::now()),
            }
        }
    }

    /// Verifies `n` bytes just read and records completed messages.
    /// Returns false when the connection failed.
    fn received(&mut self, key: usize, n: usize, now: Instant) -> bool {
        let Some(conn) = self.conns.get_mut(key) else {
            return false;
        };
        self.moved = true;
        let shared = self.shared;
        let before = conn.outstanding();
        let had_candidate = conn.verifier.has_candidate();
        let fed = conn
            .verifier
            .feed(&shared.pattern, &shared.notice, conn.sent, &self.buf[..n]);
        let len = shared.pattern.message_len() as u64;
        let done = conn.verifier.verified() / len;
        for m in conn.completed..done {
            let sent_at = match self.plan.rate {
                Some(rate) => {
                    let index = m * self.slots.len() as u64 + conn.slot;
                    let offset = Duration::try_from_secs_f64(index as f64 / rate).ok();
                    offset
                        .and_then(|d| self.start.checked_add(d))
                        .unwrap_or(now)
                }
                None => conn.send_times[(m % conn.send_times.len() as u64) as usize],
            };
            self.out.record(sent_at, now, self.measure_start, len);
        }
        conn.completed = done;
        if conn.verifier.is_notice_complete(&shared.notice) {
            self.out.drain.first_notice.get_or_insert(now);
            self.out.drain.last_notice = Some(now);
        }
        self.in_flight = self.in_flight - before + conn.outstanding();
        if conn.verifier.has_candidate() && !had_candidate {
            self.noticed += 1;
        }
        if fed.is_err() {
            log::debug!("echo mismatch on connection {}", conn.id);
            self.fail(key, Failure::Mismatch, now);
            return false;
        }
        true
    }

    /// The peer ended the stream: a drain when it ended with the notice.
    fn end_of_stream(&mut self, key: usize, now: Instant) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        match conn.verifier.ending(&self.shared.notice) {
            Ending::Notice => {
                // docs/protocol.md "Draining" 3: bytes sent after the drain
                // began may be discarded, so their missing echo is no error.
                self.out.drain.notices += 1;
                self.out.drain.unanswered += conn.started - conn.completed;
                self.mark_closing(key, now);
            }
            Ending::Cut => {
                self.out.drain.cut_without_notice += 1;
                self.fail(key, Failure::UnexpectedEof, now);
            }
            Ending::Mismatch => self.fail(key, Failure::Mismatch, now),
        }
    }

    /// Starts as many messages as the pipeline, the schedule and the budget
    /// allow, and writes them.
    fn top_up(&mut self, key: usize, now: Instant) {
        if !self.sending {
            return;
        }
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if conn.phase != Phase::Open || conn.verifier.has_candidate() {
            return;
        }
        let mut want = self.shared.pipeline as u64 - (conn.started - conn.completed);
        if self.plan.rate.is_some() {
            let n = self.slots.len() as u64;
            let due = self.due / n + u64::from(conn.slot < self.due % n);
            want = want.min(due.saturating_sub(conn.started));
        }
        if let Some(budget) = self.budget {
            want = want.min(budget);
        }
        if want == 0 {
            return;
        }
        for m in conn.started..conn.started + want {
            conn.send_times[(m % conn.send_times.len() as u64) as usize] = now;
        }
        conn.started += want;
        // Saturating: a message may be as long as the user asks, and the
        // stream is generated, never held, so only the count can overflow.
        let bytes = want.saturating_mul(self.shared.pattern.message_len() as u64);
        conn.queued = conn.queued.saturating_add(bytes);
        self.in_flight += want;
        if let Some(budget) = self.budget.as_mut() {
            *budget -= want;
            if *budget == 0 {
                self.stop_sending(now);
            }
        }
        self.write_pending(key);
    }

    /// Writes queued bytes until done or the socket is full. A short write
    /// means the send buffer is full, so the next `write` would only return
    /// `WouldBlock`: wait for the writable event instead.
    fn write_pending(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        while conn.phase == Phase::Open && conn.sent < conn.queued {
            let chunk = self
                .shared
                .pattern
                .slice(conn.base, conn.sent, conn.queued - conn.sent);
            match conn.stream.write(chunk) {
                Ok(0) => return self.fail(key, Failure::Other, Instant::now()),
                Ok(n) => {
                    conn.sent += n as u64;
                    self.moved = true;
                    if n < chunk.len() {
                        return;
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return self.fail(key, classify(&err), Instant::now()),
            }
        }
    }

    /// Counts `failure` and marks the connection for closing.
    fn fail(&mut self, key: usize, failure: Failure, now: Instant) {
        self.out.errors.count(failure);
        self.mark_closing(key, now);
    }

    /// Marks a connection for removal after the batch, so its key is not
    /// reused while the batch may still name it.
    fn mark_closing(&mut self, key: usize, now: Instant) {
        if let Some(conn) = self.conns.get_mut(key) {
            if conn.phase != Phase::Closing {
                self.in_flight -= conn.outstanding();
                if conn.verifier.has_candidate() {
                    self.noticed -= 1;
                }
                conn.phase = Phase::Closing;
                self.closing.push(key);
                self.out.drain.last_close = Some(now);
            }
        }
    }

    fn remove_closed(&mut self) {
        for key in self.closing.drain(..) {
            if let Some(mut conn) = self.conns.try_remove(key) {
                // Closing the socket would remove it from the poll too; this
                // only keeps the registry tidy.
                let _ = self.poll.registry().deregister(&mut conn.stream);
            }
        }
    }

    /// Ends the run on this worker: connections still waiting for an echo,
    /// for the rest of a notice or for the end-of-stream after it count as
    /// timeouts (a notice without end-of-stream is not a drain).
    fn close_all(&mut self, now: Instant) {
        let keys: Vec<usize> = self.conns.iter().map(|(key, _)| key).collect();
        for key in keys {
            let Some(conn) = self.conns.get(key) else {
                continue;
            };
            if conn.phase == Phase::Closing {
                continue;
            }
            if conn.outstanding() > 0 || conn.verifier.has_candidate() {
                self.fail(key, Failure::Timeout, now);
            } else {
                self.mark_closing(key, now);
            }
        }
        self.remove_closed();
        self.publish();
    }

    /// Publishes the live counters for the progress samples.
    fn publish(&self) {
        self.meter.publish(
            self.out.messages + self.out.warmup_messages,
            self.conns.len(),
            self.out.errors.total(),
        );
    }
}
