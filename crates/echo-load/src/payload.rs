//! Payload generation and byte-exact verification of the echo stream.
//!
//! Owns the bytes echo-load sends and the check of every byte it gets back.
//! It does no I/O and keeps no per-message storage: each connection's outgoing
//! stream is a fixed function of (connection, byte offset), so verifying an
//! echo needs only a cursor (docs/protocol.md "The load generator": it
//! "verifies every echoed byte"; "its payload never contains the notice").
//!
//! The stream is read from a shared [`Pattern`]: a buffer of `2 * period`
//! bytes where the second half repeats the first, so any `period` bytes from
//! any offset are one contiguous slice. That lets a worker write a batch of
//! pipelined messages with one `write` and compare an echo with one `memcmp`.
//!
//! A [`Verifier`] also recognises the drain notice. TCP may deliver the last
//! echo and the notice in one read, or split the notice over several reads,
//! so the notice is recognised as the bytes that *end* the stream: the first
//! byte that is not valid echo opens a candidate notice, and at end-of-stream
//! the bytes from the candidate's start must equal the notice exactly.

use crate::Payload;

/// Length of a generated pattern's period, a prime so that message
/// boundaries and the pattern's period rarely line up.
const GENERATED_PERIOD: usize = 131_071;

/// The bytes every connection sends, shared read-only by all workers.
///
/// Invariant: `bytes.len() == 2 * period` and `bytes[i] == bytes[i + period]`.
#[derive(Debug)]
pub struct Pattern {
    /// The period, written twice in a row.
    bytes: Box<[u8]>,
    /// Length of one period; a multiple of `message_len` for literal payloads.
    period: usize,
    /// Bytes per message.
    message_len: usize,
    /// True for a literal payload: every stream then starts at offset 0 so
    /// each message is the literal text.
    is_literal: bool,
}

impl Pattern {
    /// Builds the pattern for `payload`, excluding every byte of `notice`
    /// from generated payloads.
    ///
    /// # Errors
    ///
    /// Returns a one-line reason when the payload is empty, when a literal
    /// payload contains the notice, or when the notice leaves no printable
    /// byte to build a payload from.
    pub fn new(payload: &Payload, notice: &[u8]) -> Result<Pattern, String> {
        match payload {
            Payload::Size(0) => Err("message size must be at least 1 byte".to_string()),
            Payload::Size(size) => {
                // Printable ASCII keeps captured traffic readable.
                let alphabet: Vec<u8> = (b' '..=b'~').filter(|b| !notice.contains(b)).collect();
                if alphabet.is_empty() {
                    return Err("the shutdown message uses every printable byte".to_string());
                }
                let mut period = vec![0u8; GENERATED_PERIOD];
                let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
                for byte in &mut period {
                    // xorshift64: cheap, deterministic, good enough to make
                    // every offset distinguishable from its neighbours.
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    *byte = alphabet[(state % alphabet.len() as u64) as usize];
                }
                Ok(Self::from_period(period, *size, false))
            }
            Payload::Literal(text) if text.is_empty() => {
                Err("the message must not be empty".to_string())
            }
            Payload::Literal(text) => {
                if contains(text, notice) {
                    return Err("the message contains the shutdown message".to_string());
                }
                let copies = GENERATED_PERIOD.div_ceil(text.len()).max(1);
                Ok(Self::from_period(text.repeat(copies), text.len(), true))
            }
        }
    }

    fn from_period(period: Vec<u8>, message_len: usize, is_literal: bool) -> Pattern {
        let len = period.len();
        let mut bytes = period;
        bytes.extend_from_within(..);
        Pattern {
            bytes: bytes.into_boxed_slice(),
            period: len,
            message_len,
            is_literal,
        }
    }

    /// Bytes per message.
    pub fn message_len(&self) -> usize {
        self.message_len
    }

    /// Where connection number `conn_id` starts reading the pattern, so that
    /// different connections send different bytes.
    pub fn base_for(&self, conn_id: u64) -> usize {
        if self.is_literal {
            0
        } else {
            (conn_id.wrapping_mul(7_919) % self.period as u64) as usize
        }
    }

