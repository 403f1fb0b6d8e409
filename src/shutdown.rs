//! `ShutdownHandle`: the programmatic drain trigger (docs/protocol.md "Draining": "or by
//! `ShutdownHandle::drain()` from another thread").
//!
//! It owns one fact, "a drain was requested", and one way to tell the loop:
//! a `mio::Waker`. It does not change state itself: the loop reads the flag
//! when the waker's event arrives and starts the drain (STYLE principle 3).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use mio::Waker;

/// Starts the server's drain from any thread. Cheap to clone; `Send + Sync`.
///
/// # Examples
///
/// ```
/// let mut config = echod::Config::default();
/// config.listen = vec!["127.0.0.1:0".parse().unwrap()];
/// let server = echod::Server::bind(config).unwrap();
/// let handle = server.shutdown_handle();
/// let loop_thread = std::thread::spawn(move || server.run());
/// handle.drain();
/// let summary = loop_thread.join().unwrap().unwrap();
/// assert_eq!(summary.stats.accepted, 0);
/// ```
#[derive(Debug, Clone)]
pub struct ShutdownHandle {
    /// Shared with the server, which owns the other end of the waker.
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// Wakes the server's `Poll` with the waker token.
    waker: Waker,
    /// Set once by the first `drain()`; never cleared.
    requested: AtomicBool,
    /// Set once the loop has acted on the request, so a spurious wake-up
    /// cannot count as a second request (which would force the stop).
    delivered: AtomicBool,
}

impl ShutdownHandle {
    pub(crate) fn new(waker: Waker) -> Self {
        ShutdownHandle {
            shared: Arc::new(Shared {
                waker,
                requested: AtomicBool::new(false),
                delivered: AtomicBool::new(false),
            }),
        }
    }

    /// Asks the server to drain, exactly as a drain signal would. Calling it
    /// again, or after the server stopped, does nothing.
    pub fn drain(&self) {
        if !self.shared.requested.swap(true, Ordering::SeqCst) {
            if let Err(err) = self.shared.waker.wake() {
                // Only fails if the Poll is gone, and then there is nothing to drain.
                log::debug!("drain request not delivered: {err}");
            }
        }
    }

    /// True once `drain()` has been called.
    pub fn is_drain_requested(&self) -> bool {
        self.shared.requested.load(Ordering::SeqCst)
    }

    /// True the first time the loop asks after `drain()` was called: the
    /// request is then delivered, and later asks say false.
    pub(crate) fn take_drain_request(&self) -> bool {
        self.is_drain_requested() && !self.shared.delivered.swap(true, Ordering::SeqCst)
    }
}
