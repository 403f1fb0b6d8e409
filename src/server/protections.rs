//! The loop's side of the protections (docs/protocol.md "Protections"): the
//! idle sweep over the connections, the end of an idle-closed connection's
//! one-second linger, and the count of connections the per-address limit
//! closed.
//!
//! The pure parts live elsewhere: `idle.rs` says when a sweep is due and
//! which stamps are idle, `per_ip.rs` keeps the per-address table (owned by
//! the [`crate::accept::Acceptor`]), and [`Connection::give_up`] does one
//! connection's idle close. This module owns none of it; it is the
//! server's methods that put them together, kept out of `server.rs`.
//!
//! [`Connection::give_up`]: crate::connection::Connection::give_up

use std::time::Instant;

use log::{debug, trace};
use mio::Token;

use super::Server;
use crate::connection::{Resume, Step};
use crate::idle::Sweep;

impl Server {
    /// The idle timeout's part of [`Server::on_clock`]: a sweep when one is
    /// due, and the close of idle-closed connections whose linger is over.
    /// Called when a deadline is due; one compare when it is another's.
    #[inline(always)]
    pub(super) fn on_idle_clock(&mut self, now: Instant) {
        if self.idle.next_wakeup().is_some_and(|at| now >= at) {
            self.on_idle_due(now);
        }
    }

    #[cold]
    #[inline(never)]
    fn on_idle_due(&mut self, now: Instant) {
        if let Some(sweep) = self.idle.sweep_due(now) {
            self.sweep_idle(sweep, now);
        }
        self.end_lingers(now);
        // Outside any batch: remove what closed now rather than at the end of
        // the next wake-up, which may be a sweep interval away (a client
        // waiting at --max-connections gets the freed slot at once).
        self.remove_closed();
        if self.ctx.budget.is_changed() {
            // Pending echo given up frees memory that waiting connections need.
            self.on_memory_freed();
        }
    }

    /// Looks at every connection once and closes those in normal service
    /// whose last event is a timeout old (docs/protocol.md "Protections"):
    /// pending echo given up, FIN without a notice, then a linger that reads
    /// and discards input for at most a second. A connection waiting for
    /// memory ([`Resume::WhenBudget`]) is not idle: it is the server that
    /// does not read it, and it is served as soon as memory is freed.
    fn sweep_idle(&mut self, sweep: Sweep, now: Instant) {
        let mut closed = 0u64;
        let scanned = self.slots.len();
        for (key, slot) in self.slots.iter_mut() {
            if slot.closing
                || slot.awaiting_budget
                || !sweep.is_idle(slot.stamp)
                || !slot.conn.is_echoing()
            {
                continue;
            }
            closed += 1;
            debug!(
                "connection idle: token={key} timeout={:?}; write side shut, input discarded for at most 1s",
                self.config.idle_timeout
            );
            let mut close = false;
            match slot.conn.give_up(&mut self.ctx) {
                Step::Keep { interest, resume } => {
                    if interest != slot.registered {
                        let registry = self.poll.registry();
                        match registry.reregister(slot.conn.stream_mut(), Token(key), interest) {
                            Ok(()) => slot.registered = interest,
                            Err(err) => {
                                debug!("connection closed: token={key} reregister failed: {err}");
                                close = true;
                            }
                        }
                    }
                    if resume == Resume::NextTurn {
                        self.next_turn.push(key);
                    }
                    // No room to remember the linger (an allocation failed):
                    // it ends now instead, its input read off first.
                    if !close && !self.idle.linger(key, now) {
                        slot.conn.discard_unread(&mut self.ctx.buf);
                        close = true;
                    }
                }
                Step::Close(why) => {
                    debug!("connection closed: token={key} idle, then {why:?}");
                    close = true;
                }
            }
            if close {
                slot.closing = true;
                self.closing.push(key);
            }
        }
        self.stats.idle_closed += closed;
        trace!(
            "idle sweep: connections={scanned} closed={closed} took={:?}",
            now.elapsed()
        );
    }

    /// Closes the idle-closed connections whose second of reading off input
    /// is over (docs/protocol.md "Protections"). Queued input is read off
    /// first, so the close is a FIN, not a reset. A key that closed meanwhile
    /// (or was reused by a connection not in its idle linger) is skipped.
    fn end_lingers(&mut self, now: Instant) {
        while let Some(key) = self.idle.pop_linger_due(now) {
            let Some(slot) = self.slots.get_mut(key) else {
                continue;
            };
            if slot.closing || !slot.conn.is_idle_closed() {
                continue;
            }
            slot.conn.discard_unread(&mut self.ctx.buf);
            slot.closing = true;
            self.closing.push(key);
            debug!("connection closed: token={key} idle");
        }
    }

    /// Adds the connections the per-address limit closed during an accept
    /// batch to the counters: each was accepted (and closed at once).
    #[inline]
    pub(super) fn count_rejected(&mut self) {
        let rejected = self.acceptor.take_rejected();
        self.stats.rejected_per_ip += rejected;
        self.stats.accepted += rejected;
        if rejected > 0 {
            // The status shows the count (docs/protocol.md "Protections").
            self.notifier.connections_changed();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Slot;

    #[test]
    fn the_idle_stamp_fits_in_the_slot_padding() {
        // docs/protocol.md "Protections": no memory per connection for the
        // idle timeout. 48 bytes before the stamp too (release builds,
        // `cargo test --release`; debug builds carry mio's selector id in
        // each socket).
        let slot = std::mem::size_of::<Slot>();
        let limit = if cfg!(debug_assertions) { 64 } else { 48 };
        assert!(slot <= limit, "Slot is {slot} bytes");
    }
}
