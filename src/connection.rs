//! `Connection`: one client socket, its unsent echo bytes and its phase, and
//! the read/write/notice steps that move it (docs/protocol.md "Running" and "Draining" 3).
//!
//! A connection never touches the `Poll`: each step returns a [`Step`] that
//! says which readiness it waits for next, or that it is finished. The server
//! owns registration. Reads go into the loop's one shared buffer and are
//! written straight back from it; only the bytes the kernel would not take
//! yet are copied into the connection's own [`Pending`] buffer, charged to
//! the memory budget ([`crate::memory`]), so an idle or keeping-up
//! connection owns no heap memory at all.

use std::io;
use std::net::Shutdown;

use mio::Interest;

use crate::memory::{Budget, Pending};

/// The socket operations a connection needs; implemented for
/// `mio::net::TcpStream`, and by a scripted fake in the unit tests.
pub trait Stream {
    /// Reads like `Read::read` on a non-blocking socket.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Writes like `Write::write` on a non-blocking socket.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize>;
    /// Shuts down the write side: the peer reads end-of-stream after the queued bytes.
    fn shutdown_write(&mut self) -> io::Result<()>;
    /// Bytes waiting in the socket's receive buffer (`FIONREAD`).
    fn unread_bytes(&self) -> io::Result<usize>;
}

impl Stream for mio::net::TcpStream {
    // Straight to recv/send: mio's and std's wrappers add nothing on Linux
    // but a few dozen instructions per message (docs/benchmarks.md).
    #[inline]
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        crate::sys::recv(self, buf)
    }
    #[inline]
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        crate::sys::send(self, buf)
    }
    fn shutdown_write(&mut self) -> io::Result<()> {
        self.shutdown(Shutdown::Write)
    }
    fn unread_bytes(&self) -> io::Result<usize> {
        crate::sys::unread_bytes(self)
    }
}

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Normal service: everything read is echoed.
    Echoing,
    /// The drain began: `owed` more bytes (those already in the receive
    /// buffer at drain start) are read and echoed, then the notice is queued.
    Draining {
        /// Bytes still to read and echo before the notice. `FIONREAD` reports
        /// an `int`, so 32 bits hold it and keep `Connection` at 48 bytes;
        /// `u32::MAX` when it failed (then read until `WouldBlock`).
        owed: u32,
    },
    /// The notice is queued behind the last echo bytes; waiting for the kernel to take them.
    Noticing,
    /// The notice is sent and the write side is shut; input is read and discarded until EOF.
    Lingering,
    /// Closed as idle ([`Connection::give_up`], docs/protocol.md
    /// "Protections"): pending echo dropped, the write side shut without a
    /// notice; input is read and discarded until EOF, for at most a second
    /// (the server's linger queue closes it then). A drain leaves it so.
    IdleLingering,
}

/// What the loop should do with a connection after a step.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Keep it, waiting for `interest`.
    Keep {
        /// The readiness to wait for next.
        interest: Interest,
        /// Whether the loop must also come back to it without an event.
        resume: Resume,
    },
    /// Remove it: the peer is done, or the socket failed.
    Close(Closed),
}

/// When a kept connection is served again besides its own events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// On its next event only.
    OnEvent,
    /// Next turn: reading stopped at the per-event cap with input possibly
    /// left, and no new edge will report that input.
    NextTurn,
    /// When memory is freed: reading (or queueing the notice) stopped because
    /// the budget is spent or an allocation failed (docs/protocol.md
    /// "Running", memory budget). No event of its own may come: a client
    /// blocked in a write that waits for its echo sends none.
    WhenBudget,
}

/// Why a connection closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// The peer closed its side and everything owed to it was sent.
    PeerDone,
    /// The socket failed (reset, broken pipe, ...).
    Failed(io::ErrorKind),
}

/// The loop's shared state a step needs: the one read buffer, the notice,
/// the limits, the memory budget, and a counter the step adds echoed bytes
/// to. The server owns one for its whole life, so nothing is set up per event.
#[derive(Debug)]
pub struct Ctx {
    /// The loop's one read buffer, shared by every connection.
    pub buf: Box<[u8]>,
    /// The notice bytes (`--shutdown-message`).
    pub notice: Box<[u8]>,
    /// `--max-pending`: unsent bytes a connection may hold before reading pauses.
    pub max_pending: usize,
    /// Reads one connection may do per event, so one fast peer cannot starve the rest.
    pub reads_per_event: usize,
    /// Running total of bytes read and queued for echo.
    pub bytes_echoed: u64,
    /// `--max-pending-total`: what every connection's pending bytes are charged to.
    pub budget: Budget,
}

impl Ctx {
    /// A context with a `buf_len`-byte read buffer, the given notice, the
    /// per-connection bound and the budget of all connections together.
    pub fn new(
        buf_len: usize,
        notice: &[u8],
        max_pending: usize,
        max_pending_total: usize,
        reads_per_event: usize,
    ) -> Self {
        Ctx {
            buf: vec![0; buf_len].into_boxed_slice(),
            notice: notice.into(),
            max_pending,
            reads_per_event,
            bytes_echoed: 0,
            budget: Budget::new(max_pending_total, buf_len.min(max_pending), notice.len()),
        }
    }
}

/// What the event said about the socket.
#[derive(Debug, Clone, Copy, Default)]
pub struct Readiness {
    /// The socket may have input (or an error, or EOF) to read.
    pub readable: bool,
    /// The event reported the peer's end-of-stream (`Event::is_read_closed`):
    /// it is queued behind whatever input is left, and has not been read yet.
    pub eof_reported: bool,
}

