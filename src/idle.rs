//! The idle timeout, `--idle-timeout` (docs/protocol.md "Protections"): a
//! coarse clock of sweep epochs that tells which connections have been idle
//! long enough to close, and the one-second limit on the discard that
//! follows an idle close.
//!
//! Timers must cost nothing per message: no clock read, no system call, no
//! allocation. So a connection carries a [`Stamp`], the epoch of its last
//! event, which the loop stores on every event (a two-byte store, no clock).
//! A sweep every [`IdleSweep::interval`] (a quarter of the timeout, within
//! [`MIN_INTERVAL`] and [`MAX_INTERVAL`]) advances the epoch and closes the
//! connections whose stamp is too old: the loop reads the clock once per
//! wake-up, and looks at every connection only once per sweep, never per
//! wake-up.
//!
//! Accuracy: a connection is closed after between `timeout` and `timeout +
//! interval` without an event (plus however late the loop wakes). Proof
//! sketch: an event at time `a` is stamped `e`, the epoch begun by the sweep
//! at `S_e <= a`; sweeps are at least `interval` apart, and a stamp is idle at
//! the sweep of epoch `k` when `k - e >= n + 1`, where `n * interval >=
//! timeout` (`n` sweeps per timeout). So at that sweep `S_k - a >= S_k -
//! S_(e+1) >= n * interval >= timeout`; and the first such sweep is `S_(e+n+1)`,
//! at most `(n + 1) * interval` after `S_e`, which is within `timeout +
//! interval` of `a` (`interval` is `timeout / n` rounded up to the
//! nanosecond, which adds at most `n` nanoseconds).
//!
//! It owns the epoch, the sweep's schedule and the linger queue. It does not
//! own connections, sockets, the clock or the `idle_closed` counter: the
//! loop stamps, scans, shuts down write sides and closes.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// A connection's last-event epoch. Two bytes: compared with wrap-around
/// arithmetic, which is exact as long as no stamp in service is more than
/// half the range (32,768 epochs) old; every sweep looks at every
/// connection in service and closes it by [`MAX_SWEEPS_PER_TIMEOUT`]` + 1`
/// epochs, so none ever gets that old.
pub type Stamp = u16;

/// Sweeps per timeout when that gives an interval within the bounds below.
const SWEEPS_PER_TIMEOUT: u32 = 4;

/// Sweeps are at least this far apart (unless the timeout itself is
/// shorter): a sub-second timeout costs at most ten scans a second.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// Sweeps are at most this far apart while the sweep count allows, so a
/// long timeout is honoured within 15 s (5 % of 300 s) at the cost of one
/// wake-up and one scan every 15 s.
pub const MAX_INTERVAL: Duration = Duration::from_secs(15);

/// The most sweeps per timeout: keeps the idle age far below half the stamp
/// range. Past 4096 × 15 s (17 hours) the interval grows beyond [`MAX_INTERVAL`].
pub const MAX_SWEEPS_PER_TIMEOUT: u32 = 4096;

/// How long an idle-closed connection's input is read and discarded, at
/// most, before the socket is closed (docs/protocol.md "Protections").
pub const LINGER: Duration = Duration::from_secs(1);

/// `now + d`, or as far ahead as the clock can hold (a year, else `now`).
fn later(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .or_else(|| now.checked_add(Duration::from_secs(86_400 * 365)))
        .unwrap_or(now)
}

/// One sweep's verdict, returned by [`IdleSweep::on_clock`]: the loop asks
/// [`Sweep::is_idle`] for every connection in service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sweep {
    /// The epoch this sweep began (already the current one).
    epoch: Stamp,
    /// A stamp at least this many epochs behind `epoch` is idle: sweeps per timeout + 1.
    idle_age: Stamp,
}

impl Sweep {
    /// True when a connection last stamped `stamp` has been idle for the
    /// timeout. Wrap-around safe: the age is `epoch - stamp` modulo 2^16.
    #[inline]
    pub fn is_idle(self, stamp: Stamp) -> bool {
        self.epoch.wrapping_sub(stamp) >= self.idle_age
    }
}

