//! Opt-in signal handling: the four drain signals and SIGUSR1 as ordinary
//! events on the server's `Poll` (docs/protocol.md "Draining" 6, "Operations").
//!
//! [`SignalWatcher::install`] puts the handlers in place; the server
//! registers the watcher's pipe with its `Poll` ([`crate::Server::watch_signals`])
//! and asks it what arrived. This module decides nothing about the drain: it
//! reports which signals came and how many times. The library never installs
//! handlers unless the embedder calls `install`.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1};
use signal_hook_mio::v1_0::Signals;

use crate::error::Error;

/// The signals that start a drain, and escalate it when repeated.
pub(crate) const DRAIN_SIGNALS: [libc::c_int; 4] = [SIGHUP, SIGINT, SIGTERM, SIGQUIT];

/// Deliveries of drain signals after which the handler itself exits.
pub(crate) const EXIT_IN_HANDLER_AT: usize = 3;

/// The installed handlers and the pipe they write to.
pub struct SignalWatcher {
    /// signal-hook-mio's self-pipe, readable when a signal arrived.
    signals: Signals,
    /// Drain signals delivered so far, counted in the handler: signal-hook-mio
    /// reports a signal that arrived twice before the pipe was read only once.
    delivered: Arc<AtomicUsize>,
    /// How many of `delivered` the loop has already been told about.
    reported: usize,
    /// The delivery count at which the handler itself exits: the loop
    /// lowers it as the drain goes on ([`SignalWatcher::set_exit_at`]).
    exit_at: Arc<AtomicUsize>,
}

/// What arrived since the last [`SignalWatcher::take`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Received {
    /// The first drain signal's name, if any arrived.
    pub drain: Option<&'static str>,
    /// How many drain signals arrived (at least 1 when `drain` is set).
    pub drain_count: usize,
    /// SIGUSR1 arrived at least once.
    pub stats: bool,
}

impl std::fmt::Debug for SignalWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignalWatcher")
            .field("delivered", &self.delivered)
            .field("reported", &self.reported)
            .finish_non_exhaustive()
    }
}

impl SignalWatcher {
    /// Installs the handlers for SIGHUP, SIGINT, SIGTERM, SIGQUIT and SIGUSR1.
    ///
    /// Overrides an inherited "ignore" disposition (a shell starts `echod &`
    /// with SIGINT and SIGQUIT ignored) and unblocks the signals. `pid_file`
    /// is removed by the third signal's handler before it exits.
    ///
    /// # Errors
    ///
    /// [`Error::Setup`] when a handler or the pipe cannot be created.
    pub fn install(pid_file: Option<&Path>) -> Result<Self, Error> {
        let setup = |source| Error::Setup {
            what: "signal handling",
            source,
        };
        let mut all = DRAIN_SIGNALS.to_vec();
        all.push(SIGUSR1);
        crate::sys::unblock_signals(&all).map_err(setup)?;
        let delivered = Arc::new(AtomicUsize::new(0));
        let exit_at = Arc::new(AtomicUsize::new(EXIT_IN_HANDLER_AT));
        let unlink = pid_file.and_then(|p| CString::new(p.as_os_str().as_bytes()).ok());
        for sig in DRAIN_SIGNALS {
            crate::sys::register_escalation(
                sig,
                Arc::clone(&delivered),
                Arc::clone(&exit_at),
                unlink.clone(),
                say_exiting_now,
            )
            .map_err(setup)?;
        }
        let signals = Signals::new(&all).map_err(setup)?;
        Ok(SignalWatcher {
            signals,
            delivered,
            reported: 0,
            exit_at,
        })
    }

    /// Sets the count of drain signals at which the handler exits the
    /// process itself: two after the one that began the drain proper, so
    /// "another forces, the next exits" holds after a lame duck too
    /// (docs/protocol.md "Draining" 6). The loop calls it after every
    /// transition; a signal that races with it exits at most one late, and
    /// the loop forces the stop meanwhile.
    pub(crate) fn set_exit_at(&self, count: usize) {
        self.exit_at.store(count, Ordering::SeqCst);
    }

    /// The pipe, for the server to register with its `Poll`.
    pub(crate) fn source(&mut self) -> &mut Signals {
        &mut self.signals
    }

    /// Reads what arrived since the last call. Reads the pipe until empty.
    pub(crate) fn take(&mut self) -> Received {
        let mut received = Received::default();
        let mut distinct = 0;
        for sig in self.signals.pending() {
            if sig == SIGUSR1 {
                received.stats = true;
                continue;
            }
            distinct += 1;
            if received.drain.is_none() {
                received.drain = Some(signal_name(sig));
            }
        }
        let delivered = self.delivered.load(Ordering::SeqCst);
        let counted = delivered.saturating_sub(self.reported);
        self.reported = delivered.max(self.reported + distinct);
        received.drain_count = counted.max(distinct);
        if received.drain_count > 0 && received.drain.is_none() {
            // The pipe's report was merged into an earlier read; the counter saw it.
            received.drain = Some("signal");
        }
        received
    }
}

/// The third signal's last words, if stderr takes them at once: the handler
/// must not wait on a full pipe (docs/protocol.md "Draining" 6). Without
/// echod's logger ([`crate::logging::init`]) nothing is written, since
/// nothing then says whether a write to fd 2 could wait.
fn say_exiting_now() {
    #[cfg(feature = "cli")]
    crate::logging::write_from_signal_handler(b"echod: third signal: exiting now\n");
}

/// The conventional name of a drain signal.
pub(crate) fn signal_name(sig: libc::c_int) -> &'static str {
    match sig {
        SIGHUP => "SIGHUP",
        SIGINT => "SIGINT",
        SIGTERM => "SIGTERM",
        SIGQUIT => "SIGQUIT",
        SIGUSR1 => "SIGUSR1",
        _ => "signal",
    }
}