impl Readiness {
    /// "Try reading": for a step the loop starts itself (drain start, a
    /// connection left with input at the per-event cap), not an event. It
    /// loses nothing: an end-of-stream an earlier event reported is
    /// remembered by the connection ([`Input::EofReported`]) until it is read.
    pub const READABLE: Readiness = Readiness {
        readable: true,
        eof_reported: false,
    };
}

/// What is known about the peer's side of the stream. Edge-triggered epoll
/// reports an end-of-stream once; a connection that does not read it in the
/// same step (the per-event cap, backpressure, a drain's owed bytes) must
/// remember it, or a later short read looks like "the queue is empty", the
/// FIN is never read and the socket stays in CLOSE-WAIT (issue #8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// No end-of-stream reported yet: a short read means the queue is empty.
    Open,
    /// An event reported the end-of-stream and it has not been read yet: the
    /// connection reads without waiting for an edge, and a short read proves
    /// nothing (docs/protocol.md "Running").
    EofReported,
    /// The end-of-stream has been read: nothing more will arrive.
    Closed,
}

/// One client connection.
#[derive(Debug)]
pub struct Connection<S = mio::net::TcpStream> {
    /// The socket.
    stream: S,
    /// Echo bytes read but not yet written; holds heap memory only while
    /// non-empty, charged to the budget, and never more than `max_pending`
    /// plus one notice.
    pending: Pending,
    /// Where the connection is in its life.
    phase: Phase,
    /// The peer's side: open, end-of-stream reported but unread, or read.
    input: Input,
    /// Reading stopped with input possibly left (backpressure or the per-event
    /// cap), so the next step reads even without a readable edge.
    read_paused: bool,
}

impl<S: Stream> Connection<S> {
    /// A new connection in the `Echoing` phase, registered for reading.
    pub fn new(stream: S) -> Self {
        Connection {
            stream,
            pending: Pending::default(),
            phase: Phase::Echoing,
            input: Input::Open,
            read_paused: false,
        }
    }

    /// The socket, for registration.
    pub fn stream_mut(&mut self) -> &mut S {
        &mut self.stream
    }

    /// Bytes waiting to be written.
    #[cfg(test)]
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Frees the pending bytes and returns their charge to the budget; the
    /// server calls it before dropping the connection.
    pub fn release(&mut self, ctx: &mut Ctx) {
        self.pending.release(&mut ctx.budget);
    }

    /// Handles a readiness event: flush what is pending, read and echo what
    /// the phase allows, move the phase on, and say what to wait for next.
    #[inline]
    pub fn on_ready(&mut self, ctx: &mut Ctx, ready: Readiness) -> Step {
        if let Some(step) = self.echo_fast(ctx, ready) {
            return step;
        }
        self.step_general(ctx, ready)
    }

    /// Every phase and every case the steady path does not cover. Kept out
    /// of line so the steady path stays small enough to inline.
    #[inline(never)]
    fn step_general(&mut self, ctx: &mut Ctx, ready: Readiness) -> Step {
        match self.advance(ctx, ready) {
            Ok(resume) => self.next_step(resume),
            Err(err) => Step::Close(Closed::Failed(err.kind())),
        }
    }

    /// The steady path: nothing pending, one short read, one complete write.
    /// Returns `None` to hand over to the general path ([`Self::advance`]),
    /// which then finds a state consistent with what was done here.
    #[inline(always)]
    fn echo_fast(&mut self, ctx: &mut Ctx, ready: Readiness) -> Option<Step> {
        // Only while no end-of-stream was ever reported: the short-read
        // shortcut below relies on it (docs/protocol.md "Running").
        if !(ready.readable && !ready.eof_reported && self.phase == Phase::Echoing)
            || self.input != Input::Open
            || !self.pending.is_empty()
        {
            return None;
        }
        // docs/protocol.md "Running", memory budget: the read buffer's size,
        // cut to --max-pending and to the budget left (at least a few KiB);
        // longer than the buffer when an allocation failed and nowhere is
        // left for a remainder: then the general path decides.
        let want = ctx.budget.fast_read_or_max();
        let buf = ctx.buf.get_mut(..want)?;
        let n = match self.stream.read(buf) {
            Ok(0) => {
                // The peer closed its side and nothing is pending: done.
                self.input = Input::Closed;
                return Some(Step::Close(Closed::PeerDone));
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Some(Step::Keep {
                    interest: Interest::READABLE,
                    resume: Resume::OnEvent,
                });
            }
            // Interrupted: the general path reads again.
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return None,
            Err(e) => return Some(Step::Close(Closed::Failed(e.kind()))),
        };
        ctx.bytes_echoed += n as u64;
        if let Err(err) = self.send(&mut ctx.budget, &ctx.buf[..n]) {
            return Some(Step::Close(Closed::Failed(err.kind())));
        }
        if n < want {
            // docs/protocol.md "Running": a short read means the receive buffer is empty.
            let interest = if self.pending.is_empty() {
                Interest::READABLE
            } else {
                Interest::READABLE | Interest::WRITABLE
            };
            return Some(Step::Keep {
                interest,
                resume: Resume::OnEvent,
            });
        }
        // A full read: more may be waiting; the general path reads on.
        None
    }

    /// Starts this connection's drain (docs/protocol.md "Draining" 3): the bytes in the
    /// receive buffer right now are owed an echo, then the notice follows.
    /// A connection already closed as idle gets no notice: its write side is
    /// shut and it only waits to be closed.
    pub fn begin_drain(&mut self, ctx: &mut Ctx) -> Step {
        if self.phase == Phase::IdleLingering {
            return self.next_step(Resume::OnEvent);
        }
        let owed = if self.input == Input::Closed {
            0
        } else {
            // If FIONREAD fails, read until WouldBlock instead: still bounded
            // by what is queued, so the notice is not delayed by later input.
            self.stream
                .unread_bytes()
                .map_or(u32::MAX, |n| u32::try_from(n).unwrap_or(u32::MAX))
        };
        self.phase = Phase::Draining { owed };
        self.on_ready(ctx, Readiness::READABLE)
    }

