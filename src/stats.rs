//! What the server counts, and what it hands back when it stops
//! (docs/protocol.md "Draining" 5, "Operations" `SIGUSR1`).
//!
//! Plain data: the server adds to [`Stats`] as connections come and go and
//! returns it in the [`Summary`] of [`crate::Server::run`]. Logging and
//! exporting the figures is the server's and the health listener's
//! (`/metrics`) business, not this module's.

use crate::connection::Closed;
use crate::drain::{DrainEnd, DrainReason};
use crate::health::CloseReason;
use crate::udp::UdpStats;

/// Counters kept over the server's life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Connections accepted since start, those the per-address limit closed
    /// at once included: every one is either still open or counted once
    /// by a close reason (`closed_by_peer`, `closed_on_error`,
    /// `idle_closed`, `rejected_per_ip`, `closed_at_deadline`, `closed_forced`).
    pub accepted: u64,
    /// Bytes echoed since start (read and queued for echo).
    pub bytes_echoed: u64,
    /// Connections closed because the peer was done (it closed its side and
    /// got everything owed to it), at any time.
    pub closed_by_peer: u64,
    /// Connections closed because their socket failed (reset, broken pipe).
    pub closed_on_error: u64,
    /// Connections that closed on their own after the drain began.
    pub left: u64,
    /// Connections the server closed at the drain's deadline.
    pub closed_at_deadline: u64,
    /// Connections the server closed at a forced stop (another signal while
    /// draining).
    pub closed_forced: u64,
    /// Connections the server closed because they were idle for
    /// `--idle-timeout` (docs/protocol.md "Protections"), counted when their
    /// write side is shut down; their socket's own close later is not
    /// counted again under another reason.
    pub idle_closed: u64,
    /// Connections accepted and closed at once because their source already
    /// held `--max-connections-per-ip` (or the address table was full).
    pub rejected_per_ip: u64,
    /// Log lines dropped because stderr would not take them at once
    /// (docs/protocol.md "Logs and notifications are best effort"); 0 unless
    /// echod's own logger is installed.
    pub log_lines_dropped: u64,
    /// The UDP echo's counters over every `--udp` socket (docs/protocol.md
    /// "UDP echo (RFC 862)"); all zero without `--udp`.
    pub udp: UdpStats,
}

impl Stats {
    /// Counts one connection's close by its reason.
    pub(crate) fn count_close(&mut self, why: Closed) {
        match why {
            Closed::PeerDone => self.closed_by_peer += 1,
            Closed::Failed(_) => self.closed_on_error += 1,
        }
    }

    /// Client connections closed since start by reason, in the order of
    /// `echod_connections_closed_total`'s `reason` label: peer, error, idle,
    /// per_ip, deadline, forced (docs/protocol.md "Lame duck and health").
    /// `left` is not a reason: those connections are counted under `peer`
    /// or `error` already.
    pub fn closed_by_reason(&self) -> [u64; CloseReason::COUNT] {
        CloseReason::ALL.map(|reason| match reason {
            CloseReason::Peer => self.closed_by_peer,
            CloseReason::Error => self.closed_on_error,
            CloseReason::Idle => self.idle_closed,
            CloseReason::PerIp => self.rejected_per_ip,
            CloseReason::Deadline => self.closed_at_deadline,
            CloseReason::Forced => self.closed_forced,
        })
    }
}

/// How the server's run ended, returned by [`crate::Server::run`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Summary {
    /// What started the drain.
    pub reason: DrainReason,
    /// How it ended: emptied, at the deadline, or forced.
    pub end: DrainEnd,
    /// The counters over the server's whole life.
    pub stats: Stats,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_close_reason_reads_its_own_counter() {
        let stats = Stats {
            closed_by_peer: 1,
            closed_on_error: 2,
            idle_closed: 3,
            rejected_per_ip: 4,
            closed_at_deadline: 5,
            closed_forced: 6,
            left: 99,
            ..Stats::default()
        };
        let closed = stats.closed_by_reason();
        assert_eq!(closed[CloseReason::Peer as usize], 1);
        assert_eq!(closed[CloseReason::Error as usize], 2);
        assert_eq!(closed[CloseReason::Idle as usize], 3);
        assert_eq!(closed[CloseReason::PerIp as usize], 4);
        assert_eq!(closed[CloseReason::Deadline as usize], 5);
        assert_eq!(closed[CloseReason::Forced as usize], 6);
    }
}
