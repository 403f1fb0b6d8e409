//! The server's life as a state machine: `Running -> LameDuck -> Draining ->
//! Stopped` (docs/protocol.md "Shape", "Draining" 4-6 and "Lame duck and
//! health"; the lame duck only when `--drain-delay` is set).
//!
//! It owns the state, the lame duck's end, the drain's deadline and the
//! countdown's cadence, and answers the queries the loop and the health
//! endpoint need (is the server accepting, is it ready, which state number
//! `echod_state` reports). It does not own sockets, listeners, the signal
//! handler or logging: the loop asks it what to do and does it. It is pure:
//! every method takes `now: Instant` and none reads the clock, so every
//! transition is tested with made-up instants.
//!
//! Drain triggers (the four drain signals and
//! [`crate::ShutdownHandle::drain`]) all go through [`Lifecycle::signal`]:
//!
//! | state    | a trigger                          | the clock                                  |
//! |----------|------------------------------------|--------------------------------------------|
//! | Running  | LameDuck (Draining if no delay)    | nothing                                    |
//! | LameDuck | Draining at once                   | Draining once the delay is over            |
//! | Draining | Stopped, forced                    | countdown; Stopped when empty or at the deadline |
//! | Stopped  | ignored                            | nothing                                    |

use std::fmt;
use std::time::{Duration, Instant};

/// How often the countdown is logged while draining.
pub const COUNTDOWN_INTERVAL: Duration = Duration::from_secs(1);

/// Drain signals after the drain proper began until the handler itself
/// exits: "another forces, the next exits" (docs/protocol.md "Draining" 6).
const SIGNALS_FORCE_THEN_EXIT: usize = 2;

/// What started a drain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainReason {
    /// One of the four drain signals, by name (`"SIGTERM"`).
    Signal(&'static str),
    /// [`crate::ShutdownHandle::drain`] from the embedding program.
    Handle,
    /// A new instance took the listening sockets over and serves them
    /// (docs/protocol.md "Operations", take-over).
    HandedOver,
}

impl fmt::Display for DrainReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DrainReason::Signal(name) => f.write_str(name),
            DrainReason::Handle => f.write_str("handle"),
            DrainReason::HandedOver => f.write_str("take-over"),
        }
    }
}

/// Where the server is in its life.
// An explicit tag: the state is checked every turn of the loop, and a
// niche-encoded tag would cost several compares.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Accepting, echoing and ready; no drain trigger yet.
    Running,
    /// Still accepting and echoing, but reporting not ready, until `until`
    /// (`--drain-delay`); then the drain proper begins.
    LameDuck {
        /// The trigger that started the lame duck; the drain keeps it as its reason.
        reason: DrainReason,
        /// When the drain proper begins unless another trigger starts it sooner.
        until: Instant,
    },
    /// Not accepting; every connection is being sent its echo, then the notice.
    Draining {
        /// What started the drain (the lame duck's trigger when there was one).
        reason: DrainReason,
        /// When whatever is still open gets closed.
        deadline: Instant,
        /// When the next countdown line is due; always after the drain began,
        /// at most one interval after the last countdown.
        next_tick: Instant,
    },
    /// Finished; the loop returns. Only ever reached from `Draining`, so there
    /// always is a reason.
    Stopped {
        /// What started the drain.
        reason: DrainReason,
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
    /// A further trigger while draining closed everything at once.
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

/// What a drain trigger did, returned by [`Lifecycle::signal`]; the loop
/// carries out the side effects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signalled {
    /// The lame duck began: keep serving, report not ready, send `STOPPING=1`.
    LameDuck,
    /// The drain proper began: take the backlog, close the listeners, start
    /// every connection's drain (docs/protocol.md "Draining" 1-3).
    Draining,
    /// The drain was forced: close everything now; the loop then stops.
    Forced,
    /// Already stopped; nothing to do.
    Ignored,
}

/// What the clock asks the loop to do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Nothing.
    Nothing,
    /// The lame duck is over and the drain proper has begun: do what
    /// [`Signalled::Draining`] asks, then ask [`Lifecycle::on_clock`] again
    /// in the same turn (the drain may already be empty or past a zero deadline).
    BeginDrain,
    /// Log the countdown: this much time left.
    Countdown(Duration),
    /// The drain is over: close whatever is left (nothing, when it emptied) and stop.
    Stop(DrainEnd),
}

