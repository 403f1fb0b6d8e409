//! `Episode`: when a warning that can repeat is said (docs/protocol.md "Logs
//! and notifications are best effort": once per episode; an episode ends
//! when its condition has been absent for one second).
//!
//! Pure, like `drain.rs`: it is told when its condition is seen and when it
//! is gone, takes the time as an argument, and never reads the clock or logs.
//! Its owner says the warning when [`Episode::seen`] opens an episode, puts
//! [`Episode::next_wakeup`] in its own, and asks [`Episode::on_clock`]
//! whether the episode is over.

use std::time::{Duration, Instant};

/// How long a condition must stay absent before its episode ends.
pub(crate) const QUIET: Duration = Duration::from_secs(1);

/// One repeatable warning's episode.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Episode {
    /// True from the warning until the condition has been absent for [`QUIET`].
    open: bool,
    /// When the episode ends if the condition stays absent: [`QUIET`] after
    /// it was last found gone. `None` while it holds, and always `None`
    /// while the episode is not open. (The end, not the start of the
    /// absence, so that asking for it on every turn of the loop is a load.)
    ends_at: Option<Instant>,
}

impl Episode {
    /// The condition was seen, worth a warning: true when this opens an
    /// episode, that is, when the warning is to be said.
    pub(crate) fn seen(&mut self) -> bool {
        self.ends_at = None;
        !std::mem::replace(&mut self.open, true)
    }

    /// The condition holds again, though not in a way worth a warning of its
    /// own: an open episode goes on; none is opened.
    pub(crate) fn holds(&mut self) {
        self.ends_at = None;
    }

    /// The condition is gone. The absence counts from the first call after
    /// it last held; `now` is called only then, so a caller on a busy path
    /// can pass `Instant::now` and read the clock only when it matters.
    pub(crate) fn gone(&mut self, now: impl FnOnce() -> Instant) {
        if self.open && self.ends_at.is_none() {
            self.ends_at = Some(now() + QUIET);
        }
    }

    /// True from the warning until the episode ends.
    #[inline]
    pub(crate) fn is_open(&self) -> bool {
        self.open
    }

    /// When the episode ends if the condition stays absent; `None` while it
    /// holds or when no episode is open.
    #[inline]
    pub(crate) fn next_wakeup(&self) -> Option<Instant> {
        self.ends_at
    }

    /// Ends the episode once the condition has been absent for [`QUIET`];
    /// true when it ended now (the owner may say that it cleared).
    pub(crate) fn on_clock(&mut self, now: Instant) -> bool {
        match self.next_wakeup() {
            Some(end) if now >= end => {
                *self = Episode::default();
                true
            }
            _ => false,
        }
    }
}

/// The earlier of two optional instants; `None` only when both are.
#[inline]
pub(crate) fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_first_sighting_opens_an_episode_and_later_ones_do_not() {
        let mut episode = Episode::default();
        assert!(episode.seen());
        assert!(!episode.seen());
        assert!(!episode.seen());
        assert_eq!(episode.next_wakeup(), None, "it holds: nothing to wait for");
    }

    #[test]
    fn an_episode_ends_after_a_second_of_absence_and_a_new_one_can_open() {
        let t0 = Instant::now();
        let mut episode = Episode::default();
        assert!(episode.seen());
        episode.gone(|| t0);
        assert_eq!(episode.next_wakeup(), Some(t0 + QUIET));
        assert!(!episode.on_clock(t0 + 999 * MS));
        assert!(episode.on_clock(t0 + QUIET));
        assert_eq!(episode.next_wakeup(), None);
        assert!(episode.seen(), "a new episode after the quiet second");
    }

    #[test]
    fn the_condition_coming_back_within_the_second_keeps_the_episode() {
        let t0 = Instant::now();
        let mut episode = Episode::default();
        assert!(episode.seen());
        // Churn: gone, back, gone, back, each within the second.
        for i in 0..10 {
            episode.gone(|| t0 + i * 500 * MS);
            if i % 2 == 0 {
                episode.holds();
            } else {
                assert!(!episode.seen());
            }
            assert!(!episode.on_clock(t0 + i * 500 * MS + 999 * MS));
        }
        assert_eq!(episode.next_wakeup(), None);
    }

    #[test]
    fn absence_counts_from_the_first_gone_not_the_last() {
        let t0 = Instant::now();
        let mut episode = Episode::default();
        episode.seen();
        episode.gone(|| t0);
        episode.gone(|| panic!("the clock is read only when the absence begins"));
        assert!(episode.on_clock(t0 + QUIET));
    }

    #[test]
    fn with_no_episode_open_nothing_is_scheduled() {
        let t0 = Instant::now();
        let mut episode = Episode::default();
        episode.holds();
        episode.gone(|| panic!("no episode, no clock"));
        assert_eq!(episode.next_wakeup(), None);
        assert!(!episode.on_clock(t0 + QUIET * 10));
    }
}
