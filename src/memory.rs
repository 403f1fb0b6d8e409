//! The memory budget: every connection's pending echo bytes are charged to
//! one [`Budget`] bounded by `--max-pending-total`, and held in a
//! [`Pending`] buffer whose capacity never exceeds what its bound needs
//! (docs/protocol.md "Running", memory budget).
//!
//! This module owns the accounting and the allocations, and nothing else: it
//! does not read sockets, decide what a connection does next, or talk to the
//! `Poll`. The connection asks it how much it may read and where to keep what
//! the kernel would not take; the server asks it whether waiting connections
//! can be served again and whether freed memory should go back to the OS.
//!
//! What is charged is capacity, not length: a buffer that was written out in
//! part keeps its capacity (and its charge) and is refilled without asking
//! for more. Capacities grow exactly (`try_reserve_exact`), never by
//! doubling past the bound, and a buffer written out in full is freed.
//!
//! Allocation failure is handled like a spent budget, never an abort. Reads
//! are cut to what the budget allows *before* reading, and a connection with
//! something pending reserves room before it reads. The one remainder that
//! cannot be reserved in advance (a read written straight back in part, from
//! a connection with nothing pending, on the steady path that must not
//! allocate) goes, if its allocation fails, into a spare buffer allocated at
//! start; until the spare can be allocated again, nothing with an empty
//! buffer reads ([`Budget::fast_read`] is 0).

use std::collections::TryReserveError;

/// What a connection with nothing pending may read while the budget is
/// spent, so that a client reading its echo is never starved by clients
/// that do not (docs/protocol.md "Running"). It is also the most a
/// connection can hold beyond the budget, so it is kept small: with
/// 10,000 connections, 20 MiB.
pub const SMALL_READ: usize = 2 * 1024;

/// The shared account of pending memory.
#[derive(Debug)]
pub struct Budget {
    /// `--max-pending-total`: capacity all pending buffers may hold together
    /// (a connection with nothing pending may still read [`SMALL_READ`], and
    /// a notice is never refused, so the total may pass it by those).
    limit: usize,
    /// Capacity of every pending buffer together, the spare's excluded.
    charged: usize,
    /// The most one read may take: the read buffer's size, cut to `--max-pending`.
    max_read: usize,
    /// What a connection with nothing pending may read now; `usize::MAX`
    /// while the spare is out, so that the fast path's one bounds check on
    /// the read buffer (`get_mut(..fast_read)`) also says "do not read".
    fast_read: usize,
    /// Room for one remainder when its allocation fails; empty while lent out.
    spare: Vec<u8>,
    /// The spare's size: the largest remainder a connection with nothing
    /// pending can leave (one read, or one notice).
    spare_len: usize,
    /// An allocation failed and no memory was freed since: nothing that
    /// needs more memory is retried, exactly as when the budget is spent.
    blocked: bool,
    /// Capacity freed since the server last returned memory to the OS.
    freed: usize,
    /// Memory was freed (or an allocation failed) since the server last
    /// looked: waiting connections may be served, memory may be returned to
    /// the OS, a failure may be worth a warning.
    changed: bool,
    /// Episodes of allocation failure so far: each begins with a failure
    /// after memory was freed (or at start).
    failures: u64,
    /// Tests only: make every allocation fail, as under a spent `RLIMIT_AS`.
    #[cfg(test)]
    pub(crate) fail_allocations: bool,
}

impl Budget {
    /// A budget of `limit` bytes for reads of at most `max_read` bytes and a
    /// notice of `notice_len` bytes. Allocates the spare (a start-up
    /// allocation, like the read buffer).
    pub fn new(limit: usize, max_read: usize, notice_len: usize) -> Self {
        let spare_len = max_read.max(notice_len);
        let mut budget = Budget {
            limit,
            charged: 0,
            max_read,
            fast_read: 0,
            spare: Vec::with_capacity(spare_len),
            spare_len,
            blocked: false,
            freed: 0,
            changed: false,
            failures: 0,
            #[cfg(test)]
            fail_allocations: false,
        };
        budget.update();
        budget
    }

    /// How much a connection with nothing pending may read now: up to the
    /// budget left, at least [`SMALL_READ`], never more than one read; 0
    /// while the spare is lent out (the remainder would have nowhere to go).
    pub fn fast_read(&self) -> usize {
        if self.fast_read > self.max_read {
            0
        } else {
            self.fast_read
        }
    }

    /// [`Self::fast_read`] for the steady path, with "do not read" as
    /// `usize::MAX`, longer than any read buffer: slicing the buffer to it
    /// fails, and that one check serves both (callgrind counted the second).
    #[inline(always)]
    pub fn fast_read_or_max(&self) -> usize {
        self.fast_read
    }