    /// Up to `max` contiguous stream bytes starting at stream offset `offset`
    /// of the connection whose base is `base`; never empty when `max > 0`.
    pub fn slice(&self, base: usize, offset: u64, max: u64) -> &[u8] {
        let start = self.index(base, offset);
        let len = max.min(self.period as u64) as usize;
        &self.bytes[start..start + len]
    }

    /// The stream byte at `offset` for the connection whose base is `base`.
    pub fn byte_at(&self, base: usize, offset: u64) -> u8 {
        self.bytes[self.index(base, offset)]
    }

    fn index(&self, base: usize, offset: u64) -> usize {
        ((base as u64 + offset % self.period as u64) % self.period as u64) as usize
    }
}

/// True when `needle` occurs in `haystack` (an empty needle never does).
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// What the bytes seen so far say once the stream has ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The stream ended with the notice, preceded only by valid echo.
    Notice,
    /// The stream ended after valid echo only: cut without a notice.
    Cut,
    /// The stream ended with bytes that are neither echo nor the notice.
    Mismatch,
}

/// Bytes after the first non-echo byte, checked against the notice.
#[derive(Debug)]
struct Candidate {
    /// Possible positions inside the notice of the first non-echo byte. More
    /// than one only when echo bytes can themselves be notice bytes (a
    /// literal payload). Invariant: never empty.
    offsets: Vec<usize>,
    /// Bytes received since the first non-echo byte, included.
    matched: usize,
}

/// Per-connection cursor that checks echoed bytes against what was sent.
#[derive(Debug)]
pub struct Verifier {
    /// Where this connection's stream starts in the pattern.
    base: usize,
    /// Bytes received and found equal to the stream, from the start.
    verified: u64,
    /// Set at the first byte that is not valid echo.
    candidate: Option<Candidate>,
}

/// The echo contained a byte that is neither the echo nor part of a notice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mismatch;

impl Verifier {
    /// A cursor at the start of the stream whose pattern base is `base`.
    pub fn new(base: usize) -> Verifier {
        Verifier {
            base,
            verified: 0,
            candidate: None,
        }
    }

    /// Bytes verified as exact echo so far.
    pub fn verified(&self) -> u64 {
        self.verified
    }

    /// True once a byte that is not valid echo has arrived: the stream can
    /// now only end with the notice, and no further echo is accepted.
    pub fn has_candidate(&self) -> bool {
        self.candidate.is_some()
    }

    /// True when the bytes after the echo form the whole notice.
    pub fn is_notice_complete(&self, notice: &[u8]) -> bool {
        self.candidate
            .as_ref()
            .is_some_and(|c| c.offsets.iter().any(|&o| o + c.matched == notice.len()))
    }

    /// Checks `data`, the next bytes received, given that `sent` bytes of the
    /// stream have been written so far.
    ///
    /// # Errors
    ///
    /// Returns [`Mismatch`] as soon as the bytes can no longer be a prefix of
    /// the echo followed by the notice.
    pub fn feed(
        &mut self,
        pattern: &Pattern,
        notice: &[u8],
        sent: u64,
        data: &[u8],
    ) -> Result<(), Mismatch> {
        let mut rest = data;
        if self.candidate.is_none() {
            // Hot path: compare against the pattern, one slice at a time.
            while !rest.is_empty() && self.verified < sent {
                let want = (sent - self.verified).min(rest.len() as u64);
                let expected = pattern.slice(self.base, self.verified, want);
                let (head, tail) = rest.split_at(expected.len());
                if head == expected {
                    self.verified += expected.len() as u64;
                    rest = tail;
                    continue;
                }
                let same = head
                    .iter()
                    .zip(expected)
                    .take_while(|(a, b)| a == b)
                    .count();
                self.verified += same as u64;
                rest = &head[same..];
                // The candidate starts inside `head` and runs on into `tail`.
                self.open_candidate(pattern, notice)?;
                self.match_notice(notice, rest)?;
                return self.match_notice(notice, tail);
            }
            if rest.is_empty() {
                return Ok(());
            }
            // More bytes than were sent: only a notice can explain them.
            self.open_candidate(pattern, notice)?;
        }
        self.match_notice(notice, rest)
    }