/// The sweep's clock: the current epoch and when the next sweep is due.
#[derive(Debug, Clone)]
pub struct IdleSweep {
    /// The current epoch: what the loop stamps a connection with on each event.
    epoch: Stamp,
    /// Time between sweeps: the timeout divided by the sweep count, rounded
    /// up to the nanosecond; zero when there is no timeout.
    interval: Duration,
    /// A stamp this many epochs old is idle: sweeps per timeout + 1.
    idle_age: Stamp,
    /// When the next sweep is due; `None` when there is no timeout or
    /// sweeping stopped (the drain).
    next: Option<Instant>,
}

impl IdleSweep {
    /// The sweep for `timeout` (zero: never idle, no timer), starting at
    /// `now` with epoch 0; the first sweep is one interval later.
    pub fn new(timeout: Duration, now: Instant) -> Self {
        if timeout.is_zero() {
            return IdleSweep {
                epoch: 0,
                interval: Duration::ZERO,
                idle_age: Stamp::MAX,
                next: None,
            };
        }
        let sweeps = sweeps_per(timeout);
        let interval = div_ceil(timeout, sweeps);
        IdleSweep {
            epoch: 0,
            interval,
            // sweeps <= 4096, so this always fits.
            idle_age: Stamp::try_from(sweeps + 1).unwrap_or(Stamp::MAX),
            next: Some(later(now, interval)),
        }
    }

    /// True when there is a timeout and sweeping has not stopped.
    #[cfg(test)] // Used by the unit tests only.
    pub fn is_enabled(&self) -> bool {
        self.next.is_some()
    }

    /// Time between sweeps (zero when there is no timeout).
    #[cfg(test)] // Used by the unit tests only.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// The current epoch, to stamp a connection with on every event and when
    /// it is accepted.
    #[inline]
    pub fn epoch(&self) -> Stamp {
        self.epoch
    }

    /// When the next sweep is due; `None` with no timeout or once stopped.
    pub fn next_wakeup(&self) -> Option<Instant> {
        self.next
    }

    /// Starts the next epoch when a sweep is due and returns the sweep's
    /// verdict; `None` otherwise.
    ///
    /// The next sweep is one interval after `now`, not after the missed
    /// schedule: sweeps never come closer than an interval apart, which the
    /// lower accuracy bound relies on (a late loop closes later, never sooner).
    pub fn on_clock(&mut self, now: Instant) -> Option<Sweep> {
        let due = self.next?;
        if now < due {
            return None;
        }
        self.epoch = self.epoch.wrapping_add(1);
        self.next = Some(later(now, self.interval));
        Some(Sweep {
            epoch: self.epoch,
            idle_age: self.idle_age,
        })
    }

    /// Stops sweeping for good: at drain start, when every connection gets
    /// its notice and the drain's deadline bounds it instead (an idle close
    /// would end a connection without the notice).
    pub fn stop(&mut self) {
        self.next = None;
    }
}

/// Sweeps per timeout: 4, or more to keep the interval within
/// [`MAX_INTERVAL`], or fewer (at least 1) to keep it above [`MIN_INTERVAL`].
fn sweeps_per(timeout: Duration) -> u32 {
    let quarter = timeout / SWEEPS_PER_TIMEOUT;
    let ratio = |bound: Duration| timeout.as_nanos() / bound.as_nanos();
    if quarter > MAX_INTERVAL {
        let ceil =
            ratio(MAX_INTERVAL) + u128::from(timeout.as_nanos() % MAX_INTERVAL.as_nanos() != 0);
        u32::try_from(ceil)
            .unwrap_or(u32::MAX)
            .min(MAX_SWEEPS_PER_TIMEOUT)
    } else if quarter < MIN_INTERVAL {
        u32::try_from(ratio(MIN_INTERVAL))
            .unwrap_or(1)
            .clamp(1, SWEEPS_PER_TIMEOUT)
    } else {
        SWEEPS_PER_TIMEOUT
    }
}

/// `d / n` rounded up to the nanosecond, so that `n` intervals cover `d`.
fn div_ceil(d: Duration, n: u32) -> Duration {
    let nanos = d.as_nanos().div_ceil(u128::from(n.max(1)));
    let secs = u64::try_from(nanos / 1_000_000_000).unwrap_or(u64::MAX);
    // The remainder is below 10^9, so it fits.
    let sub = u32::try_from(nanos % 1_000_000_000).unwrap_or(0);
    Duration::new(secs, sub)
}