    /// Capacity not yet charged, within the limit.
    pub fn free(&self) -> usize {
        if self.blocked {
            0
        } else {
            self.limit.saturating_sub(self.charged)
        }
    }

    /// Capacity of every pending buffer together (the spare excluded).
    pub fn charged(&self) -> usize {
        self.charged
    }

    /// True when connections waiting for budget may be served again: there
    /// is budget left, no allocation failed since memory was last freed, and
    /// the spare is in place.
    pub fn has_room(&self) -> bool {
        self.free() > 0 && self.spare.capacity() > 0
    }

    /// True when memory was freed (or an allocation failed) since the mark
    /// was last taken.
    #[inline(always)]
    pub fn is_changed(&self) -> bool {
        self.changed
    }

    /// Takes the "memory was freed or an allocation failed" mark; true when it was set.
    #[inline(always)]
    pub fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    /// Capacity freed since the count was last taken.
    pub fn freed(&self) -> usize {
        self.freed
    }

    /// Bytes freed since the last call; resets the count.
    pub fn take_freed(&mut self) -> usize {
        std::mem::take(&mut self.freed)
    }

    fn charge(&mut self, bytes: usize) {
        self.charged += bytes;
        self.update();
    }

    fn uncharge(&mut self, bytes: usize) {
        self.charged -= bytes;
        self.freed += bytes;
        self.changed = true;
        self.blocked = false;
        if self.spare.capacity() == 0 {
            // Freed memory is the moment to get the spare back.
            let _ = self.spare.try_reserve_exact(self.spare_len);
        }
        self.update();
    }

    fn fail(&mut self) {
        if !self.blocked {
            self.failures += 1;
            self.changed = true;
        }
        self.blocked = true;
        self.update();
    }

    /// Episodes of allocation failure so far (for the server's warning).
    pub fn failures(&self) -> u64 {
        self.failures
    }

    fn update(&mut self) {
        self.fast_read = if self.spare.capacity() == 0 {
            usize::MAX
        } else {
            self.max_read.min(self.free().max(SMALL_READ))
        };
    }

    /// `try_reserve_exact`, failing on demand in tests.
    fn try_reserve(&self, bytes: &mut Vec<u8>, additional: usize) -> Result<(), OutOfMemory> {
        #[cfg(test)]
        if self.fail_allocations && bytes.capacity() - bytes.len() < additional {
            return Err(OutOfMemory);
        }
        bytes.try_reserve_exact(additional)?;
        Ok(())
    }
}

/// A connection's unsent echo bytes. Holds heap memory only while
/// non-empty; its capacity is charged to the [`Budget`] and never exceeds
/// the connection's bound (`--max-pending`, plus one notice).
#[derive(Debug, Default)]
pub struct Pending {
    /// The bytes, oldest first; capacity exactly what was reserved.
    bytes: Vec<u8>,
}

/// A failed allocation: nothing was stored or reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutOfMemory;

impl From<TryReserveError> for OutOfMemory {
    fn from(_: TryReserveError) -> Self {
        OutOfMemory
    }
}