/// What `/readyz`, `echod_state` and `STATUS=` report; the health
/// listener's `/readyz` and `/metrics` read it from [`Lifecycle::serve_state`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ServeState {
    /// Serving and ready: `/readyz` 200, `echod_state` 0.
    #[default]
    Serving,
    /// Serving but not ready: `/readyz` 503, `echod_state` 1.
    LameDuck,
    /// Draining or stopped: `/readyz` 503, `echod_state` 2.
    Draining,
}

impl ServeState {
    /// The `echod_state` gauge: 0 serving, 1 lame duck, 2 draining.
    pub fn as_metric(self) -> u8 {
        match self {
            ServeState::Serving => 0,
            ServeState::LameDuck => 1,
            ServeState::Draining => 2,
        }
    }

    /// True when `/readyz` answers 200: from the first drain trigger on it
    /// answers 503, lame duck included.
    pub fn is_ready(self) -> bool {
        self == ServeState::Serving
    }
}

/// The state machine itself, with the two durations that shape it.
#[derive(Debug, Clone)]
pub struct Lifecycle {
    /// The current state; changes only through the methods below.
    state: State,
    /// `--drain-delay`: how long the lame duck lasts; zero means none.
    delay: Duration,
    /// `--drain-timeout`: how long the drain proper may last.
    timeout: Duration,
    /// Drain signals (not handle calls) the loop has passed to
    /// [`Lifecycle::signal`] or [`Lifecycle::begin_drain`]: the handler's own
    /// count, as far as the loop has read it.
    signals: usize,
    /// `signals` when the drain proper began; meaningful from `Draining` on.
    signals_at_drain: usize,
}

/// `now + d`, or as far ahead as the clock can hold (a year, else `now`):
/// a huge timeout must not panic on overflow.
fn later(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .or_else(|| now.checked_add(Duration::from_secs(86_400 * 365)))
        .unwrap_or(now)
}

