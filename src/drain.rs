//! The server's life as a state machine: `Running -> Draining -> Stopped`
//! (SPEC "Shape" and "Draining" 4-6).
//!
//! This module is pure: it takes `now: Instant` as an argument and never
//! reads the clock, touches a socket or logs. The event loop asks it what to
//! do and does it. That keeps every transition testable with made-up instants.

use std::fmt;
use std::time::{Duration, Instant};

/// How often the countdown is logged while draining.
pub const COUNTDOWN_INTERVAL: Duration = Duration::from_secs(1);

/// What started a drain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainReason {
    /// One of the four drain signals, by name (`"SIGTERM"`).
    Signal(&'static str),
    /// [`crate::ShutdownHandle::drain`] from the embedding program.
    Handle,
}

impl fmt::Display for DrainReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DrainReason::Signal(name) => f.write_str(name),
            DrainReason::Handle => f.write_str("handle"),
        }
    }
}

/// Where the server is in its life.
// An explicit tag: `is_running` is checked every turn of the loop, and a
// niche-encoded tag would cost several compares.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Accepting and echoing.
    Running,
    /// Not accepting; every connection is being sent its echo, then the notice.
    Draining {
        /// What started the drain.
        reason: DrainReason,
        /// When the drain began.
        started: Instant,
        /// When whatever is still open gets closed.
        deadline: Instant,
        /// When the next countdown line is due; always before or at `deadline` + one interval.
        next_tick: Instant,
    },
    /// Finished; the loop returns.
    Stopped {
        /// What started the drain, if one ran.
        reason: Option<DrainReason>,
        /// How the drain ended.
        end: DrainEnd,
    },
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainEnd {
    /// Every connection left before the deadline.
    Emptied,
    /// The deadline passed; the rest were closed.
    Deadline,
    /// A second signal closed everything at once.
    Forced,
}

impl fmt::Display for DrainEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DrainEnd::Emptied => "emptied",
            DrainEnd::Deadline => "deadline",
            DrainEnd::Forced => "forced",
        })
    }
}

/// What the clock asks the loop to do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Nothing.
    Nothing,
    /// Log the countdown: this much time left.
    Countdown(Duration),
    /// The drain is over: close whatever is left (nothing, when it emptied) and stop.
    Stop(DrainEnd),
}

/// The state machine itself.
#[derive(Debug, Clone)]
pub struct Lifecycle {
    /// The current state; changes only through the methods below.
    state: State,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle {
            state: State::Running,
        }
    }
}

impl Lifecycle {
    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// True while the server still accepts connections.
    pub fn is_running(&self) -> bool {
        matches!(self.state, State::Running)
    }

    /// True once the loop should return.
    pub fn is_stopped(&self) -> bool {
        matches!(self.state, State::Stopped { .. })
    }

    /// Starts the drain if the server is running; returns false otherwise.
    pub fn begin_drain(&mut self, reason: DrainReason, now: Instant, timeout: Duration) -> bool {
        if !self.is_running() {
            return false;
        }
        let deadline = now
            .checked_add(timeout)
            .unwrap_or(now + Duration::from_secs(86_400 * 365));
        self.state = State::Draining {
            reason,
            started: now,
            deadline,
            next_tick: now + COUNTDOWN_INTERVAL,
        };
        true
    }

    /// A second signal: stop now. Returns false unless the server was draining.
    pub fn force(&mut self) -> bool {
        match self.state {
            State::Draining { reason, .. } => {
                self.state = State::Stopped {
                    reason: Some(reason),
                    end: DrainEnd::Forced,
                };
                true
            }
            _ => false,
        }
    }

    /// Lets the clock and the connection count move the machine.
    ///
    /// While draining: no connection left stops it (`Emptied`); reaching the
    /// deadline stops it (`Deadline`); passing a tick asks for a countdown line.
    pub fn on_clock(&mut self, now: Instant, open_connections: usize) -> Due {
        let State::Draining {
            reason,
            started,
            deadline,
            next_tick,
        } = self.state
        else {
            return Due::Nothing;
        };
        let end = if open_connections == 0 {
            DrainEnd::Emptied
        } else if now >= deadline {
            DrainEnd::Deadline
        } else {
            if now < next_tick {
                return Due::Nothing;
            }
            // Skip ticks missed by a long pause rather than logging a burst.
            let mut tick = next_tick;
            while tick <= now {
                tick += COUNTDOWN_INTERVAL;
            }
            self.state = State::Draining {
                reason,
                started,
                deadline,
                next_tick: tick,
            };
            return Due::Countdown(deadline - now);
        };
        self.state = State::Stopped {
            reason: Some(reason),
            end,
        };
        Due::Stop(end)
    }