impl Pending {
    /// Bytes waiting to be written.
    #[inline(always)]
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// True when nothing waits (and no heap memory is held).
    #[inline(always)]
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The bytes waiting, oldest first.
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes
    }

    /// Heap memory held, in bytes (what is charged to the budget).
    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.bytes.capacity()
    }

    /// Bytes that can be appended without growing.
    pub fn slack(&self) -> usize {
        self.bytes.capacity() - self.bytes.len()
    }

    /// Makes room for `additional` more bytes than it holds, growing exactly
    /// (to length + `additional`), and charges the growth. The budget is the caller's to check; this only fails when
    /// the allocation does (then nothing changes and the budget is blocked
    /// until memory is freed).
    pub fn reserve(&mut self, budget: &mut Budget, additional: usize) -> Result<(), OutOfMemory> {
        let before = self.bytes.capacity();
        if let Err(err) = budget.try_reserve(&mut self.bytes, additional) {
            budget.fail();
            return Err(err);
        }
        budget.charge(self.bytes.capacity() - before);
        Ok(())
    }

    /// True when `n` more bytes are sure to be storable: there is slack, or
    /// the buffer is empty and the spare could take them, or room was
    /// reserved now.
    pub fn make_room(&mut self, budget: &mut Budget, n: usize) -> bool {
        if self.slack() >= n || (self.bytes.capacity() == 0 && budget.spare.capacity() >= n) {
            return true;
        }
        self.reserve(budget, n).is_ok()
    }

    /// Appends `bytes`, growing exactly when needed. When the buffer is
    /// empty and the allocation fails, the spare takes them (it is sized for
    /// the largest such remainder) and reads with nothing pending stop until
    /// memory is freed.
    ///
    /// # Errors
    ///
    /// [`OutOfMemory`] when the bytes could not be stored; callers make room
    /// first ([`Self::make_room`]), so this only happens if they did not.
    #[cold]
    pub fn push(&mut self, budget: &mut Budget, bytes: &[u8]) -> Result<(), OutOfMemory> {
        if self.slack() < bytes.len() && self.reserve(budget, bytes.len()).is_err() {
            if self.bytes.capacity() != 0 || budget.spare.capacity() < bytes.len() {
                return Err(OutOfMemory);
            }
            self.bytes = std::mem::take(&mut budget.spare);
            budget.charge(self.bytes.capacity());
        }
        self.bytes.extend_from_slice(bytes);
        Ok(())
    }

    /// Drops the first `n` bytes (the kernel took them). A buffer written out
    /// in full is freed and its charge returned: an idle connection owns no heap.
    pub fn consume(&mut self, budget: &mut Budget, n: usize) {
        if n >= self.bytes.len() {
            self.release(budget);
        } else {
            self.bytes.drain(..n);
        }
    }

    /// Frees the buffer and returns its charge (the connection is closing,
    /// or everything was written).
    pub fn release(&mut self, budget: &mut Budget) {
        let capacity = self.bytes.capacity();
        if capacity > 0 {
            self.bytes = Vec::new();
            budget.uncharge(capacity);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_grows_exactly_and_is_charged() {
        let mut budget = Budget::new(1 << 20, 64 * 1024, 8);
        let mut pending = Pending::default();
        for _ in 0..4 {
            pending.reserve(&mut budget, 65_536).unwrap();
            pending.push(&mut budget, &[1; 65_536]).unwrap();
        }
        // Exactly the bound, not the 504,332 bytes doubling once made of it.
        assert_eq!(pending.capacity(), 262_144);
        assert_eq!(budget.charged(), 262_144);
        pending.consume(&mut budget, 100);
        assert_eq!(
            budget.charged(),
            262_144,
            "a partial write keeps its capacity"
        );
        pending.consume(&mut budget, 262_044);
        assert_eq!((pending.capacity(), budget.charged()), (0, 0));
        assert_eq!(budget.take_freed(), 262_144);
        assert!(budget.take_changed());
    }

    #[test]
    fn a_spent_budget_still_lets_an_empty_connection_read_a_little() {
        let mut budget = Budget::new(100_000, 64 * 1024, 8);
        assert_eq!(budget.fast_read(), 64 * 1024);
        let mut pending = Pending::default();
        pending.push(&mut budget, &[0; 99_000]).unwrap();
        assert_eq!(budget.fast_read(), SMALL_READ);
        assert_eq!(budget.free(), 1_000);
        pending.reserve(&mut budget, 1_000).unwrap();
        assert_eq!(pending.capacity(), 100_000);
        assert!(!budget.has_room());
        pending.release(&mut budget);
        assert!(budget.has_room());
        assert_eq!(budget.fast_read(), 64 * 1024);
    }

    #[test]
    fn a_failed_allocation_lends_the_spare_and_blocks_until_memory_is_freed() {
        let mut budget = Budget::new(usize::MAX, 4096, 8);
        let mut holder = Pending::default();
        holder.reserve(&mut budget, 100).unwrap();
        budget.fail_allocations = true;
        let mut pending = Pending::default();
        assert_eq!(pending.reserve(&mut budget, 10), Err(OutOfMemory));
        assert_eq!(budget.free(), 0, "a failed allocation spends the budget");
        assert!(!budget.has_room());
        assert_eq!(budget.fast_read(), SMALL_READ);
        // A remainder whose allocation fails goes into the spare...
        pending.push(&mut budget, &[7; 3000]).unwrap();
        assert_eq!(pending.as_slice(), &[7; 3000][..]);
        assert_eq!(pending.capacity(), 4096);
        // ...after which nothing with an empty buffer reads, and a second
        // remainder cannot be stored (callers make room first).
        assert_eq!(budget.fast_read(), 0);
        assert!(!Pending::default().make_room(&mut budget, 1));
        assert_eq!(Pending::default().push(&mut budget, &[1]), Err(OutOfMemory));
        // Freed memory unblocks the budget and brings the spare back.
        budget.fail_allocations = false;
        holder.release(&mut budget);
        assert!(budget.has_room());
        assert_eq!(budget.fast_read(), 4096);
        pending.release(&mut budget);
        assert_eq!(budget.charged(), 0);
    }
}