/// Idle-closed connections reading off their last input, oldest first, each
/// for at most [`LINGER`]. Every entry waits the same time, so the queue is
/// in deadline order and the loop only ever looks at its front.
///
/// An entry names a slab key, which may have been reused by the time its
/// second is up (the client closed first and a new connection took the
/// key): the loop closes the key only if that connection is itself in its
/// idle linger. A reused key gets there no sooner than one sweep after it
/// was accepted, so at worst it lingers less than a second, which "at most
/// one second" allows (its input is read off before the close, so it still
/// gets FIN, not RST).
#[derive(Debug, Default)]
pub struct LingerQueue {
    /// (when the linger ends, slab key), in deadline order.
    queue: VecDeque<(Instant, usize)>,
}

impl LingerQueue {
    /// Starts `key`'s linger at `now`. Returns false when the queue could not
    /// grow (allocation failed): the loop then closes the connection at once,
    /// reading off what input it can first.
    pub fn push(&mut self, key: usize, now: Instant) -> bool {
        if self.queue.try_reserve(1).is_err() {
            return false;
        }
        self.queue.push_back((later(now, LINGER), key));
        true
    }

    /// When the oldest linger ends; `None` when none is running.
    pub fn next_wakeup(&self) -> Option<Instant> {
        self.queue.front().map(|&(until, _)| until)
    }

    /// The next key whose linger is over at `now`, if any; call until `None`.
    pub fn pop_due(&mut self, now: Instant) -> Option<usize> {
        match self.queue.front() {
            Some(&(until, key)) if now >= until => {
                self.queue.pop_front();
                Some(key)
            }
            _ => None,
        }
    }

    /// Lingers not yet over.
    #[cfg(test)] // Used by the unit tests only.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// True when no linger is running.
    #[cfg(test)] // Used by the unit tests only.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

/// The idle timeout as one time-driven source of the loop: the sweep's
/// schedule and the lingers of idle-closed connections, with the nearer of
/// their deadlines stored after every change (like the acceptor's), so the
/// loop's question on every turn, [`IdleClock::next_wakeup`], is one load.
#[derive(Debug)]
pub struct IdleClock {
    /// The epoch and the sweep's schedule.
    sweep: IdleSweep,
    /// Idle-closed connections reading off their input.
    lingering: LingerQueue,
    /// The earlier of the next sweep and the oldest linger's end; kept by
    /// [`IdleClock::schedule`] after every change.
    next: Option<Instant>,
}

impl IdleClock {
    /// The source for `timeout` (zero: no sweep, no deadline), starting at `now`.
    pub fn new(timeout: Duration, now: Instant) -> Self {
        let sweep = IdleSweep::new(timeout, now);
        let next = sweep.next_wakeup();
        IdleClock {
            sweep,
            lingering: LingerQueue::default(),
            next,
        }
    }

    /// The current epoch, to stamp a connection with on every event.
    #[inline(always)]
    pub fn epoch(&self) -> Stamp {
        self.sweep.epoch()
    }

    /// When [`IdleClock::sweep_due`] or [`IdleClock::pop_linger_due`] next
    /// has something to do; `None` with no timeout, or once sweeping stopped
    /// and no linger is left.
    #[inline(always)]
    pub fn next_wakeup(&self) -> Option<Instant> {
        self.next
    }

    /// A sweep's verdict when one is due at `now` (the epoch moves on).
    pub fn sweep_due(&mut self, now: Instant) -> Option<Sweep> {
        let verdict = self.sweep.on_clock(now);
        self.schedule();
        verdict
    }

    /// Starts `key`'s linger at `now`; false when the queue could not grow.
    pub fn linger(&mut self, key: usize, now: Instant) -> bool {
        let pushed = self.lingering.push(key, now);
        self.schedule();
        pushed
    }

    /// The next key whose linger is over at `now`; call until `None`.
    pub fn pop_linger_due(&mut self, now: Instant) -> Option<usize> {
        let key = self.lingering.pop_due(now);
        self.schedule();
        key
    }

    /// Stops sweeping for good (the drain began); lingers run on.
    pub fn stop(&mut self) {
        self.sweep.stop();
        self.schedule();
    }