impl Lifecycle {
    /// A running server whose first drain trigger starts a lame duck of
    /// `delay` (none when zero), and whose drain lasts at most `timeout`.
    pub fn new(delay: Duration, timeout: Duration) -> Self {
        Lifecycle {
            state: State::Running,
            delay,
            timeout,
            signals: 0,
            signals_at_drain: 0,
        }
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// True before any drain trigger (not in the lame duck).
    #[cfg(test)]
    pub fn is_running(&self) -> bool {
        matches!(self.state, State::Running)
    }

    /// True while the listeners are open and connections are admitted:
    /// running, or in the lame duck.
    pub fn is_accepting(&self) -> bool {
        matches!(self.state, State::Running | State::LameDuck { .. })
    }

    /// True during the drain proper.
    pub fn is_draining(&self) -> bool {
        matches!(self.state, State::Draining { .. })
    }

    /// True once the loop should return.
    pub fn is_stopped(&self) -> bool {
        matches!(self.state, State::Stopped { .. })
    }

    /// What the health endpoint and the metrics report.
    pub fn serve_state(&self) -> ServeState {
        match self.state {
            State::Running => ServeState::Serving,
            State::LameDuck { .. } => ServeState::LameDuck,
            State::Draining { .. } | State::Stopped { .. } => ServeState::Draining,
        }
    }

    /// A drain trigger (a drain signal, or the handle) arrived at `now`.
    ///
    /// Running: starts the lame duck, or the drain when there is no delay.
    /// Lame duck: starts the drain at once, keeping the lame duck's reason.
    /// Draining: forces the stop. Stopped: ignored. Call it once per trigger
    /// counted (the signal watcher's count, which survives merged deliveries).
    pub fn signal(&mut self, reason: DrainReason, now: Instant) -> Signalled {
        if self.is_stopped() {
            return Signalled::Ignored;
        }
        if matches!(reason, DrainReason::Signal(_)) {
            self.signals = self.signals.saturating_add(1);
        }
        match self.state {
            State::Running if !self.delay.is_zero() => {
                self.state = State::LameDuck {
                    reason,
                    until: later(now, self.delay),
                };
                Signalled::LameDuck
            }
            State::Running => {
                self.start_draining(reason, now);
                Signalled::Draining
            }
            State::LameDuck { reason, .. } => {
                self.start_draining(reason, now);
                Signalled::Draining
            }
            State::Draining { reason, .. } => {
                self.state = State::Stopped {
                    reason,
                    end: DrainEnd::Forced,
                };
                Signalled::Forced
            }
            State::Stopped { .. } => Signalled::Ignored,
        }
    }

    fn start_draining(&mut self, reason: DrainReason, now: Instant) {
        self.signals_at_drain = self.signals;
        self.state = State::Draining {
            reason,
            deadline: later(now, self.timeout),
            next_tick: later(now, COUNTDOWN_INTERVAL),
        };
    }

    /// Lets the clock and the connection count move the machine.
    ///
    /// Lame duck: at its end the drain begins (`BeginDrain`), its deadline
    /// counted from `now`, when the loop actually starts it. Draining: no
    /// connection left stops it (`Emptied`); reaching the deadline stops it
    /// (`Deadline`); passing a tick asks for a countdown line.
    pub fn on_clock(&mut self, now: Instant, open_connections: usize) -> Due {
        match self.state {
            State::LameDuck { reason, until } if now >= until => {
                self.start_draining(reason, now);
                Due::BeginDrain
            }
            State::Draining {
                reason,
                deadline,
                next_tick,
            } => self.on_clock_draining(now, open_connections, reason, deadline, next_tick),
            _ => Due::Nothing,
        }
    }

    fn on_clock_draining(
        &mut self,
        now: Instant,
        open_connections: usize,
        reason: DrainReason,
        deadline: Instant,
        next_tick: Instant,
    ) -> Due {
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
                let next = later(tick, COUNTDOWN_INTERVAL);
                if next == tick {
                    break;
                }
                tick = next;
            }
            self.state = State::Draining {
                reason,
                deadline,
                next_tick: tick,
            };
            return Due::Countdown(deadline - now);
        };
        self.state = State::Stopped { reason, end };
        Due::Stop(end)
    }

    /// The next instant at which [`Lifecycle::on_clock`] has something to do;
    /// `None` while running and once stopped.
    pub fn next_wakeup(&self) -> Option<Instant> {
        match self.state {
            State::LameDuck { until, .. } => Some(until),
            State::Draining {
                deadline,
                next_tick,
                ..
            } => Some(deadline.min(next_tick)),
            State::Running | State::Stopped { .. } => None,
        }
    }

    /// A new instance took the listening sockets over: the drain proper
    /// begins now, with [`DrainReason::HandedOver`], from `Running` or from
    /// the lame duck (which waits for traffic to move elsewhere, and it just
    /// has). Returns false otherwise (already draining or stopped).
    pub fn hand_over(&mut self, now: Instant) -> bool {
        if !self.is_accepting() {
            return false;
        }
        self.start_draining(DrainReason::HandedOver, now);
        true
    }

    /// How many drain signals the signal handler should have counted when it
    /// exits the process itself, as far as the loop knows now.
    ///
    /// docs/protocol.md "Draining" 6 and "Lame duck and health": once the
    /// drain proper has begun, another signal forces the stop and the next
    /// exits from the handler. So the number is the signals that led into
    /// the drain plus two: 3 without a lame duck, 4 when a second signal
    /// ended the lame duck, 3 when its delay ran out, 2 when the handle
    /// started the drain. Before the drain it is the most the path can still
    /// need (a lame duck may yet take one more). The loop stores it where
    /// the handler reads it after every transition; it only ever goes down.
    pub fn handler_exit_at(&self) -> usize {
        let to_drain = match self.state {
            State::Running => usize::from(!self.delay.is_zero()) + 1,
            State::LameDuck { .. } => self.signals + 1,
            State::Draining { .. } | State::Stopped { .. } => self.signals_at_drain,
        };
        to_drain + SIGNALS_FORCE_THEN_EXIT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIGTERM: DrainReason = DrainReason::Signal("SIGTERM");
    const SIGINT: DrainReason = DrainReason::Signal("SIGINT");
    const SECOND: Duration = Duration::from_secs(1);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A lifecycle without a lame duck, drained at `t0`.
    fn draining(timeout: Duration) -> (Lifecycle, Instant) {
        let t0 = Instant::now();
        let mut life = Lifecycle::new(Duration::ZERO, timeout);
        assert_eq!(life.signal(SIGTERM, t0), Signalled::Draining);
        (life, t0)
    }

    /// A lifecycle with a `delay` lame duck begun at `t0`.
    fn lame_duck(delay: Duration, timeout: Duration) -> (Lifecycle, Instant) {
        let t0 = Instant::now();
        let mut life = Lifecycle::new(delay, timeout);
        assert_eq!(life.signal(SIGTERM, t0), Signalled::LameDuck);
        (life, t0)
    }

    #[test]
    fn starts_running_and_the_clock_does_nothing() {
        let mut life = Lifecycle::new(SECOND, SECOND);
        assert!(life.is_running() && life.is_accepting());
        assert_eq!(life.serve_state(), ServeState::Serving);
        assert!(life.serve_state().is_ready());
        assert_eq!(life.serve_state().as_metric(), 0);
        assert_eq!(life.on_clock(Instant::now(), 0), Due::Nothing);
        assert_eq!(life.next_wakeup(), None);
    }

    #[test]
    fn without_a_delay_the_first_signal_drains_at_once() {
        let (life, t0) = draining(Duration::from_secs(5));
        assert!(!life.is_running() && !life.is_accepting() && life.is_draining());
        assert_eq!(life.serve_state(), ServeState::Draining);
        assert_eq!(life.serve_state().as_metric(), 2);
        assert_eq!(
            life.state(),
            State::Draining {
                reason: SIGTERM,
                deadline: t0 + Duration::from_secs(5),
                next_tick: t0 + SECOND,
            }
        );
    }

    #[test]
    fn the_first_signal_with_a_delay_starts_a_lame_duck_that_still_accepts() {
        let (life, t0) = lame_duck(Duration::from_secs(10), Duration::from_secs(5));
        assert_eq!(
            life.state(),
            State::LameDuck {
                reason: SIGTERM,
                until: t0 + Duration::from_secs(10)
            }
        );
        assert!(life.is_accepting() && !life.is_running() && !life.is_draining());
        assert_eq!(life.serve_state(), ServeState::LameDuck);
        assert!(!life.serve_state().is_ready());
        assert_eq!(life.serve_state().as_metric(), 1);
        assert_eq!(life.next_wakeup(), Some(t0 + Duration::from_secs(10)));
    }

    #[test]
    fn the_lame_duck_ignores_the_connection_count_until_its_end() {
        let (mut life, t0) = lame_duck(Duration::from_secs(10), Duration::from_secs(5));
        assert_eq!(life.on_clock(t0 + ms(9_999), 0), Due::Nothing);
        assert!(life.is_accepting());
    }

    #[test]
    fn the_lame_duck_ends_in_the_drain_with_the_deadline_from_its_real_start() {
        let (mut life, t0) = lame_duck(Duration::from_secs(10), Duration::from_secs(5));
        // The loop woke 30 ms late: the drain gets its full timeout from then.
        let start = t0 + ms(10_030);
        assert_eq!(life.on_clock(start, 7), Due::BeginDrain);
        assert_eq!(
            life.state(),
            State::Draining {
                reason: SIGTERM,
                deadline: start + Duration::from_secs(5),
                next_tick: start + SECOND,
            }
        );
        assert!(!life.is_accepting());
        // Asked again in the same turn, as Due::BeginDrain says.
        assert_eq!(life.on_clock(start, 7), Due::Nothing);
    }

    #[test]
    fn a_lame_duck_that_ends_empty_stops_on_the_next_ask() {
        let (mut life, t0) = lame_duck(SECOND, Duration::from_secs(5));
        assert_eq!(life.on_clock(t0 + SECOND, 0), Due::BeginDrain);
        assert_eq!(life.on_clock(t0 + SECOND, 0), Due::Stop(DrainEnd::Emptied));
    }

    #[test]
    fn a_lame_duck_with_a_zero_timeout_stops_at_the_deadline_on_the_next_ask() {
        let (mut life, t0) = lame_duck(SECOND, Duration::ZERO);
        assert_eq!(life.on_clock(t0 + SECOND, 3), Due::BeginDrain);
        assert_eq!(life.on_clock(t0 + SECOND, 3), Due::Stop(DrainEnd::Deadline));
    }

    #[test]
    fn a_second_signal_in_the_lame_duck_starts_the_drain_at_once() {
        let (mut life, t0) = lame_duck(Duration::from_secs(10), Duration::from_secs(10));
        let at = t0 + ms(2_500);
        assert_eq!(life.signal(SIGINT, at), Signalled::Draining);
        assert_eq!(
            life.state(),
            State::Draining {
                // The lame duck's trigger stays the drain's reason.
                reason: SIGTERM,
                deadline: at + Duration::from_secs(10),
                next_tick: at + SECOND,
            }
        );
        // The lame duck's end no longer matters: at its old end, a countdown.
        assert_eq!(life.next_wakeup(), Some(at + SECOND));
        assert_eq!(
            life.on_clock(t0 + Duration::from_secs(10), 1),
            Due::Countdown(ms(2_500))
        );
        assert!(!life.is_accepting());
    }

    #[test]
    fn a_third_signal_after_the_lame_duck_forces_and_a_fourth_is_ignored() {
        let (mut life, t0) = lame_duck(Duration::from_secs(10), Duration::from_secs(5));
        assert_eq!(life.signal(SIGTERM, t0 + ms(100)), Signalled::Draining);
        assert_eq!(life.signal(SIGTERM, t0 + ms(200)), Signalled::Forced);
        assert_eq!(
            life.state(),
            State::Stopped {
                reason: SIGTERM,
                end: DrainEnd::Forced
            }
        );
        assert_eq!(life.serve_state(), ServeState::Draining);
        assert_eq!(life.next_wakeup(), None);
        assert_eq!(life.signal(SIGTERM, t0 + ms(300)), Signalled::Ignored);
        assert_eq!(life.on_clock(t0 + ms(300), 4), Due::Nothing);
    }

    #[test]
    fn a_signal_after_the_lame_duck_ran_out_forces() {
        let (mut life, t0) = lame_duck(SECOND, Duration::from_secs(5));
        assert_eq!(life.on_clock(t0 + SECOND, 2), Due::BeginDrain);
        assert_eq!(life.signal(SIGTERM, t0 + ms(1_500)), Signalled::Forced);
    }

    #[test]
    fn the_countdown_after_a_lame_duck_ticks_from_the_drain_start() {
        let (mut life, t0) = lame_duck(ms(2_500), Duration::from_secs(3));
        let start = t0 + ms(2_500);
        assert_eq!(life.on_clock(start, 2), Due::BeginDrain);
        assert_eq!(life.next_wakeup(), Some(start + SECOND));
        assert_eq!(life.on_clock(start + ms(999), 2), Due::Nothing);
        assert_eq!(
            life.on_clock(start + SECOND, 2),
            Due::Countdown(Duration::from_secs(2))
        );
        assert_eq!(
            life.on_clock(start + Duration::from_secs(2), 2),
            Due::Countdown(SECOND)
        );
        assert_eq!(life.next_wakeup(), Some(start + Duration::from_secs(3)));
        assert_eq!(
            life.on_clock(start + Duration::from_secs(3), 2),
            Due::Stop(DrainEnd::Deadline)
        );
    }

    #[test]
    fn the_last_connection_leaving_stops_it_early() {
        let (mut life, t0) = draining(Duration::from_secs(5));
        assert_eq!(life.on_clock(t0, 3), Due::Nothing);
        assert_eq!(life.on_clock(t0 + ms(10), 0), Due::Stop(DrainEnd::Emptied));
        assert!(life.is_stopped());
        assert_eq!(
            life.state(),
            State::Stopped {
                reason: SIGTERM,
                end: DrainEnd::Emptied
            }
        );
    }

    #[test]
    fn the_deadline_stops_it_with_connections_left() {
        let (mut life, t0) = draining(ms(500));
        assert_eq!(life.next_wakeup(), Some(t0 + ms(500)));
        assert_eq!(life.on_clock(t0 + ms(499), 2), Due::Nothing);
        assert_eq!(
            life.on_clock(t0 + ms(500), 2),
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
        assert_eq!(life.next_wakeup(), Some(t0 + SECOND));
        assert_eq!(
            life.on_clock(t0 + SECOND, 4),
            Due::Countdown(Duration::from_secs(4))
        );
        assert_eq!(life.on_clock(t0 + ms(1_500), 4), Due::Nothing);
        assert_eq!(life.on_clock(t0 + ms(3_500), 4), Due::Countdown(ms(1_500)));
        assert_eq!(life.next_wakeup(), Some(t0 + Duration::from_secs(4)));
    }

    #[test]
    fn a_second_signal_while_draining_forces() {
        let (mut life, t0) = draining(Duration::from_secs(5));
        assert_eq!(life.signal(SIGINT, t0 + ms(10)), Signalled::Forced);
        assert_eq!(
            life.state(),
            State::Stopped {
                reason: SIGTERM,
                end: DrainEnd::Forced
            }
        );
    }

    #[test]
    fn the_handle_goes_through_the_lame_duck_like_a_signal() {
        let t0 = Instant::now();
        let mut life = Lifecycle::new(SECOND, SECOND);
        assert_eq!(life.signal(DrainReason::Handle, t0), Signalled::LameDuck);
        assert_eq!(life.on_clock(t0 + SECOND, 1), Due::BeginDrain);
        let State::Draining { reason, .. } = life.state() else {
            panic!("not draining: {:?}", life.state());
        };
        assert_eq!(reason, DrainReason::Handle);
    }

    #[test]
    fn huge_timeouts_and_delays_do_not_overflow() {
        let (life, t0) = draining(Duration::MAX);
        assert!(life.next_wakeup().is_some_and(|at| at > t0));
        let (mut life, t0) = lame_duck(Duration::MAX, Duration::MAX);
        assert!(life.next_wakeup().is_some_and(|at| at > t0));
        assert_eq!(life.signal(SIGTERM, t0), Signalled::Draining);
        assert!(life.next_wakeup().is_some_and(|at| at > t0));
    }

    #[test]
    fn the_handler_exits_two_signals_after_the_one_that_began_the_drain() {
        use Event::*;
        enum Event {
            Sig,
            Handle,
            DelayOver,
        }
        let t0 = Instant::now();
        // (delay, events, handler_exit_at before and after each event)
        let cases: [(Duration, &[Event], &[usize]); 5] = [
            // No lame duck: drain, force, then the handler exits at the third.
            (Duration::ZERO, &[Sig, Sig], &[3, 3, 3]),
            // A second signal ends the lame duck: the fourth exits.
            (SECOND, &[Sig, Sig, Sig], &[4, 4, 4, 4]),
            // The delay ran out: the drain began with one signal, the third exits.
            (SECOND, &[Sig, DelayOver], &[4, 4, 3]),
            // The handle began the drain: one signal forces, the second exits.
            (Duration::ZERO, &[Handle], &[3, 2]),
            // The handle began the lame duck: a signal drains, the third exits.
            (SECOND, &[Handle, Sig], &[4, 3, 3]),
        ];
        for (delay, events, want) in cases {
            let mut life = Lifecycle::new(delay, SECOND);
            let mut seen = vec![life.handler_exit_at()];
            for event in events {
                match event {
                    Sig => _ = life.signal(SIGTERM, t0),
                    Handle => _ = life.signal(DrainReason::Handle, t0),
                    DelayOver => assert_eq!(life.on_clock(t0 + SECOND, 1), Due::BeginDrain),
                }
                seen.push(life.handler_exit_at());
            }
            assert_eq!(seen, want, "delay {delay:?}");
        }
    }

    #[test]
    fn a_take_over_drains_at_once_from_running_or_the_lame_duck_only() {
        let t0 = Instant::now();
        let mut life = Lifecycle::new(Duration::from_secs(10), SECOND);
        assert!(life.hand_over(t0));
        assert_eq!(
            life.state(),
            State::Draining {
                reason: DrainReason::HandedOver,
                deadline: t0 + SECOND,
                next_tick: t0 + COUNTDOWN_INTERVAL,
            }
        );
        assert!(!life.hand_over(t0), "a second take-over while draining");
        // The next signal forces, the one after exits from the handler.
        assert_eq!(life.handler_exit_at(), 2);
        assert_eq!(life.signal(SIGTERM, t0 + ms(1)), Signalled::Forced);
        assert!(!life.hand_over(t0 + ms(2)), "a take-over once stopped");

        let (mut life, t0) = lame_duck(Duration::from_secs(10), SECOND);
        let t1 = t0 + ms(300);
        assert!(life.hand_over(t1));
        let State::Draining {
            reason, deadline, ..
        } = life.state()
        else {
            panic!("not draining: {:?}", life.state());
        };
        assert_eq!((reason, deadline), (DrainReason::HandedOver, t1 + SECOND));
        assert_eq!(life.handler_exit_at(), 3);
        assert_eq!(DrainReason::HandedOver.to_string(), "take-over");
    }
}
