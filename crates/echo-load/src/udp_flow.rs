//! Per-flow accounting of the UDP mode: which datagrams came back, and in
//! what order and rhythm.
//!
//! Owns the received bitmap, duplicates, reordering and the RFC 3550
//! inter-arrival jitter of one flow. It is pure: it is told what was sent
//! and what arrived when (nanoseconds since the load started), and never
//! reads a clock or a socket, so every figure is unit-tested with made-up
//! arrivals. Checking a reply's bytes is `datagram.rs`'s; loss over the
//! whole run is `udp_report.rs`'s (docs/protocol.md "The load generator":
//! loss, duplicates, reordering and jitter, like irtt).
//!
//! Definitions, per flow:
//! - a datagram is *answered* by its first reply; later replies to it are
//!   *duplicates*;
//! - an answered datagram is *reordered* when its sequence number is below
//!   the highest one answered before it (RFC 4737's reordered packet); its
//!   distance is that highest number minus its own;
//! - jitter is RFC 3550 section 6.4.1's estimator over answered datagrams
//!   in arrival order: with D the difference of their transit times,
//!   J += (|D| - J) / 16.

use std::collections::TryReserveError;

/// Bits per bitmap word.
const WORD_BITS: u64 = 64;

/// What an arrival was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Arrival {
    /// The first reply to this datagram.
    First,
    /// A datagram that was already answered.
    Duplicate,
    /// A sequence number this flow has not sent: nothing is counted.
    Unsent,
}

/// One flow's accounting.
#[derive(Debug)]
pub(crate) struct FlowStats {
    /// Bit `seq` is set once datagram `seq` is answered. Grows one word per
    /// 64 datagrams numbered, inside capacity reserved for the whole plan
    /// up front, so it never reallocates during the run.
    bits: Vec<u64>,
    /// Datagrams numbered so far (sent or not); every one below has a bit.
    numbered: u64,
    /// Datagrams answered. Invariant: the number of bits set.
    answered: u64,
    /// Replies to datagrams already answered.
    duplicates: u64,
    /// Highest sequence number answered so far.
    highest: Option<u64>,
    /// Answered datagrams that arrived after a higher-numbered one.
    reordered: u64,
    /// Largest `highest - seq` over reordered datagrams.
    max_distance: u64,
    /// Receive and send time of the previous answered datagram, in arrival
    /// order, in nanoseconds since the load started.
    previous: Option<(u64, u64)>,
    /// The RFC 3550 estimate J, in nanoseconds.
    jitter_ns: f64,
}

impl FlowStats {
    /// Accounting for a flow that will number at most `planned` datagrams.
    ///
    /// # Errors
    ///
    /// Fails when the bitmap for `planned` datagrams cannot be reserved.
    pub(crate) fn new(planned: u64) -> Result<FlowStats, TryReserveError> {
        let words = usize::try_from(planned.div_ceil(WORD_BITS)).unwrap_or(usize::MAX);
        let mut bits = Vec::new();
        // Address space only: pages are touched as datagrams are numbered.
        bits.try_reserve_exact(words)?;
        Ok(FlowStats {
            bits,
            numbered: 0,
            answered: 0,
            duplicates: 0,
            highest: None,
            reordered: 0,
            max_distance: 0,
            previous: None,
            jitter_ns: 0.0,
        })
    }

    /// Numbers the flow's next datagram and returns its sequence number.
    pub(crate) fn number_next(&mut self) -> u64 {
        let seq = self.numbered;
        if seq % WORD_BITS == 0 {
            // Inside the reserved capacity while the plan is kept.
            self.bits.push(0);
        }
        self.numbered += 1;
        seq
    }

    /// Records a verified reply to datagram `seq`, sent at `send_ns` (from
    /// its header) and received at `recv_ns`.
    pub(crate) fn arrive(&mut self, seq: u64, send_ns: u64, recv_ns: u64) -> Arrival {
        if seq >= self.numbered {
            return Arrival::Unsent;
        }
        let Some(word) = usize::try_from(seq / WORD_BITS)
            .ok()
            .and_then(|i| self.bits.get_mut(i))
        else {
            return Arrival::Unsent;
        };
        let bit = 1u64 << (seq % WORD_BITS);
        if *word & bit != 0 {
            self.duplicates += 1;
            return Arrival::Duplicate;
        }
        *word |= bit;
        self.answered += 1;
        match self.highest {
            Some(highest) if seq < highest => {
                self.reordered += 1;
                self.max_distance = self.max_distance.max(highest - seq);
            }
            _ => self.highest = Some(seq),
        }
        if let Some((prev_recv, prev_send)) = self.previous {
            // RFC 3550 6.4.1: D(i-1, i) = (R_i - R_i-1) - (S_i - S_i-1), in
            // signed arithmetic since a reordered datagram was sent earlier.
            let d = (i128::from(recv_ns) - i128::from(prev_recv))
                - (i128::from(send_ns) - i128::from(prev_send));
            self.jitter_ns += (d.unsigned_abs() as f64 - self.jitter_ns) / 16.0;
        }
        self.previous = Some((recv_ns, send_ns));
        Arrival::First
    }

    /// Datagrams answered.
    pub(crate) fn answered(&self) -> u64 {
        self.answered
    }

    /// Replies to datagrams already answered.
    pub(crate) fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// Reordered datagrams and the largest distance among them.
    pub(crate) fn reordering(&self) -> (u64, u64) {
        (self.reordered, self.max_distance)
    }

