//! systemd's notification protocol (SPEC "Operations"): `READY=1` once
//! listening, `STATUS=` as the state changes, `STOPPING=1` at drain start.
//!
//! A no-op unless `NOTIFY_SOCKET` is set. Status lines are rate-limited to
//! one a second so that a busy server does not send a datagram per connection;
//! the loop's poll timeout includes [`Notifier::next_wakeup`].

use std::time::{Duration, Instant};

use sd_notify::NotifyState;

/// Least time between two `STATUS=` updates while serving.
const STATUS_INTERVAL: Duration = Duration::from_secs(1);

/// Sends state changes to the service manager, when there is one.
#[derive(Debug, Default)]
pub struct Notifier {
    /// `NOTIFY_SOCKET` was set at start.
    enabled: bool,
    /// A status update is owed at this instant (the count changed).
    status_due: Option<Instant>,
    /// The connection count last reported.
    reported: Option<usize>,
    /// `STOPPING=1` was sent; from then on status follows the countdown only.
    stopping: bool,
}

impl Notifier {
    /// Enabled when `NOTIFY_SOCKET` is set.
    pub fn from_env() -> Self {
        Notifier {
            enabled: std::env::var_os("NOTIFY_SOCKET").is_some(),
            ..Notifier::default()
        }
    }

    /// `READY=1` with the first status line.
    pub fn ready(&mut self, connections: usize) {
        self.reported = Some(connections);
        self.send(&[
            NotifyState::Ready,
            NotifyState::Status(&format!("serving {connections} connections")),
        ]);
    }

    /// True when there is a service manager to tell.
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// `STATUS=stopping in N s`: the lame duck began (docs/protocol.md
    /// "Lame duck and health").
    pub fn lame_duck(&mut self, delay: Duration) {
        let text = format!("stopping in {:.0}s", delay.as_secs_f64());
        self.send(&[NotifyState::Status(&text)]);
    }

    /// `STOPPING=1`, once, at the first drain signal (the lame duck's start
    /// when there is one).
    pub fn stopping(&mut self) {
        if self.stopping {
            return;
        }
        self.stopping = true;
        self.status_due = None;
        self.send(&[NotifyState::Stopping]);
    }

    /// Notes a change in the connection count; a status update follows within a second.
    #[inline]
    pub fn connections_changed(&mut self) {
        // While draining, the countdown carries the count; a pending update
        // here would never be cleared and would keep waking the loop.
        if self.enabled && !self.stopping && self.status_due.is_none() {
            self.status_due = Some(Instant::now() + STATUS_INTERVAL);
        }
    }

    /// When the next status update is due.
    pub fn next_wakeup(&self) -> Option<Instant> {
        self.status_due
    }

    /// Sends the status owed by now: serving, or (with `remaining`) draining.
    pub fn on_clock(&mut self, now: Instant, connections: usize, remaining: Option<Duration>) {
        if !self.enabled {
            return;
        }
        if let Some(remaining) = remaining {
            let text = format!(
                "draining, {connections} left, {:.0}s to go",
                remaining.as_secs_f64()
            );
            self.send(&[NotifyState::Status(&text)]);
            return;
        }
        if self.status_due.is_some_and(|due| now >= due) {
            self.status_due = None;
            if self.reported != Some(connections) {
                self.reported = Some(connections);
                let text = format!("serving {connections} connections");
                self.send(&[NotifyState::Status(&text)]);
            }
        }
    }

    fn send(&self, states: &[NotifyState<'_>]) {
        if !self.enabled {
            return;
        }
        if let Err(err) = sd_notify::notify(states) {
            log::debug!("cannot notify the service manager: {err}");
        }
    }
}
