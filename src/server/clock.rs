//! When the loop reads the clock (docs/design.md "Timers"): after every
//! wake-up while a deadline is pending, except on a busy loop, which skips
//! the reading on most wake-ups.
//!
//! `--idle-timeout` keeps a deadline pending for good (the next sweep), so
//! without the skips every wake-up would read the clock, serve the clock
//! sources and work out a poll timeout: about 150 instructions under
//! callgrind, against 180 for a whole echoed message. The skips keep the
//! steady path within its budget; the deadlines keep their promise (see
//! [`Clock`]). This module owns that policy, not the deadlines: those are
//! [`Server::deadlines`], served by [`Server::on_clock`].

use std::time::{Duration, Instant};

use super::Server;

/// Events the loop may handle without reading the clock, while a deadline
/// is pending but far off: a busy loop reads it about once per this many
/// events (docs/design.md "Timers").
const BLIND_EVENTS: usize = 64;

/// The longest `poll` waits after a wake-up with events while a deadline is
/// pending (a whole number of milliseconds: epoll rounds up to one).
pub(super) const BLIND_POLL: Duration = Duration::from_millis(3);

/// How much sooner than the nearest deadline the loop wakes when it may
/// skip the clock: longer than the skipped wake-ups can last together
/// ([`BLIND_EVENTS`] polls of [`BLIND_POLL`], 192 ms, plus the work of
/// handling [`BLIND_EVENTS`] events), so the clock is read again before the
/// deadline passes.
const BLIND_MARGIN: Duration = Duration::from_millis(250);

/// What the loop knows about the time between its clock readings.
///
/// With a deadline pending, a wake-up that found no events (the poll timed
/// out) reads the clock, and the next poll waits until the nearest deadline:
/// an idle loop sleeps until it. After a wake-up with events, `poll` waits
/// [`BLIND_POLL`] at most. While the nearest deadline is more than
/// [`BLIND_MARGIN`] away, the loop sleeps only until the margin begins, and
/// wake-ups with events then skip the clock until they have handled
/// [`BLIND_EVENTS`] events: together they cannot outlast the margin.
/// Otherwise, and throughout the drain, every wake-up reads it. So a
/// deadline known at the last reading is served at most [`BLIND_POLL`]
/// late; one that appears while the clock is skipped (a signal's lame
/// duck, an accept back-off) at most about the margin late.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Clock {
    /// How long a poll after a wake-up without events may wait, as of the
    /// last reading: until the nearest deadline, or until the margin before
    /// it when the wake-ups after it may skip the clock; `None` without one.
    timeout: Option<Duration>,
    /// Events that may still be handled without reading the clock; zero
    /// once the nearest deadline is within the margin.
    blind: usize,
}

impl Server {
    /// After a turn with a deadline pending, in which the loop handled
    /// `handled` events: reads the clock, or skips it (see [`Clock`]).
    #[inline(always)]
    pub(super) fn after_turn(&mut self, clock: &mut Clock, handled: usize) {
        if handled == 0 || clock.blind <= handled || self.life.is_draining() {
            self.read_clock(clock);
        } else {
            clock.blind -= handled;
        }
    }

    /// Reads the clock, serves every source whose deadline has come, and
    /// says how long the next poll may wait and whether the wake-ups after it
    /// may skip the clock (see [`Clock`]).
    #[inline(never)]
    pub(super) fn read_clock(&mut self, clock: &mut Clock) {
        let now = Instant::now();
        let mut next = self.next_deadline();
        // Nothing is due before the nearest deadline, except the drain's end
        // when the last connection has left, which the lifecycle checks on
        // every turn while draining.
        if next.is_some_and(|at| now >= at) || self.life.is_draining() {
            self.on_clock(now);
            next = self.next_deadline();
        }
        let left = next.map(|at| at.saturating_duration_since(now));
        let skip = left.is_some_and(|left| left > BLIND_MARGIN) && !self.life.is_draining();
        *clock = Clock {
            // Rounded up so the loop never wakes a hair early and spins
            // until the deadline.
            timeout: left.map(|left| {
                let left = if skip {
                    left.saturating_sub(BLIND_MARGIN)
                } else {
                    left
                };
                left + Duration::from_micros(500)
            }),
            blind: if skip { BLIND_EVENTS } else { 0 },
        };
    }

    /// How long `poll` may wait when a connection asked for another turn
    /// (not at all) or the last wake-up found no events (what the clock
    /// reading it made said). Otherwise the loop passes [`BLIND_POLL`] with a
    /// deadline, or no timeout without one.
    #[inline(always)]
    pub(super) fn poll_timeout(&self, clock: &Clock) -> Option<Duration> {
        if !self.next_turn.is_empty() {
            return Some(Duration::ZERO);
        }
        clock.timeout
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_margin_outlasts_the_skipped_wake_ups() {
        const {
            assert!(BLIND_POLL.as_millis() as u64 * 1_000_000 == BLIND_POLL.as_nanos() as u64);
            assert!(BLIND_MARGIN.as_millis() > BLIND_POLL.as_millis() * BLIND_EVENTS as u128);
        }
    }
}