    /// True when the connection is in normal service (echoing), the only
    /// phase the idle timeout applies to.
    #[inline]
    pub fn is_echoing(&self) -> bool {
        self.phase == Phase::Echoing
    }

    /// True once [`Connection::give_up`] closed it as idle.
    #[inline]
    pub fn is_idle_closed(&self) -> bool {
        self.phase == Phase::IdleLingering
    }

    /// Closes an idle connection (docs/protocol.md "Protections"): gives up
    /// its pending echo (returning the charge to the budget), shuts down the
    /// write side (FIN after whatever the kernel already holds; no notice,
    /// the service is not going away), and from then on reads and discards
    /// input until EOF. The server closes it after at most a second of
    /// that; reading the input off first makes that close a FIN, not a reset.
    pub fn give_up(&mut self, ctx: &mut Ctx) -> Step {
        self.pending.release(&mut ctx.budget);
        self.phase = Phase::IdleLingering;
        if let Err(err) = self.stream.shutdown_write() {
            return Step::Close(Closed::Failed(err.kind()));
        }
        let resume = if self.input == Input::Closed {
            Resume::OnEvent
        } else {
            match self.discard(ctx) {
                Ok(resume) => resume,
                Err(err) => return Step::Close(Closed::Failed(err.kind())),
            }
        };
        self.next_step(resume)
    }

    /// Reads and drops whatever input is queued (bounded), so that closing
    /// the socket sends FIN rather than RST (the kernel resets a socket closed
    /// with unread input, which can destroy a notice still in flight).
    pub fn discard_unread(&mut self, buf: &mut [u8]) {
        read_off(&mut self.stream, buf, 64);
    }

    fn advance(&mut self, ctx: &mut Ctx, ready: Readiness) -> io::Result<Resume> {
        if ready.eof_reported && self.input == Input::Open {
            self.input = Input::EofReported;
        }
        self.flush(&mut ctx.budget)?;
        let may_read = match self.input {
            Input::Open => ready.readable || self.read_paused,
            // Queued behind the input left, with no edge to come for it.
            Input::EofReported => true,
            Input::Closed => false,
        };
        let mut resume = Resume::OnEvent;
        match self.phase {
            Phase::Echoing | Phase::Draining { .. } if may_read => resume = self.pump(ctx)?,
            Phase::Lingering | Phase::IdleLingering if may_read => {
                resume = self.discard(ctx)?;
            }
            _ => {}
        }
        if let Phase::Draining { owed } = self.phase {
            if owed == 0 || self.input == Input::Closed {
                // The notice is charged to the budget but never refused by it
                // (one small notice per connection at most); only a failed
                // allocation delays it, until memory is freed. Nothing is
                // written before its room is sure, so it is never cut.
                if !self.pending.make_room(&mut ctx.budget, ctx.notice.len()) {
                    return Ok(Resume::WhenBudget);
                }
                // docs/protocol.md "Draining" 3: the echo of what arrived before the drain, then the notice.
                self.send(&mut ctx.budget, &ctx.notice)?;
                if self.pending.is_empty() {
                    // Room reserved for nothing: the kernel took it all.
                    self.pending.release(&mut ctx.budget);
                }
                self.phase = Phase::Noticing;
                resume = Resume::OnEvent;
            }
        }
        if self.phase == Phase::Noticing && self.pending.is_empty() {
            // docs/protocol.md "Draining" 3: notice, then FIN; from then on read and discard.
            self.stream.shutdown_write()?;
            self.phase = Phase::Lingering;
            if self.input != Input::Closed {
                resume = self.discard(ctx)?;
            }
        }
        Ok(resume)
    }