    /// Starts a candidate notice at the first non-echo byte, at stream offset
    /// `verified`. The notice may have begun a little earlier when the last
    /// echo bytes are also its first bytes (only possible with a literal
    /// payload), so every such start is kept as a possibility.
    fn open_candidate(&mut self, pattern: &Pattern, notice: &[u8]) -> Result<(), Mismatch> {
        let p = self.verified;
        let longest = (notice.len() as u64).saturating_sub(1).min(p) as usize;
        let offsets: Vec<usize> = (0..=longest)
            .filter(|&o| {
                (0..o).all(|j| pattern.byte_at(self.base, p - o as u64 + j as u64) == notice[j])
            })
            .collect();
        if offsets.is_empty() {
            return Err(Mismatch);
        }
        self.candidate = Some(Candidate {
            offsets,
            matched: 0,
        });
        Ok(())
    }

    fn match_notice(&mut self, notice: &[u8], data: &[u8]) -> Result<(), Mismatch> {
        let Some(c) = self.candidate.as_mut() else {
            return Ok(());
        };
        for &byte in data {
            let m = c.matched;
            c.offsets
                .retain(|&o| notice.get(o + m).is_some_and(|&expected| expected == byte));
            c.matched += 1;
            if c.offsets.is_empty() {
                return Err(Mismatch);
            }
        }
        Ok(())
    }

