//! The per-address connection limit, `--max-connections-per-ip`
//! (docs/protocol.md "Protections"): a table of how many connections each
//! source holds, the admission answer for a new one, and when to warn.
//!
//! A source is an IPv4 address or an IPv6 /64 prefix (one subscriber's
//! usual allocation, so an attacker cannot dodge the limit by walking its
//! own /64); an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, what a
//! dual-stack listener reports) is the IPv4 address it carries.
//!
//! It owns the table and the warning cadence. It does not own sockets, the
//! clock, logging or the `rejected_per_ip` counter: the loop asks
//! [`PerIp::admit`] for each accepted connection (with the `now` it read once
//! for the accept batch), closes a rejected one at once (reading off any
//! input first so the close is a FIN, not a reset), logs when told to warn,
//! and calls [`PerIp::release`] when an admitted connection closes.
//!
//! Memory: an entry exists only while its source has an open connection,
//! and is freed when the count returns to zero, so the table never holds
//! more entries than `--max-connections`. It grows as needed (one table
//! allocation now and then as new sources arrive, never per message; a
//! failed allocation refuses the connection instead of aborting) and gives
//! memory back as it empties.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

/// A source's rejection episode ends once none of its connections has been
/// rejected for this long (docs/protocol.md "Logs and notifications are best effort").
pub const EPISODE_GAP: Duration = Duration::from_secs(1);

/// At most one per-address warning per this interval, whatever the source.
pub const WARN_INTERVAL: Duration = Duration::from_secs(1);

/// Below this many slots the table is never shrunk: not worth a rehash.
const MIN_SHRINK_CAPACITY: usize = 64;

/// Where a connection comes from, as far as the limit is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// An IPv4 address, or the one an IPv4-mapped IPv6 address carries.
    V4(Ipv4Addr),
    /// An IPv6 /64 prefix: the address's top 64 bits.
    V6(u64),
}

impl Source {
    /// The source `ip` belongs to.
    pub fn of(ip: IpAddr) -> Source {
        match ip {
            IpAddr::V4(v4) => Source::V4(v4),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source::V4(v4),
                None => Source::V6((v6.to_bits() >> 64) as u64),
            },
        }
    }
}

impl From<IpAddr> for Source {
    fn from(ip: IpAddr) -> Source {
        Source::of(ip)
    }
}

impl fmt::Display for Source {
    /// `192.0.2.7`, or `2001:db8:1:2::/64`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::V4(v4) => v4.fmt(f),
            Source::V6(prefix) => {
                write!(f, "{}/64", Ipv6Addr::from_bits(u128::from(*prefix) << 64))
            }
        }
    }
}

/// The answer for a connection just accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Serve it; call [`PerIp::release`] with its address when it closes.
    Accepted,
    /// Its source already holds the limit: close it at once with nothing
    /// sent, and count it (`rejected_per_ip`). Not to be released.
    Rejected {
        /// Log the per-address warning now: the first rejection of this
        /// source's episode, or the first one the once-a-second cap let through.
        warn: bool,
    },
    /// The table cannot take a new source: it holds `--max-connections`
    /// entries already (only reachable if the loop admits past that limit),
    /// or growing it failed. Close it like a rejection, without the warning.
    /// Not to be released.
    NoRoom,
}

/// What the table knows about one source.
#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Connections from this source that are open; at least 1 (an entry at
    /// 0 is removed) and at most the limit.
    open: u32,
    /// When one of its connections was last rejected; `None` before any.
    last_rejected: Option<Instant>,
    /// The current episode's warning was given (cleared when a new episode starts).
    warned: bool,
}

/// The per-address table and its warning cadence.
#[derive(Debug)]
pub struct PerIp {
    /// `--max-connections-per-ip`; 0 means no limit, and then the table stays empty.
    limit: u32,
    /// `--max-connections`: the most entries the table may hold.
    max_entries: usize,
    /// Open connections per source; only sources with at least one.
    table: HashMap<Source, Entry>,
    /// When the last per-address warning was given, for the overall cap.
    last_warning: Option<Instant>,
}

impl PerIp {
    /// A table for `limit` connections per source (0 = no limit), bounded by
    /// `max_connections` sources. Allocates nothing until the first admission.
    pub fn new(limit: usize, max_connections: usize) -> Self {
        PerIp {
            // A limit past u32::MAX can never be reached by u32 counts of
            // open connections, which is what "no practical limit" means.
            limit: u32::try_from(limit).unwrap_or(u32::MAX),
            max_entries: max_connections,
            table: HashMap::new(),
            last_warning: None,
        }
    }