    /// The next instant at which [`Lifecycle::on_clock`] has something to do.
    pub fn next_wakeup(&self) -> Option<Instant> {
        match self.state {
            State::Draining {
                deadline,
                next_tick,
                ..
            } => Some(deadline.min(next_tick)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIGTERM: DrainReason = DrainReason::Signal("SIGTERM");

    fn draining(timeout: Duration) -> (Lifecycle, Instant) {
        let t0 = Instant::now();
        let mut life = Lifecycle::default();
        assert!(life.begin_drain(SIGTERM, t0, timeout));
        (life, t0)
    }

    #[test]
    fn starts_running_and_the_clock_does_nothing() {
        let mut life = Lifecycle::default();
        assert!(life.is_running());
        assert_eq!(life.on_clock(Instant::now(), 0), Due::Nothing);
        assert_eq!(life.next_wakeup(), None);
    }

    #[test]
    fn a_drain_begins_once() {
        let (mut life, t0) = draining(Duration::from_secs(5));
        assert!(!life.is_running());
        assert!(!life.begin_drain(DrainReason::Handle, t0, Duration::ZERO));
        let State::Draining {
            reason, deadline, ..
        } = life.state()
        else {
            panic!("not draining: {:?}", life.state());
        };
        assert_eq!(reason, SIGTERM);
        assert_eq!(deadline, t0 + Duration::from_secs(5));
    }

    #[test]
    fn the_last_connection_leaving_stops_it_early() {
        let (mut life, t0) = draining(Duration::from_secs(5));
        assert_eq!(life.on_clock(t0, 3), Due::Nothing);
        assert_eq!(
            life.on_clock(t0 + Duration::from_millis(10), 0),
            Due::Stop(DrainEnd::Emptied)
        );
        assert!(life.is_stopped());
    }

    #[test]
    fn the_deadline_stops_it_with_connections_left() {
        let (mut life, t0) = draining(Duration::from_millis(500));
        assert_eq!(life.next_wakeup(), Some(t0 + Duration::from_millis(500)));
        assert_eq!(
            life.on_clock(t0 + Duration::from_millis(499), 2),
            Due::Nothing
        );
        assert_eq!(
            life.on_clock(t0 + Duration::from_millis(500), 2),
            Due::Stop(DrainEnd::Deadline)
        );
    }

    #[test]
    fn a_zero_timeout_stops_at_the_first_clock_check() {
        let (mut life, t0) = draining(Duration::ZERO);
        assert_eq!(life.on_clock(t0, 1), Due::Stop(DrainEnd::Deadline));
    }

    #[test]
    fn countdown_ticks_once_a_second_and_skips_missed_ticks() {
        let (mut life, t0) = draining(Duration::from_secs(5));
        assert_eq!(life.next_wakeup(), Some(t0 + Duration::from_secs(1)));
        assert_eq!(
            life.on_clock(t0 + Duration::from_secs(1), 4),
            Due::Countdown(Duration::from_secs(4))
        );
        assert_eq!(
            life.on_clock(t0 + Duration::from_millis(1500), 4),
            Due::Nothing
        );
        assert_eq!(
            life.on_clock(t0 + Duration::from_millis(3500), 4),
            Due::Countdown(Duration::from_millis(1500))
        );
        assert_eq!(life.next_wakeup(), Some(t0 + Duration::from_secs(4)));
    }

    #[test]
    fn force_only_while_draining() {
        let mut life = Lifecycle::default();
        assert!(!life.force());
        let (mut life, _) = draining(Duration::from_secs(5));
        assert!(life.force());
        assert_eq!(
            life.state(),
            State::Stopped {
                reason: Some(SIGTERM),
                end: DrainEnd::Forced
            }
        );
        assert!(!life.force());
    }

    #[test]
    fn huge_timeouts_do_not_overflow() {
        let (life, t0) = draining(Duration::MAX);
        assert!(life.next_wakeup().unwrap() > t0);
    }
}