    /// The jitter estimate in nanoseconds; `None` before two datagrams
    /// were answered (there is no transit difference yet).
    pub(crate) fn jitter_ns(&self) -> Option<f64> {
        (self.answered >= 2).then_some(self.jitter_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A flow that numbered `n` datagrams.
    fn flow(n: u64) -> FlowStats {
        let mut f = FlowStats::new(n).expect("reserve a small bitmap");
        for i in 0..n {
            assert_eq!(f.number_next(), i);
        }
        f
    }

    const MS: u64 = 1_000_000;

    #[test]
    fn in_order_arrivals_are_neither_reordered_nor_duplicated() {
        let mut f = flow(100);
        for seq in (0..100).filter(|s| s % 10 != 9) {
            assert_eq!(f.arrive(seq, seq * MS, seq * MS + 50_000), Arrival::First);
        }
        assert_eq!(f.answered(), 90);
        assert_eq!(f.duplicates(), 0);
        assert_eq!(f.reordering(), (0, 0));
        // A constant transit time: no jitter at all.
        assert_eq!(f.jitter_ns(), Some(0.0));
    }

    #[test]
    fn a_late_datagram_counts_once_with_its_distance() {
        let mut f = flow(10);
        // 0, 4, 1, 2, 3, 5: only 1, 2 and 3 came after a higher number.
        for (i, seq) in [0, 4, 1, 2, 3, 5].into_iter().enumerate() {
            assert_eq!(f.arrive(seq, seq * MS, i as u64 * MS), Arrival::First);
        }
        assert_eq!(f.reordering(), (3, 3));
        // One datagram held back behind the next two: one reordered, distance 2.
        let mut f = flow(10);
        for (i, seq) in [0, 1, 3, 4, 2, 5, 6].into_iter().enumerate() {
            f.arrive(seq, seq * MS, i as u64 * MS);
        }
        assert_eq!(f.reordering(), (1, 2));
    }

    #[test]
    fn duplicates_count_apart_and_do_not_look_reordered() {
        let mut f = flow(5);
        let arrivals = [0, 1, 1, 2, 0, 3, 3, 3];
        let kinds: Vec<Arrival> = arrivals
            .iter()
            .enumerate()
            .map(|(i, &seq)| f.arrive(seq, seq * MS, i as u64 * MS))
            .collect();
        use Arrival::{Duplicate as D, First as F};
        assert_eq!(kinds, [F, F, D, F, D, F, D, D]);
        assert_eq!(f.duplicates(), 4);
        assert_eq!(f.answered(), 4);
        assert_eq!(f.reordering(), (0, 0));
    }

    #[test]
    fn sequence_numbers_never_sent_are_ignored_without_a_panic() {
        let mut f = flow(3);
        assert_eq!(f.arrive(3, 0, 0), Arrival::Unsent);
        assert_eq!(f.arrive(u64::MAX, u64::MAX, 0), Arrival::Unsent);
        assert_eq!(f.answered(), 0);
        assert_eq!(f.jitter_ns(), None);
    }

    #[test]
    fn jitter_follows_rfc_3550_step_by_step() {
        let mut f = flow(4);
        // Transit times 1 ms, 3 ms, 2 ms, 2 ms: |D| = 2 ms, 1 ms, 0.
        let transits = [MS, 3 * MS, 2 * MS, 2 * MS];
        let mut want = 0.0;
        let mut prev: Option<u64> = None;
        for (seq, transit) in transits.into_iter().enumerate() {
            let seq = seq as u64;
            f.arrive(seq, seq * 10 * MS, seq * 10 * MS + transit);
            if let Some(p) = prev {
                want += ((transit as f64 - p as f64).abs() - want) / 16.0;
            }
            prev = Some(transit);
        }
        let got = f.jitter_ns().expect("four arrivals");
        assert!((got - want).abs() < 1e-6, "{got} != {want}");
        // By hand: 2/16 = 0.125 ms, then 0.125 + (1 - 0.125)/16, then that * 15/16.
        let by_hand = (0.125 + (1.0 - 0.125) / 16.0) * 15.0 / 16.0 * MS as f64;
        assert!((got - by_hand).abs() < 1e-3, "{got} != {by_hand}");
    }

    #[test]
    fn alternating_delays_converge_to_their_difference() {
        // The reflector test's pattern: every other reply 4 ms later.
        let mut f = flow(400);
        for seq in 0..400 {
            let delay = if seq % 2 == 0 { 0 } else { 4 * MS };
            f.arrive(seq, seq * 10 * MS, seq * 10 * MS + 30_000 + delay);
        }
        let j = f.jitter_ns().expect("many arrivals");
        assert!((j - 4.0 * MS as f64).abs() < 1.0, "{j}");
    }

    #[test]
    fn a_reordered_arrival_uses_signed_transit_differences() {
        // Datagram 1 sent after 0 but arriving first: D must not wrap.
        let mut f = flow(2);
        f.arrive(1, 10 * MS, 11 * MS);
        f.arrive(0, 0, 12 * MS);
        // Transits 1 ms then 12 ms: |D| = 11 ms, J = 11/16 ms.
        let j = f.jitter_ns().expect("two arrivals");
        assert!((j - 11.0 * MS as f64 / 16.0).abs() < 1e-6, "{j}");
        assert_eq!(f.reordering(), (1, 1));
    }

    #[test]
    fn the_bitmap_never_grows_past_its_reservation() {
        let mut f = FlowStats::new(130).expect("reserve");
        let capacity = f.bits.capacity();
        for _ in 0..130 {
            f.number_next();
        }
        assert_eq!(f.bits.len(), 3);
        assert_eq!(f.bits.capacity(), capacity);
    }
}