    /// True when a limit is set.
    #[inline]
    pub fn is_enabled(&self) -> bool {
        self.limit != 0
    }

    /// The limit: connections one source may hold (0 = no limit).
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// Sources that hold at least one open connection.
    #[cfg(test)] // Used by the unit tests only.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// True when no source holds a connection.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Admits or rejects a connection from `source` (a peer's `IpAddr`, or
    /// its [`Source`]), accepted at `now`.
    pub fn admit(&mut self, source: impl Into<Source>, now: Instant) -> Admit {
        if !self.is_enabled() {
            return Admit::Accepted;
        }
        let source = source.into();
        if let Some(entry) = self.table.get_mut(&source) {
            if entry.open < self.limit {
                entry.open += 1;
                return Admit::Accepted;
            }
            // docs/protocol.md "Logs...": a new episode once rejections were absent a second.
            if entry
                .last_rejected
                .is_none_or(|last| now.saturating_duration_since(last) >= EPISODE_GAP)
            {
                entry.warned = false;
            }
            entry.last_rejected = Some(now);
            let cap_allows = self
                .last_warning
                .is_none_or(|last| now.saturating_duration_since(last) >= WARN_INTERVAL);
            // A warning held back by the overall cap is given at this
            // source's next rejection in the same episode, if there is one.
            let warn = !entry.warned && cap_allows;
            if warn {
                entry.warned = true;
                self.last_warning = Some(now);
            }
            return Admit::Rejected { warn };
        }
        if self.table.len() >= self.max_entries || self.table.try_reserve(1).is_err() {
            return Admit::NoRoom;
        }
        self.table.insert(
            source,
            Entry {
                open: 1,
                last_rejected: None,
                warned: false,
            },
        );
        Admit::Accepted
    }

    /// A connection from `source` that [`PerIp::admit`] accepted has closed.
    /// Frees the source's entry when it was the last. Returns false when
    /// there was nothing to release (no limit, or the table was cleared).
    ///
    /// The loop keeps each connection's [`Source`] (16 bytes) to pass here;
    /// asking the socket for its peer at close would be a system call, and
    /// fails once the peer has reset.
    pub fn release(&mut self, source: impl Into<Source>) -> bool {
        let source = source.into();
        let Some(entry) = self.table.get_mut(&source) else {
            return false;
        };
        entry.open = entry.open.saturating_sub(1);
        if entry.open == 0 {
            self.table.remove(&source);
            self.shrink();
        }
        true
    }

    /// Forgets every source and frees the table: at drain start, when
    /// nothing is admitted any more; later releases are no-ops.
    pub fn clear(&mut self) {
        self.table = HashMap::new();
    }