    /// Judges the stream once the peer has ended it.
    pub fn ending(&self, notice: &[u8]) -> Ending {
        match &self.candidate {
            None => Ending::Cut,
            Some(_) if self.is_notice_complete(notice) => Ending::Notice,
            Some(_) => Ending::Mismatch,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOTICE: &[u8] = b"SHUTDOWN";

    fn stream(pattern: &Pattern, base: usize, len: usize) -> Vec<u8> {
        (0..len as u64).map(|i| pattern.byte_at(base, i)).collect()
    }

    /// Feeds `data` cut at `cuts` (sorted positions), stopping at the first error.
    fn feed_chunks(
        v: &mut Verifier,
        p: &Pattern,
        sent: u64,
        data: &[u8],
        cuts: &[usize],
    ) -> Result<(), Mismatch> {
        let mut last = 0;
        for &cut in cuts.iter().chain(std::iter::once(&data.len())) {
            let cut = cut.clamp(last, data.len());
            v.feed(p, NOTICE, sent, &data[last..cut])?;
            last = cut;
        }
        Ok(())
    }

    fn sorted(mut cuts: Vec<usize>, len: usize) -> Vec<usize> {
        cuts.iter_mut().for_each(|c| *c %= len + 1);
        cuts.sort_unstable();
        cuts
    }

    #[test]
    fn generated_payload_never_contains_notice_bytes() {
        let p = Pattern::new(&Payload::Size(64), NOTICE).unwrap();
        assert!(p.bytes.iter().all(|b| !NOTICE.contains(b)));
        assert_eq!(p.slice(0, 0, 10).len(), 10);
        assert_eq!(p.slice(5, p.period as u64 - 1, 1 << 40).len(), p.period);
    }

    #[test]
    fn literal_containing_the_notice_is_rejected() {
        let err = Pattern::new(&Payload::Literal(b"xxSHUTDOWNxx".to_vec()), NOTICE).unwrap_err();
        assert_eq!(err, "the message contains the shutdown message");
        assert!(Pattern::new(&Payload::Size(0), NOTICE).is_err());
    }

    #[test]
    fn literal_echo_that_looks_like_the_notice_start_still_drains() {
        // The literal ends with "SHUT", so the notice's first bytes are
        // indistinguishable from echo until "D" arrives.
        let p = Pattern::new(&Payload::Literal(b"abSHUT".to_vec()), NOTICE).unwrap();
        let mut v = Verifier::new(0);
        let mut data = b"abSHUTab".to_vec();
        data.extend_from_slice(NOTICE);
        assert_eq!(v.feed(&p, NOTICE, 12, &data), Ok(()));
        assert_eq!(v.ending(NOTICE), Ending::Notice);
    }

    #[test]
    fn bytes_after_the_notice_are_a_mismatch() {
        let p = Pattern::new(&Payload::Size(16), NOTICE).unwrap();
        let mut v = Verifier::new(3);
        let mut data = stream(&p, 3, 10);
        data.extend_from_slice(NOTICE);
        assert_eq!(v.feed(&p, NOTICE, 16, &data), Ok(()));
        assert!(v.is_notice_complete(NOTICE));
        assert_eq!(v.feed(&p, NOTICE, 16, b"x"), Err(Mismatch));
    }

    proptest! {
        #[test]
        fn exact_echo_is_accepted_split_anywhere(
            size in 1usize..300, base in 0usize..GENERATED_PERIOD, len in 0usize..3000,
            cuts in proptest::collection::vec(any::<usize>(), 0..12),
        ) {
            let p = Pattern::new(&Payload::Size(size), NOTICE).unwrap();
            let data = stream(&p, base, len);
            let mut v = Verifier::new(base);
            prop_assert_eq!(feed_chunks(&mut v, &p, len as u64, &data, &sorted(cuts, len)), Ok(()));
            prop_assert_eq!(v.verified(), len as u64);
            prop_assert_eq!(v.ending(NOTICE), Ending::Cut);
        }

        #[test]
        fn any_single_flipped_byte_is_rejected(
            base in 0usize..GENERATED_PERIOD, len in 1usize..2000, at in any::<usize>(),
            flip in 1u8..=255, cuts in proptest::collection::vec(any::<usize>(), 0..12),
        ) {
            let p = Pattern::new(&Payload::Size(64), NOTICE).unwrap();
            let mut data = stream(&p, base, len);
            let at = at % len;
            data[at] ^= flip;
            let mut v = Verifier::new(base);
            let fed = feed_chunks(&mut v, &p, len as u64, &data, &sorted(cuts, len));
            // A flip may still be pending as a candidate notice when it is
            // the last byte, but the stream can never end cleanly.
            prop_assert!(fed.is_err() || v.ending(NOTICE) == Ending::Mismatch);
            prop_assert!(v.verified() <= at as u64);
        }

        #[test]
        fn notice_is_recognised_split_anywhere_at_the_end(
            base in 0usize..GENERATED_PERIOD, echoed in 0usize..2000, extra in 0usize..500,
            cuts in proptest::collection::vec(any::<usize>(), 0..12),
        ) {
            let p = Pattern::new(&Payload::Size(100), NOTICE).unwrap();
            let mut data = stream(&p, base, echoed);
            data.extend_from_slice(NOTICE);
            let mut v = Verifier::new(base);
            let sent = (echoed + extra) as u64;
            let total = data.len();
            prop_assert_eq!(feed_chunks(&mut v, &p, sent, &data, &sorted(cuts, total)), Ok(()));
            prop_assert_eq!(v.verified(), echoed as u64);
            prop_assert_eq!(v.ending(NOTICE), Ending::Notice);
        }

        #[test]
        fn truncated_notice_is_not_a_drain(
            base in 0usize..GENERATED_PERIOD, echoed in 0usize..500, keep in 1usize..8,
        ) {
            let p = Pattern::new(&Payload::Size(10), NOTICE).unwrap();
            let mut data = stream(&p, base, echoed);
            data.extend_from_slice(&NOTICE[..keep]);
            let mut v = Verifier::new(base);
            prop_assert_eq!(v.feed(&p, NOTICE, echoed as u64, &data), Ok(()));
            prop_assert_eq!(v.ending(NOTICE), Ending::Mismatch);
        }
    }
}