    /// Reads and echoes until the socket is empty, the pending bound is hit,
    /// the budget is spent, the drain's owed bytes are done, or the
    /// per-event cap is reached; says when to come back without an event.
    #[inline]
    fn pump(&mut self, ctx: &mut Ctx) -> io::Result<Resume> {
        self.read_paused = false;
        for _ in 0..ctx.reads_per_event {
            let len = self.pending.len();
            let room = ctx.max_pending.saturating_sub(len);
            let owed = match self.phase {
                Phase::Draining { owed } => owed as usize,
                _ => usize::MAX,
            };
            if room == 0 {
                // docs/protocol.md "Running": backpressure; TCP flow control slows the peer.
                // Its own writable event resumes it.
                self.read_paused = true;
                return Ok(Resume::OnEvent);
            }
            if owed == 0 {
                return Ok(Resume::OnEvent);
            }
            // docs/protocol.md "Running", memory budget: with nothing pending,
            // what the budget allows (at least a few KiB); with bytes pending
            // (all that is read joins them), their buffer's slack plus the
            // budget left, reserved before reading so a failed allocation
            // loses nothing.
            let allowed = if len == 0 {
                ctx.budget.fast_read()
            } else {
                self.pending.slack() + ctx.budget.free()
            };
            let want = ctx.buf.len().min(room).min(owed).min(allowed);
            if want == 0 || (len > 0 && !self.pending.make_room(&mut ctx.budget, want)) {
                self.read_paused = true;
                return Ok(Resume::WhenBudget);
            }
            let n = match self.stream.read(&mut ctx.buf[..want]) {
                Ok(0) => {
                    self.input = Input::Closed;
                    return Ok(Resume::OnEvent);
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if let Phase::Draining { owed } = &mut self.phase {
                        // Fewer bytes than FIONREAD said: nothing more is owed.
                        *owed = 0;
                    }
                    return Ok(Resume::OnEvent);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            ctx.bytes_echoed += n as u64;
            let draining = if let Phase::Draining { owed } = &mut self.phase {
                // n <= want <= owed, which came from this u32.
                *owed -= n as u32;
                true
            } else {
                false
            };
            self.send(&mut ctx.budget, &ctx.buf[..n])?;
            // docs/protocol.md "Running": a short read means the receive
            // buffer is now empty, which saves the read that would only return
            // WouldBlock. Not once an end-of-stream was reported: it must
            // still be read. Not while draining either, where `owed` decides.
            if n < want && self.input == Input::Open && !draining {
                return Ok(Resume::OnEvent);
            }
        }
        self.read_paused = true;
        Ok(Resume::NextTurn)
    }

    /// Reads and drops input while lingering; says to come back next turn
    /// when it stopped at the per-event cap.
    fn discard(&mut self, ctx: &mut Ctx) -> io::Result<Resume> {
        self.read_paused = false;
        for _ in 0..ctx.reads_per_event {
            match self.stream.read(&mut ctx.buf) {
                Ok(0) => {
                    self.input = Input::Closed;
                    return Ok(Resume::OnEvent);
                }
                // A short read means "empty" only while no end-of-stream was reported.
                Ok(n) if n < ctx.buf.len() && self.input == Input::Open => {
                    return Ok(Resume::OnEvent);
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Resume::OnEvent),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.read_paused = true;
        Ok(Resume::NextTurn)
    }

    /// Sends `bytes` after whatever is pending: straight from the caller's
    /// buffer when nothing is pending, and only the remainder is copied.
    #[inline(always)]
    fn send(&mut self, budget: &mut Budget, bytes: &[u8]) -> io::Result<()> {
        if !self.pending.is_empty() {
            // The last write hit a full socket buffer: writing now would only
            // return WouldBlock. Keep the order; the writable event flushes.
            return self.keep(budget, bytes);
        }
        let sent = write_some(&mut self.stream, bytes)?;
        if sent < bytes.len() {
            return self.keep(budget, &bytes[sent..]);
        }
        Ok(())
    }

    /// Appends to `pending`. Reads are cut and room is made before reading
    /// (see `pump`), so this fails only if that was skipped; then the
    /// connection ends rather than lose bytes silently or abort.
    #[cold]
    fn keep(&mut self, budget: &mut Budget, bytes: &[u8]) -> io::Result<()> {
        self.pending
            .push(budget, bytes)
            .map_err(|_| io::ErrorKind::OutOfMemory.into())
    }

    /// Writes as much of `pending` as the kernel takes; a buffer written out
    /// in full is freed (an idle connection owns no heap).
    #[inline]
    fn flush(&mut self, budget: &mut Budget) -> io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let sent = write_some(&mut self.stream, self.pending.as_slice())?;
        self.pending.consume(budget, sent);
        Ok(())
    }

    #[inline(always)]
    fn next_step(&mut self, resume: Resume) -> Step {
        let interest = match self.phase {
            Phase::Echoing if self.input == Input::Closed => {
                if self.pending.is_empty() {
                    // docs/protocol.md "Running": a half-closed peer got all its echo; close.
                    return Step::Close(Closed::PeerDone);
                }
                Interest::WRITABLE
            }
            Phase::Lingering | Phase::IdleLingering if self.input == Input::Closed => {
                return Step::Close(Closed::PeerDone);
            }
            Phase::Noticing => Interest::WRITABLE,
            Phase::Lingering | Phase::IdleLingering => Interest::READABLE,
            Phase::Echoing | Phase::Draining { .. } => {
                if self.pending.is_empty() {
                    Interest::READABLE
                } else {
                    Interest::READABLE | Interest::WRITABLE
                }
            }
        };
        Step::Keep { interest, resume }
    }
}

/// Reads and drops what `stream` has queued, at most `max_reads` reads into
/// `buf`, stopping at end-of-stream or any error but `Interrupted`: closing
/// a socket with unread input makes the kernel answer with a reset instead
/// of FIN, which can destroy what the peer has not read yet. The one
/// read-off every close path uses (connections, health connections,
/// connections refused by the per-address limit).
pub(crate) fn read_off<S: Stream>(stream: &mut S, buf: &mut [u8], max_reads: usize) {
    for _ in 0..max_reads {
        match stream.read(buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Writes from `bytes` until the kernel stops taking them; returns how many it took.
///
/// A short write means the socket buffer is full, so it stops there instead
/// of making a second call that would only return WouldBlock.
#[inline(always)]
fn write_some<S: Stream>(stream: &mut S, bytes: &[u8]) -> io::Result<usize> {
    let mut sent = 0;
    while sent < bytes.len() {
        match stream.write(&bytes[sent..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                sent += n;
                if sent < bytes.len() {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A scripted socket: input "arrives" in steps, reads and writes are cut
    /// to scripted sizes (0 = WouldBlock), output is recorded.
    #[derive(Debug, Default)]
    struct Fake {
        input: Vec<u8>,
        /// Bytes of `input` the peer has sent so far.
        arrived: usize,
        /// Bytes of `input` the connection has read.
        read_pos: usize,
        /// The peer closed its side after all of `input`.
        peer_eof: bool,
        read_caps: Vec<usize>,
        write_caps: Vec<usize>,
        calls: usize,
        output: Vec<u8>,
        shut: bool,
    }

    impl Fake {
        fn cap(caps: &[usize], calls: usize) -> usize {
            caps[calls % caps.len()]
        }
    }

    impl Stream for Fake {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.calls += 1;
            let available = self.arrived - self.read_pos;
            if available == 0 {
                return if self.peer_eof && self.arrived == self.input.len() {
                    Ok(0)
                } else {
                    Err(io::ErrorKind::WouldBlock.into())
                };
            }
            let n = available
                .min(buf.len())
                .min(Self::cap(&self.read_caps, self.calls).max(1));
            buf[..n].copy_from_slice(&self.input[self.read_pos..self.read_pos + n]);
            self.read_pos += n;
            Ok(n)
        }
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            assert!(!self.shut, "write after shutdown");
            self.calls += 1;
            let cap = Self::cap(&self.write_caps, self.calls);
            if cap == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = cap.min(buf.len());
            self.output.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn shutdown_write(&mut self) -> io::Result<()> {
            self.shut = true;
            Ok(())
        }
        fn unread_bytes(&self) -> io::Result<usize> {
            Ok(self.arrived - self.read_pos)
        }
    }

    const NOTICE: &[u8] = b"SHUTDOWN";

    fn ctx(buf_len: usize, max_pending: usize) -> Ctx {
        Ctx::new(buf_len, NOTICE, max_pending, usize::MAX, 4)
    }

    fn ready() -> Readiness {
        Readiness::READABLE
    }

    fn scenario()
    -> impl Strategy<Value = (Vec<u8>, Vec<usize>, Vec<usize>, Vec<usize>, usize, usize)> {
        (
            proptest::collection::vec(any::<u8>(), 0..5000),
            proptest::collection::vec(1usize..700, 1..8), // arrival steps
            proptest::collection::vec(0usize..900, 1..8), // read caps
            proptest::collection::vec(0usize..900, 1..8), // write caps (0 = WouldBlock)
            1usize..3000,                                 // max_pending
            16usize..512,                                 // shared buffer size
        )
    }

    /// The memory a budget of `limit` may hand out: the budget, or the small
    /// read a connection with nothing pending may still make, or the spare
    /// lent after a failed allocation, plus one notice.
    fn memory_bound(ctx: &Ctx, limit: usize) -> usize {
        let spare = ctx.buf.len().min(ctx.max_pending).max(NOTICE.len());
        limit.max(crate::memory::SMALL_READ).max(spare) + NOTICE.len()
    }

    /// The budget's invariants for one connection: its capacity is all that
    /// is charged, within its own bound and the budget's.
    #[track_caller]
    fn check_memory(conn: &Connection<Fake>, ctx: &Ctx, limit: usize) {
        let capacity = conn.pending.capacity();
        assert_eq!(
            ctx.budget.charged(),
            capacity,
            "charge differs from capacity"
        );
        let own = ctx.max_pending.max(ctx.buf.len().min(ctx.max_pending)) + NOTICE.len();
        assert!(capacity <= own, "capacity {capacity} over the bound {own}");
        assert!(
            capacity <= memory_bound(ctx, limit),
            "capacity {capacity} over the budget {limit}"
        );
        assert!(conn.pending.len() <= capacity);
    }

    /// Drives `conn` until it closes, letting input arrive step by step and
    /// serving it every round (with allocations failing every `fail_every`th
    /// round, 0 = never); `on_step` may start the drain. Returns why it closed.
    fn drive(
        conn: &mut Connection<Fake>,
        ctx: &mut Ctx,
        limit: usize,
        arrivals: &[usize],
        fail_every: usize,
        mut on_step: impl FnMut(&mut Connection<Fake>, &mut Ctx, usize) -> Option<Step>,
    ) -> Closed {
        for round in 0..100_000 {
            {
                let fake = conn.stream_mut();
                let step = arrivals[round % arrivals.len()];
                fake.arrived = (fake.arrived + step).min(fake.input.len());
                if fake.arrived == fake.input.len() {
                    fake.peer_eof = true;
                }
                // Never a pure WouldBlock script: the writer makes progress eventually.
                if round % 7 == 6 {
                    fake.calls = fake.calls.wrapping_add(1);
                }
            }
            ctx.budget.fail_allocations = fail_every > 0 && round % fail_every == 0;
            let step = match on_step(conn, ctx, round) {
                Some(step) => step,
                None => conn.on_ready(ctx, ready()),
            };
            check_memory(conn, ctx, limit);
            if let Step::Close(why) = step {
                conn.release(ctx);
                assert_eq!(ctx.budget.charged(), 0, "a closed connection left a charge");
                return why;
            }
        }
        panic!("connection never finished");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn echo_is_exact_under_any_chunking(
            (input, arrivals, reads, writes, max_pending, buf_len) in scenario(),
            limit in 1usize..6000,
            fail_every in 0usize..4,
        ) {
            prop_assume!(writes.iter().any(|&w| w > 0));
            let fake = Fake { input: input.clone(), read_caps: reads, write_caps: writes, ..Fake::default() };
            let mut conn = Connection::new(fake);
            let mut ctx = Ctx::new(buf_len, NOTICE, max_pending, limit, 4);
            let why = drive(&mut conn, &mut ctx, limit, &arrivals, fail_every, |_, _, _| None);
            prop_assert_eq!(why, Closed::PeerDone);
            prop_assert!(conn.stream.output == input, "echo differs");
            prop_assert!(!conn.stream.shut, "no notice, no shutdown while running");
        }

        #[test]
        fn drain_echoes_everything_that_had_arrived_then_the_notice(
            (input, arrivals, reads, writes, max_pending, buf_len) in scenario(),
            drain_round in 0usize..40,
            limit in 1usize..6000,
            fail_every in 0usize..4,
        ) {
            prop_assume!(writes.iter().any(|&w| w > 0));
            let fake = Fake { input: input.clone(), read_caps: reads, write_caps: writes, ..Fake::default() };
            let mut conn = Connection::new(fake);
            let mut ctx = Ctx::new(buf_len, NOTICE, max_pending, limit, 4);
            let mut arrived_at_drain = None;
            let why = drive(&mut conn, &mut ctx, limit, &arrivals, fail_every, |conn, ctx, round| {
                if round == drain_round {
                    arrived_at_drain = Some(conn.stream.arrived);
                    Some(conn.begin_drain(ctx))
                } else {
                    None
                }
            });
            prop_assert_eq!(why, Closed::PeerDone);
            let out = &conn.stream.output;
            let arrived = arrived_at_drain.unwrap_or(input.len());
            if arrived_at_drain.is_some() {
                prop_assert!(out.ends_with(NOTICE), "no notice at the end");
                prop_assert!(conn.stream.shut, "no FIN after the notice");
                let echo = &out[..out.len() - NOTICE.len()];
                prop_assert!(echo.len() >= arrived, "echoed {} of {} arrived", echo.len(), arrived);
                prop_assert!(echo == &input[..echo.len()], "echo is not a prefix");
            } else {
                // Closed before the drain round: plain echo.
                prop_assert!(out == &input);
            }
        }
    }

    /// How the edge-triggered proptest ended.
    #[derive(Debug, PartialEq, Eq)]
    enum EdgeEnd {
        Closed(Closed),
        /// No event left to come and the connection still open: a lost end-of-stream.
        Stuck,
    }

    /// Drives `conn` the way the server and edge-triggered epoll do: input
    /// arrives in `steps` chunks up to `eof_at`, one event per arrival; the
    /// rest comes in one last event that also reports the end-of-stream, and
    /// no event ever reports it again. A connection that asks for another turn
    /// (`Resume::NextTurn`) is served with [`Readiness::READABLE`], as the server's rearm
    /// does; one waiting for WRITABLE gets a writable event each turn. Reads
    /// return everything queued up to the buffer's size, as the kernel does,
    /// so a short read really means "empty" while no EOF is queued.
    fn drive_edges(
        conn: &mut Connection<Fake>,
        ctx: &mut Ctx,
        steps: &[usize],
        eof_at: usize,
        drain_round: Option<usize>,
    ) -> EdgeEnd {
        let len = conn.stream.input.len();
        let eof_at = eof_at.min(len);
        let mut interest = Interest::READABLE;
        let mut rearm = false;
        let mut waiting = false;
        let mut eof_sent = false;
        for round in 0..100_000 {
            let mut ready = Readiness::default();
            let mut event = false;
            let fake = &mut conn.stream;
            if fake.arrived < eof_at {
                let step = steps[round % steps.len()];
                fake.arrived = (fake.arrived + step).min(eof_at);
                ready.readable = true;
                event = true;
            } else if !eof_sent {
                fake.arrived = len;
                fake.peer_eof = true;
                eof_sent = true;
                ready = Readiness {
                    readable: true,
                    eof_reported: true,
                };
                event = true;
            }
            if round % 7 == 6 {
                // Never a pure WouldBlock script: the writer makes progress eventually.
                fake.calls = fake.calls.wrapping_add(1);
            }
            let mut steps_now = Vec::new();
            if drain_round == Some(round) {
                steps_now.push(conn.begin_drain(ctx));
            }
            if event || interest.is_writable() {
                steps_now.push(conn.on_ready(ctx, ready));
            }
            if std::mem::take(&mut rearm) {
                steps_now.push(conn.on_ready(ctx, Readiness::READABLE));
            }
            // The server serves connections waiting for memory once some is freed.
            if ctx.budget.take_changed() && ctx.budget.has_room() && std::mem::take(&mut waiting) {
                steps_now.push(conn.on_ready(ctx, Readiness::READABLE));
            }
            if steps_now.is_empty() && eof_sent {
                return EdgeEnd::Stuck;
            }
            for step in steps_now {
                match step {
                    Step::Close(why) => return EdgeEnd::Closed(why),
                    Step::Keep {
                        interest: i,
                        resume,
                    } => {
                        interest = i;
                        rearm |= resume == Resume::NextTurn;
                        waiting |= resume == Resume::WhenBudget;
                    }
                }
            }
        }
        panic!("connection never finished");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        // Issue #8: an end-of-stream reported once, together with data, at a
        // random point, is read on every path (fast path, pump at the cap and
        // its rearm, backpressure, drain, discard) and the connection closes.
        #[test]
        fn an_end_of_stream_reported_once_is_always_read(
            input in proptest::collection::vec(any::<u8>(), 0..6000),
            steps in proptest::collection::vec(1usize..700, 1..8),
            eof_at in 0usize..6000,
            writes in proptest::collection::vec(0usize..900, 1..8),
            max_pending in 1usize..3000,
            buf_len in 16usize..512,
            reads_per_event in 1usize..5,
            drain_round in proptest::option::of(0usize..40),
            limit in 1usize..6000,
        ) {
            prop_assume!(writes.iter().any(|&w| w > 0));
            let fake = Fake {
                input: input.clone(),
                // Like the kernel: a read returns all that is queued, up to the buffer.
                read_caps: vec![usize::MAX],
                write_caps: writes,
                ..Fake::default()
            };
            let mut conn = Connection::new(fake);
            let mut ctx = Ctx::new(buf_len, NOTICE, max_pending, limit, reads_per_event);
            let end = drive_edges(&mut conn, &mut ctx, &steps, eof_at, drain_round);
            prop_assert_eq!(end, EdgeEnd::Closed(Closed::PeerDone), "input={:?}", conn.input);
            let out = &conn.stream.output;
            if conn.stream.shut {
                prop_assert!(out.ends_with(NOTICE), "FIN without the notice");
                let echo = &out[..out.len() - NOTICE.len()];
                prop_assert!(echo == &input[..echo.len()], "echo is not a prefix");
            } else {
                prop_assert!(out == &input, "echo differs");
            }
        }
    }

    #[test]
    fn an_idle_connection_owns_no_heap() {
        let fake = Fake {
            input: b"hello".to_vec(),
            arrived: 5,
            read_caps: vec![100],
            write_caps: vec![2, 0],
            ..Fake::default()
        };
        let mut conn = Connection::new(fake);
        let mut c = ctx(64, 1024);
        let step = conn.on_ready(&mut c, ready());
        assert_eq!(conn.pending_len(), 3);
        // Exactly what is pending: no doubling.
        assert_eq!(c.budget.charged(), 3);
        assert_eq!(
            step,
            Step::Keep {
                interest: Interest::READABLE | Interest::WRITABLE,
                resume: Resume::OnEvent
            }
        );
        conn.stream.write_caps = vec![100];
        let step = conn.on_ready(&mut c, Readiness::default());
        assert_eq!(conn.pending.capacity(), 0);
        assert_eq!(c.budget.charged(), 0);
        assert_eq!(
            step,
            Step::Keep {
                interest: Interest::READABLE,
                resume: Resume::OnEvent
            }
        );
        assert_eq!(conn.stream.output, b"hello");
    }

    #[test]
    fn a_short_read_saves_the_read_that_would_block() {
        let fake = Fake {
            input: b"ping".to_vec(),
            arrived: 4,
            read_caps: vec![1000],
            write_caps: vec![1000],
            ..Fake::default()
        };
        let mut conn = Connection::new(fake);
        let buf = 64;
        conn.on_ready(&mut ctx(buf, 1024), ready());
        // One read (short) and one write: no third call returning WouldBlock.
        assert_eq!(conn.stream.calls, 2);
    }

    #[test]
    fn eof_reported_with_data_is_not_missed() {
        let fake = Fake {
            input: b"bye".to_vec(),
            arrived: 3,
            peer_eof: true,
            read_caps: vec![1000],
            write_caps: vec![1000],
            ..Fake::default()
        };
        let mut conn = Connection::new(fake);
        let buf = 64;
        let step = conn.on_ready(
            &mut ctx(buf, 1024),
            Readiness {
                readable: true,
                eof_reported: true,
            },
        );
        assert_eq!(step, Step::Close(Closed::PeerDone));
        assert_eq!(conn.stream.output, b"bye");
    }

    #[test]
    fn backpressure_stops_reading_at_max_pending() {
        let fake = Fake {
            input: vec![7; 10_000],
            arrived: 10_000,
            // A real socket returns all it has up to the buffer's size.
            read_caps: vec![usize::MAX],
            write_caps: vec![0],
            ..Fake::default()
        };
        let mut conn = Connection::new(fake);
        let buf = 4096;
        let step = conn.on_ready(&mut ctx(buf, 2500), ready());
        assert_eq!(conn.pending_len(), 2500);
        assert_eq!(conn.stream.read_pos, 2500);
        assert!(conn.read_paused, "reading resumes without a new edge");
        assert_eq!(
            step,
            Step::Keep {
                interest: Interest::READABLE | Interest::WRITABLE,
                resume: Resume::OnEvent
            }
        );
    }

    /// A connection whose client never reads: `input` all arrived, writes refused.
    fn never_reader(len: usize) -> Connection<Fake> {
        Connection::new(Fake {
            input: vec![3; len],
            arrived: len,
            read_caps: vec![usize::MAX],
            write_caps: vec![0],
            ..Fake::default()
        })
    }

    #[test]
    fn a_spent_budget_stops_reading_and_asks_to_be_served_when_memory_is_freed() {
        // docs/protocol.md "Running", memory budget: 10,000 bytes for all.
        let mut c = Ctx::new(4096, NOTICE, 8192, 10_000, 4);
        let mut first = never_reader(100_000);
        let step = first.on_ready(&mut c, ready());
        assert_eq!(first.pending_len(), 8192, "its own bound first");
        assert!(matches!(
            step,
            Step::Keep {
                resume: Resume::OnEvent,
                ..
            }
        ));
        let mut second = never_reader(100_000);
        let step = second.on_ready(&mut c, ready());
        // Nothing pending: it may read past the budget's last 1,808 bytes,
        // up to the small read, and no further.
        assert_eq!(second.pending_len(), crate::memory::SMALL_READ);
        assert!(matches!(
            step,
            Step::Keep {
                resume: Resume::WhenBudget,
                ..
            }
        ));
        assert_eq!(c.budget.charged(), 8192 + crate::memory::SMALL_READ);
        assert!(!c.budget.has_room());
        // The first one's client leaves: its memory is freed and the second
        // reads on when served again.
        first.release(&mut c);
        assert!(c.budget.take_changed() && c.budget.has_room());
        let step = second.on_ready(&mut c, Readiness::READABLE);
        assert_eq!(second.pending_len(), 8192);
        assert!(matches!(
            step,
            Step::Keep {
                resume: Resume::OnEvent,
                ..
            }
        ));
        assert_eq!(
            second.pending.capacity(),
            8192,
            "capacity never past the bound"
        );
    }

    #[test]
    fn a_reading_client_is_served_while_never_readers_hold_the_budget() {
        let mut c = Ctx::new(64 * 1024, NOTICE, 256 * 1024, 4096, 16);
        let mut hog = never_reader(1 << 20);
        hog.on_ready(&mut c, ready());
        assert!(!c.budget.has_room());
        let data: Vec<u8> = (0..50_000u32).map(|i| i as u8).collect();
        let mut reader = Connection::new(Fake {
            input: data.clone(),
            arrived: data.len(),
            peer_eof: true,
            read_caps: vec![usize::MAX],
            write_caps: vec![usize::MAX],
            ..Fake::default()
        });
        let mut served = 0;
        loop {
            served += 1;
            assert!(served < 1000, "the reading client was starved");
            if let Step::Close(why) = reader.on_ready(&mut c, Readiness::READABLE) {
                assert_eq!(why, Closed::PeerDone);
                break;
            }
        }
        assert_eq!(reader.stream.output, data);
    }

    #[test]
    fn the_notice_is_queued_even_when_the_budget_is_spent() {
        let mut c = Ctx::new(4096, NOTICE, 8192, 1000, 4);
        // Everything it sent is read (so nothing more is owed), and the
        // budget is spent.
        let mut conn = never_reader(crate::memory::SMALL_READ);
        conn.on_ready(&mut c, ready());
        assert!(!c.budget.has_room());
        let step = conn.begin_drain(&mut c);
        assert_eq!(conn.phase, Phase::Noticing);
        assert!(conn.pending.as_slice().ends_with(NOTICE));
        assert!(matches!(
            step,
            Step::Keep {
                interest: Interest::WRITABLE,
                ..
            }
        ));
    }

    #[test]
    fn a_failed_allocation_delays_the_notice_without_cutting_it() {
        let mut c = Ctx::new(4096, NOTICE, 8192, usize::MAX, 4);
        let mut conn = never_reader(100);
        conn.on_ready(&mut c, ready());
        assert_eq!(conn.pending_len(), 100);
        c.budget.fail_allocations = true;
        let step = conn.begin_drain(&mut c);
        assert!(matches!(
            step,
            Step::Keep {
                resume: Resume::WhenBudget,
                ..
            }
        ));
        assert!(!conn.pending.as_slice().ends_with(NOTICE));
        c.budget.fail_allocations = false;
        conn.stream.write_caps = vec![usize::MAX];
        let step = conn.on_ready(&mut c, Readiness::READABLE);
        assert!(conn.stream.output.ends_with(NOTICE));
        assert!(conn.stream.shut);
        assert!(matches!(
            step,
            Step::Keep {
                interest: Interest::READABLE,
                ..
            }
        ));
    }

    #[test]
    fn an_idle_close_gives_up_pending_echo_and_sends_fin_without_the_notice() {
        // docs/protocol.md "Protections": a never-reader holds pending echo.
        let mut c = Ctx::new(4096, NOTICE, 8192, usize::MAX, 4);
        let mut conn = never_reader(100);
        conn.on_ready(&mut c, ready());
        assert_eq!(conn.pending_len(), 100);
        assert!(conn.is_echoing());
        let step = conn.give_up(&mut c);
        assert_eq!(conn.pending_len(), 0);
        assert_eq!(c.budget.charged(), 0, "the charge goes back to the budget");
        assert!(conn.stream.shut, "FIN");
        assert!(conn.is_idle_closed() && !conn.is_echoing());
        assert_eq!(
            step,
            Step::Keep {
                interest: Interest::READABLE,
                resume: Resume::OnEvent
            }
        );
        // Input that arrives now is read and dropped, never echoed.
        conn.stream.input.extend_from_slice(b"late");
        conn.stream.arrived += 4;
        conn.stream.peer_eof = true;
        let step = conn.on_ready(
            &mut c,
            Readiness {
                readable: true,
                eof_reported: true,
            },
        );
        assert_eq!(step, Step::Close(Closed::PeerDone));
        assert!(conn.stream.output.is_empty(), "nothing was ever written");
    }

    #[test]
    fn a_drain_gives_an_idle_closed_connection_no_notice() {
        let mut c = ctx(64, 1024);
        let mut conn = Connection::new(Fake {
            read_caps: vec![100],
            write_caps: vec![100],
            ..Fake::default()
        });
        conn.give_up(&mut c);
        let step = conn.begin_drain(&mut c);
        assert!(conn.is_idle_closed());
        assert!(conn.stream.output.is_empty());
        assert_eq!(
            step,
            Step::Keep {
                interest: Interest::READABLE,
                resume: Resume::OnEvent
            }
        );
    }

    #[test]
    fn an_idle_close_of_a_half_closed_connection_ends_it_at_once() {
        let mut c = ctx(64, 1024);
        let mut conn = Connection::new(Fake {
            input: vec![1; 10],
            arrived: 10,
            peer_eof: true,
            read_caps: vec![usize::MAX],
            write_caps: vec![0],
            ..Fake::default()
        });
        // Read everything and the EOF; the echo stays pending (never read).
        let step = conn.on_ready(
            &mut c,
            Readiness {
                readable: true,
                eof_reported: true,
            },
        );
        assert!(matches!(step, Step::Keep { .. }), "{step:?}");
        assert_eq!(conn.give_up(&mut c), Step::Close(Closed::PeerDone));
        assert!(conn.stream.shut);
    }
}

#[cfg(test)]
mod size {
    #[test]
    fn a_connection_stays_small() {
        // docs/design.md's memory model quotes 48 bytes. Debug builds are
        // bigger: mio keeps a selector id in each socket under debug_assertions.
        let conn = std::mem::size_of::<super::Connection>();
        let limit = if cfg!(debug_assertions) { 64 } else { 48 };
        assert!(conn <= limit, "Connection is {conn} bytes");
    }
}