    /// Gives memory back once the table is at most a quarter full (all of it
    /// when empty), so a flood of sources leaves no big table behind. A
    /// small table is kept: one client connecting and leaving over and over
    /// then costs no allocation. The smaller table is reserved fallibly: if
    /// that fails, the big one stays.
    fn shrink(&mut self) {
        let capacity = self.table.capacity();
        if capacity <= MIN_SHRINK_CAPACITY || self.table.len() * 4 > capacity {
            return;
        }
        if self.table.is_empty() {
            self.table = HashMap::new();
            return;
        }
        let mut smaller = HashMap::new();
        if smaller.try_reserve(self.table.len() * 2).is_ok() {
            smaller.extend(self.table.drain());
            self.table = smaller;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("test address")
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    const REJECTED: Admit = Admit::Rejected { warn: false };
    const WARNED: Admit = Admit::Rejected { warn: true };

    #[test]
    fn ipv6_addresses_in_one_64_share_a_count() {
        let t0 = Instant::now();
        let mut per_ip = PerIp::new(2, 100);
        assert_eq!(per_ip.admit(ip("2001:db8:1:2::1"), t0), Admit::Accepted);
        assert_eq!(
            per_ip.admit(ip("2001:db8:1:2:ffff:ffff:ffff:fffe"), t0),
            Admit::Accepted
        );
        assert_eq!(per_ip.admit(ip("2001:db8:1:2::9"), t0), WARNED);
        // The neighbouring /64 is another source.
        assert_eq!(per_ip.admit(ip("2001:db8:1:3::1"), t0), Admit::Accepted);
        assert_eq!(per_ip.len(), 2);
        assert_eq!(
            Source::of(ip("2001:db8:1:2::77")).to_string(),
            "2001:db8:1:2::/64"
        );
    }

    #[test]
    fn ipv4_addresses_are_counted_one_by_one() {
        let t0 = Instant::now();
        let mut per_ip = PerIp::new(1, 100);
        assert_eq!(per_ip.admit(ip("192.0.2.1"), t0), Admit::Accepted);
        assert_eq!(per_ip.admit(ip("192.0.2.2"), t0), Admit::Accepted);
        assert_eq!(per_ip.admit(ip("192.0.2.1"), t0), WARNED);
        assert_eq!(Source::of(ip("192.0.2.1")).to_string(), "192.0.2.1");
    }

    #[test]
    fn an_ipv4_mapped_address_is_the_ipv4_address() {
        let t0 = Instant::now();
        let mut per_ip = PerIp::new(1, 100);
        assert_eq!(
            Source::of(ip("::ffff:192.0.2.1")),
            Source::of(ip("192.0.2.1"))
        );
        assert_eq!(per_ip.admit(ip("192.0.2.1"), t0), Admit::Accepted);
        assert_eq!(per_ip.admit(ip("::ffff:192.0.2.1"), t0), WARNED);
        assert!(per_ip.release(Source::of(ip("::ffff:192.0.2.1"))));
        assert!(per_ip.is_empty());
        // Not an IPv4-compatible (::a.b.c.d) or NAT64 address: those are IPv6.
        assert_eq!(Source::of(ip("::192.0.2.1")), Source::V6(0));
    }

    #[test]
    fn the_limit_admits_n_and_rejects_the_next() {
        let t0 = Instant::now();
        let mut per_ip = PerIp::new(5, 100);
        for _ in 0..5 {
            assert_eq!(per_ip.admit(ip("198.51.100.9"), t0), Admit::Accepted);
        }
        assert_eq!(per_ip.admit(ip("198.51.100.9"), t0), WARNED);
        assert_eq!(per_ip.admit(ip("198.51.100.9"), t0), REJECTED);
        assert_eq!(per_ip.len(), 1);
    }

    #[test]
    fn a_release_frees_the_slot_and_the_last_one_the_entry() {
        let t0 = Instant::now();
        let a = ip("203.0.113.5");
        let mut per_ip = PerIp::new(2, 100);
        assert_eq!(per_ip.admit(a, t0), Admit::Accepted);
        assert_eq!(per_ip.admit(a, t0), Admit::Accepted);
        assert_eq!(per_ip.admit(a, t0), WARNED);
        assert!(per_ip.release(a));
        assert_eq!(per_ip.admit(a, t0), Admit::Accepted);
        assert!(per_ip.release(a));
        assert!(per_ip.release(a));
        assert!(per_ip.is_empty());
        assert!(!per_ip.release(a), "nothing left to release");
    }

    #[test]
    fn no_limit_keeps_no_table() {
        let t0 = Instant::now();
        let mut per_ip = PerIp::new(0, 100);
        assert!(!per_ip.is_enabled());
        for _ in 0..1000 {
            assert_eq!(per_ip.admit(ip("192.0.2.1"), t0), Admit::Accepted);
        }
        assert!(per_ip.is_empty());
        assert_eq!(per_ip.table.capacity(), 0);
        assert!(!per_ip.release(ip("192.0.2.1")));
    }

    #[test]
    fn one_warning_per_episode_and_a_new_episode_after_a_quiet_second() {
        let t0 = Instant::now();
        let a = ip("192.0.2.1");
        let mut per_ip = PerIp::new(1, 100);
        assert_eq!(per_ip.admit(a, t0), Admit::Accepted);
        assert_eq!(per_ip.admit(a, t0), WARNED);
        // Rejections less than a second apart keep the episode going, for
        // far longer than a second in all.
        for step in 1..=30 {
            assert_eq!(
                per_ip.admit(a, t0 + ms(step * 900)),
                REJECTED,
                "step {step}"
            );
        }
        // A second without a rejection ends it; the next rejection warns.
        let quiet = t0 + ms(30 * 900 + 1_000);
        assert_eq!(per_ip.admit(a, quiet), WARNED);
        assert_eq!(per_ip.admit(a, quiet + ms(10)), REJECTED);
    }

    #[test]
    fn at_most_one_warning_a_second_overall_and_a_held_back_one_comes_later() {
        let t0 = Instant::now();
        let (a, b, c) = (ip("192.0.2.1"), ip("192.0.2.2"), ip("192.0.2.3"));
        let mut per_ip = PerIp::new(1, 100);
        for source in [a, b, c] {
            assert_eq!(per_ip.admit(source, t0), Admit::Accepted);
        }
        assert_eq!(per_ip.admit(a, t0), WARNED);
        // b's episode starts 100 ms later: held back by the overall cap.
        assert_eq!(per_ip.admit(b, t0 + ms(100)), REJECTED);
        assert_eq!(per_ip.admit(b, t0 + ms(900)), REJECTED);
        // Still b's episode (gaps under a second), and the cap allows one now.
        assert_eq!(per_ip.admit(b, t0 + ms(1_000)), WARNED);
        // c's first rejection in the same second waits too.
        assert_eq!(per_ip.admit(c, t0 + ms(1_500)), REJECTED);
        assert_eq!(per_ip.admit(c, t0 + ms(2_000)), WARNED);
        // a was quiet since t0: a new episode, held back by the cap (c
        // warned at 2.0 s) until 3.0 s.
        assert_eq!(per_ip.admit(a, t0 + ms(2_500)), REJECTED);
        assert_eq!(per_ip.admit(a, t0 + ms(3_000)), WARNED);
    }

    #[test]
    fn an_entry_freed_and_made_again_starts_a_new_episode() {
        let t0 = Instant::now();
        let a = ip("192.0.2.1");
        let mut per_ip = PerIp::new(1, 100);
        assert_eq!(per_ip.admit(a, t0), Admit::Accepted);
        assert_eq!(per_ip.admit(a, t0), WARNED);
        assert!(per_ip.release(a));
        assert_eq!(per_ip.admit(a, t0 + ms(1_100)), Admit::Accepted);
        assert_eq!(per_ip.admit(a, t0 + ms(1_200)), WARNED);
    }

    #[test]
    fn the_table_never_holds_more_sources_than_max_connections() {
        let t0 = Instant::now();
        let mut per_ip = PerIp::new(10, 3);
        for last in 1..=3 {
            assert_eq!(
                per_ip.admit(ip(&format!("192.0.2.{last}")), t0),
                Admit::Accepted
            );
        }
        assert_eq!(per_ip.admit(ip("192.0.2.4"), t0), Admit::NoRoom);
        // A source already in the table is still counted.
        assert_eq!(per_ip.admit(ip("192.0.2.1"), t0), Admit::Accepted);
        assert_eq!(per_ip.len(), 3);
        assert!(per_ip.release(ip("192.0.2.3")));
        assert_eq!(per_ip.admit(ip("192.0.2.4"), t0), Admit::Accepted);
    }

    #[test]
    fn the_table_gives_memory_back_as_it_empties() {
        let t0 = Instant::now();
        let mut per_ip = PerIp::new(1, 100_000);
        let addrs: Vec<IpAddr> = (0..10_000u32)
            .map(|n| IpAddr::V4(Ipv4Addr::from_bits(0x0a00_0000 + n)))
            .collect();
        for &a in &addrs {
            assert_eq!(per_ip.admit(a, t0), Admit::Accepted);
        }
        let full = per_ip.table.capacity();
        assert!(full >= 10_000);
        for &a in &addrs[..9_990] {
            assert!(per_ip.release(a));
        }
        assert_eq!(per_ip.len(), 10);
        assert!(
            per_ip.table.capacity() <= MIN_SHRINK_CAPACITY * 2,
            "{}",
            per_ip.table.capacity()
        );
        for &a in &addrs[9_990..] {
            assert!(per_ip.release(a));
        }
        assert!(per_ip.is_empty());
        assert!(per_ip.table.capacity() <= MIN_SHRINK_CAPACITY);
        // A big table found empty (as after a shrink that could not
        // allocate) is freed entirely.
        for &a in &addrs {
            assert_eq!(per_ip.admit(a, t0), Admit::Accepted);
        }
        for &a in &addrs {
            per_ip.table.remove(&Source::of(a));
        }
        per_ip.shrink();
        assert_eq!(per_ip.table.capacity(), 0);
    }

    #[test]
    fn clear_forgets_everything_and_later_releases_are_no_ops() {
        let t0 = Instant::now();
        let mut per_ip = PerIp::new(1, 100);
        assert_eq!(per_ip.admit(ip("192.0.2.1"), t0), Admit::Accepted);
        per_ip.clear();
        assert!(per_ip.is_empty());
        assert!(!per_ip.release(ip("192.0.2.1")));
    }
}