    /// Forgets every linger (every connection was closed).
    pub fn clear_lingers(&mut self) {
        self.lingering = LingerQueue::default();
        self.schedule();
    }

    fn schedule(&mut self) {
        self.next =
            crate::episode::earliest(self.sweep.next_wakeup(), self.lingering.next_wakeup());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    /// Runs sweeps at exactly their due times until `until`, stamping one
    /// connection at `active_at`; returns when its sweep said idle.
    fn closed_at(
        sweep: &mut IdleSweep,
        t0: Instant,
        active_at: Duration,
        until: Duration,
    ) -> Duration {
        let mut stamp = sweep.epoch();
        let mut stamped = false;
        while let Some(at) = sweep.next_wakeup() {
            if !stamped && t0 + active_at < at {
                stamp = sweep.epoch();
                stamped = true;
            }
            assert!(at <= t0 + until, "not closed by {until:?}");
            let verdict = sweep.on_clock(at).expect("due");
            if stamped && verdict.is_idle(stamp) {
                return at - t0;
            }
        }
        panic!("sweeping stopped");
    }

    #[test]
    fn no_timeout_means_no_timer_and_nothing_idle() {
        let t0 = Instant::now();
        let mut sweep = IdleSweep::new(Duration::ZERO, t0);
        assert!(!sweep.is_enabled());
        assert_eq!(sweep.next_wakeup(), None);
        assert_eq!(sweep.on_clock(t0 + secs(1_000_000)), None);
        assert_eq!(sweep.epoch(), 0);
    }

    #[test]
    fn the_interval_is_a_quarter_of_the_timeout_within_its_bounds() {
        let interval = |t| IdleSweep::new(t, Instant::now()).interval();
        assert_eq!(interval(secs(60)), secs(15));
        assert_eq!(interval(secs(4)), secs(1));
        assert_eq!(interval(ms(400)), ms(100));
        // Longer timeouts: more sweeps, each at most 15 s apart.
        assert_eq!(interval(secs(300)), secs(15));
        assert_eq!(interval(secs(301)), Duration::from_nanos(14_333_333_334));
        // Shorter ones: fewer sweeps, at least 100 ms apart, or one per timeout.
        assert_eq!(interval(ms(250)), ms(125));
        assert_eq!(interval(ms(150)), ms(150));
        assert_eq!(interval(ms(30)), ms(30));
        // Past 4096 sweeps the interval grows; nothing overflows.
        assert_eq!(interval(secs(4096 * 60)), secs(60));
        assert!(interval(Duration::MAX) > secs(60));
    }

    #[test]
    fn nothing_happens_before_the_first_interval() {
        let t0 = Instant::now();
        let mut sweep = IdleSweep::new(secs(4), t0);
        assert_eq!(sweep.next_wakeup(), Some(t0 + secs(1)));
        assert_eq!(sweep.on_clock(t0 + ms(999)), None);
        assert_eq!(sweep.epoch(), 0);
        let verdict = sweep.on_clock(t0 + secs(1)).expect("due");
        assert_eq!(sweep.epoch(), 1);
        assert!(!verdict.is_idle(0));
        assert_eq!(sweep.next_wakeup(), Some(t0 + secs(2)));
    }

    #[test]
    fn a_connection_is_closed_between_the_timeout_and_one_interval_more() {
        let t0 = Instant::now();
        // Activity just after a sweep, just before one, and in between.
        for active_at in [ms(1_000), ms(1_001), ms(1_500), ms(1_999)] {
            let mut sweep = IdleSweep::new(secs(4), t0);
            let closed = closed_at(&mut sweep, t0, active_at, secs(20));
            let idle_for = closed - active_at;
            assert!(
                idle_for >= secs(4),
                "{active_at:?}: closed after {idle_for:?}"
            );
            assert!(
                idle_for <= secs(5),
                "{active_at:?}: closed after {idle_for:?}"
            );
        }
    }

    #[test]
    fn the_bound_holds_for_clamped_intervals_too() {
        let t0 = Instant::now();
        for timeout in [ms(30), ms(150), ms(250), secs(301)] {
            let interval = IdleSweep::new(timeout, t0).interval();
            for offset in [
                Duration::ZERO,
                interval / 2,
                interval - Duration::from_nanos(1),
            ] {
                let mut sweep = IdleSweep::new(timeout, t0);
                let active_at = interval + offset;
                let closed = closed_at(&mut sweep, t0, active_at, timeout * 3 + interval * 3);
                let idle_for = closed - active_at;
                assert!(idle_for >= timeout, "{timeout:?}/{offset:?}: {idle_for:?}");
                // Plus the nanoseconds the interval was rounded up by.
                let rounding = Duration::from_nanos(u64::from(MAX_SWEEPS_PER_TIMEOUT));
                assert!(
                    idle_for <= timeout + interval + rounding,
                    "{timeout:?}/{offset:?}: {idle_for:?}"
                );
            }
        }
    }

    #[test]
    fn a_late_loop_closes_later_never_sooner() {
        let t0 = Instant::now();
        let mut sweep = IdleSweep::new(secs(4), t0);
        // The loop stalls for 10 s: one sweep, not ten, and the next a full
        // interval after it.
        let verdict = sweep.on_clock(t0 + secs(11)).expect("due");
        assert_eq!(sweep.epoch(), 1);
        assert!(!verdict.is_idle(0));
        assert_eq!(sweep.next_wakeup(), Some(t0 + secs(12)));
        // A connection active during the stall (stamp 0) is not idle until
        // four more intervals have passed since the stall ended.
        for n in 2..=5 {
            let verdict = sweep.on_clock(t0 + secs(10 + n)).expect("due");
            assert_eq!(verdict.is_idle(0), n == 5, "sweep {n}");
        }
    }

    #[test]
    fn stamps_compare_across_the_wrap() {
        let verdict = Sweep {
            epoch: 2,
            idle_age: 5,
        };
        // Stamped 4 epochs ago, across the wrap: not yet idle.
        assert!(!verdict.is_idle(Stamp::MAX - 1));
        // 5 and 6 epochs ago: idle.
        assert!(verdict.is_idle(Stamp::MAX - 2));
        assert!(verdict.is_idle(Stamp::MAX - 3));
        // Stamped this epoch.
        assert!(!verdict.is_idle(2));
    }

    #[test]
    fn the_epoch_wraps_and_sweeping_goes_on() {
        let t0 = Instant::now();
        let mut sweep = IdleSweep::new(ms(400), t0);
        let mut now = t0;
        let mut stamp = 0;
        for n in 1..=70_000u32 {
            now += ms(100);
            let verdict = sweep.on_clock(now).expect("due");
            // A connection that talks every 300 ms is never idle.
            if n % 3 == 0 {
                assert!(!verdict.is_idle(stamp), "sweep {n}");
                stamp = sweep.epoch();
            }
        }
        assert_eq!(sweep.epoch(), (70_000 % 65_536) as Stamp);
        // Silent since: idle at the fifth sweep after its last stamp.
        let before = sweep.epoch().wrapping_sub(stamp);
        let mut sweeps = 0;
        loop {
            now += ms(100);
            sweeps += 1;
            if sweep.on_clock(now).expect("due").is_idle(stamp) {
                break;
            }
        }
        assert_eq!(u32::from(before) + sweeps, 5);
    }

    #[test]
    fn stop_ends_the_timer() {
        let t0 = Instant::now();
        let mut sweep = IdleSweep::new(secs(4), t0);
        sweep.stop();
        assert!(!sweep.is_enabled());
        assert_eq!(sweep.next_wakeup(), None);
        assert_eq!(sweep.on_clock(t0 + secs(100)), None);
    }

    #[test]
    fn lingers_end_a_second_later_in_order() {
        let t0 = Instant::now();
        let mut lingering = LingerQueue::default();
        assert_eq!(lingering.next_wakeup(), None);
        assert!(lingering.push(7, t0));
        assert!(lingering.push(3, t0 + ms(200)));
        assert_eq!(lingering.len(), 2);
        assert_eq!(lingering.next_wakeup(), Some(t0 + secs(1)));
        assert_eq!(lingering.pop_due(t0 + ms(999)), None);
        assert_eq!(lingering.pop_due(t0 + ms(1_100)), Some(7));
        assert_eq!(lingering.pop_due(t0 + ms(1_100)), None);
        assert_eq!(lingering.next_wakeup(), Some(t0 + ms(1_200)));
        assert_eq!(lingering.pop_due(t0 + secs(5)), Some(3));
        assert!(lingering.is_empty());
        assert_eq!(lingering.next_wakeup(), None);
    }

    #[test]
    fn the_idle_clock_says_the_nearer_of_the_sweep_and_the_lingers() {
        let t0 = Instant::now();
        let mut clock = IdleClock::new(secs(8), t0);
        assert_eq!(clock.next_wakeup(), Some(t0 + secs(2)));
        assert!(clock.linger(4, t0 + ms(500)));
        assert_eq!(clock.next_wakeup(), Some(t0 + ms(1_500)));
        assert_eq!(clock.pop_linger_due(t0 + ms(1_000)), None);
        assert_eq!(clock.pop_linger_due(t0 + ms(1_500)), Some(4));
        assert_eq!(clock.next_wakeup(), Some(t0 + secs(2)));
        assert!(clock.sweep_due(t0 + secs(2)).is_some());
        assert_eq!(clock.epoch(), 1);
        assert_eq!(clock.next_wakeup(), Some(t0 + secs(4)));
        // The drain: no more sweeps, but a linger still ends on time.
        assert!(clock.linger(9, t0 + secs(3)));
        clock.stop();
        assert_eq!(clock.next_wakeup(), Some(t0 + secs(4)));
        clock.clear_lingers();
        assert_eq!(clock.next_wakeup(), None);
        assert_eq!(IdleClock::new(Duration::ZERO, t0).next_wakeup(), None);
    }

    /// The cost of one sweep over 10,000 connections, with the stamp inside a
    /// 64-byte slot (as in the slab) and in a dense array. A figure, not a
    /// test: `cargo test --release --lib -- --ignored --nocapture idle_sweep_cost`.
    #[test]
    #[ignore]
    fn idle_sweep_cost_at_10000_connections() {
        use std::hint::black_box;
        #[derive(Clone, Copy)]
        #[repr(C)]
        struct Slot {
            other: [u8; 56],
            stamp: Stamp,
            closing: bool,
            pad: [u8; 5],
        }
        const N: usize = 10_000;
        const ROUNDS: u32 = 2_000;
        let verdict = Sweep {
            epoch: 1_000,
            idle_age: 5,
        };
        // One in a hundred idle.
        let slots: Vec<Slot> = (0..N)
            .map(|i| Slot {
                other: [0; 56],
                stamp: if i % 100 == 0 { 900 } else { 999 },
                closing: false,
                pad: [0; 5],
            })
            .collect();
        let stamps: Vec<Stamp> = slots.iter().map(|s| s.stamp).collect();
        let mut idle = Vec::with_capacity(N);
        let started = Instant::now();
        for _ in 0..ROUNDS {
            idle.clear();
            for (key, slot) in black_box(&slots).iter().enumerate() {
                if !slot.closing && verdict.is_idle(slot.stamp) {
                    idle.push(key);
                }
            }
            black_box(&idle);
        }
        let in_slots = started.elapsed() / ROUNDS;
        let started = Instant::now();
        for _ in 0..ROUNDS {
            idle.clear();
            for (key, &stamp) in black_box(&stamps).iter().enumerate() {
                if verdict.is_idle(stamp) {
                    idle.push(key);
                }
            }
            black_box(&idle);
        }
        let dense = started.elapsed() / ROUNDS;
        assert_eq!(idle.len(), N / 100);
        // A real sweep comes every interval, after the cache has been used
        // for other things: evict it with 64 MiB of other data each round.
        let mut other = vec![1u8; 64 << 20];
        let mut cold = Duration::ZERO;
        for round in 0..50u8 {
            other
                .iter_mut()
                .step_by(64)
                .for_each(|b| *b = b.wrapping_add(round));
            black_box(&other);
            let started = Instant::now();
            idle.clear();
            for (key, slot) in black_box(&slots).iter().enumerate() {
                if !slot.closing && verdict.is_idle(slot.stamp) {
                    idle.push(key);
                }
            }
            black_box(&idle);
            cold += started.elapsed();
        }
        let cold = cold / 50;
        eprintln!(
            "idle sweep over {N} connections: {in_slots:?} in 64-byte slots (warm), \
             {cold:?} (cold cache), {dense:?} dense (warm)"
        );
    }
}
