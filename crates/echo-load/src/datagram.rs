//! The UDP mode's wire format: what each datagram carries and the check of
//! every reply.
//!
//! Owns the header layout, the tag and the payload keystream. It does no
//! I/O and keeps no per-datagram storage: a datagram is a fixed function
//! of (run nonce, flow, sequence number, send time), so a reply is checked
//! from its own header alone (docs/protocol.md "The load generator": each
//! datagram carries a sequence number and a send time, and every reply is
//! verified). The accounting of verified replies is `udp_flow.rs`'s.
//!
//! Layout, every integer big-endian (network order, readable in a capture):
//!
//! ```text
//! bytes 0..8    sequence number within the flow, from 0
//! bytes 8..16   send time, nanoseconds since the load started
//! bytes 16..24  tag = mix(flow key, sequence number, send time)
//! bytes 24..    payload: keystream seeded by (flow key, sequence number)
//! ```
//!
//! The flow key mixes the run's random nonce with the flow number, so a
//! reply from another run, another flow or another datagram, or one whose
//! header was damaged, fails the tag. The mixing is splitmix64's finaliser:
//! it detects corruption and stale replies (a wrong tag passes with odds of
//! 2^-64), it is not authentication against a peer that wants to forge.

/// Bytes of header in front of every datagram's payload; also the smallest
/// datagram the UDP mode sends.
pub const HEADER_LEN: usize = 24;

/// The golden-ratio increment of splitmix64.
const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;
/// Separates the tag's input from the keystream's, so neither can stand in
/// for the other.
const TAG_SALT: u64 = 0x7467_6174_6167_6174;
const STREAM_SALT: u64 = 0x6d61_6572_7473_7473;

/// splitmix64's finaliser: a bijection on u64 whose every output bit
/// depends on every input bit.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The key of flow number `flow` in the run whose nonce is `nonce`.
pub fn flow_key(nonce: u64, flow: u64) -> u64 {
    mix(nonce ^ mix(flow.wrapping_add(GOLDEN)))
}

/// A random nonce for one run, so that replies to an earlier run (a stale
/// datagram on a reused port) fail the tag.
///
/// `RandomState` is seeded from the operating system's randomness once per
/// process and then per instance, which is all a nonce needs; no crate is
/// pulled in for it.
pub fn random_nonce() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(GOLDEN);
    hasher.finish()
}

fn tag(key: u64, seq: u64, send_ns: u64) -> u64 {
    mix(key ^ mix(seq ^ mix(send_ns ^ TAG_SALT)))
}

/// Word `i` of the payload keystream of datagram `seq` of the flow with
/// key `key` (splitmix64 in counter mode: any word without the others).
fn stream_word(seed: u64, i: usize) -> u64 {
    mix(seed.wrapping_add((i as u64).wrapping_add(1).wrapping_mul(GOLDEN)))
}

fn stream_seed(key: u64, seq: u64) -> u64 {
    mix(key ^ mix(seq ^ STREAM_SALT))
}

/// Writes datagram `seq` of the flow with key `key`, sent at `send_ns`,
/// over the whole of `buf` (whose length is the datagram size). A `buf`
/// shorter than [`HEADER_LEN`] gets as much of the header as fits (the
/// configuration never allows one).
pub fn encode(buf: &mut [u8], key: u64, seq: u64, send_ns: u64) {
    let mut header = [0u8; HEADER_LEN];
    header[..8].copy_from_slice(&seq.to_be_bytes());
    header[8..16].copy_from_slice(&send_ns.to_be_bytes());
    header[16..].copy_from_slice(&tag(key, seq, send_ns).to_be_bytes());
    let cut = buf.len().min(HEADER_LEN);
    let (head, payload) = buf.split_at_mut(cut);
    head.copy_from_slice(&header[..cut]);
    let seed = stream_seed(key, seq);
    let done = payload.len() / 8;
    let mut words = payload.chunks_exact_mut(8);
    for (i, chunk) in (&mut words).enumerate() {
        chunk.copy_from_slice(&stream_word(seed, i).to_le_bytes());
    }
    let tail = words.into_remainder();
    let last = stream_word(seed, done).to_le_bytes();
    tail.copy_from_slice(&last[..tail.len()]);
}

/// What a reply turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Exactly the datagram that was sent.
    Intact {
        /// Its sequence number.
        seq: u64,
        /// Its send time, nanoseconds since the load started.
        send_ns: u64,
    },
    /// A header that verifies and a correct but short payload: the reply
    /// was cut (xinetd returns at most 2,048 bytes).
    Truncated {
        /// Its sequence number.
        seq: u64,
        /// Its send time, nanoseconds since the load started.
        send_ns: u64,
    },
    /// A header that verifies but a payload that differs from what was
    /// sent, or is longer.
    Corrupt {
        /// Its sequence number.
        seq: u64,
        /// Its send time, nanoseconds since the load started.
        send_ns: u64,
    },
    /// Not a datagram of this flow in this run: shorter than the header, or
    /// a tag that does not match (damaged header, stale or foreign reply).
    Foreign,
}

/// Checks `reply`, received on the flow with key `key`, against the
/// datagram of `size` bytes its header says it is.
pub fn check(reply: &[u8], key: u64, size: usize) -> Verdict {
    let Some((seq, rest)) = reply.split_first_chunk::<8>() else {
        return Verdict::Foreign;
    };
    let Some((send_ns, rest)) = rest.split_first_chunk::<8>() else {
        return Verdict::Foreign;
    };
    let Some((got_tag, payload)) = rest.split_first_chunk::<8>() else {
        return Verdict::Foreign;
    };
    let (seq, send_ns) = (u64::from_be_bytes(*seq), u64::from_be_bytes(*send_ns));
    if u64::from_be_bytes(*got_tag) != tag(key, seq, send_ns) {
        return Verdict::Foreign;
    }
    let want = size.saturating_sub(HEADER_LEN);
    if payload.len() > want || !is_keystream_prefix(payload, stream_seed(key, seq)) {
        Verdict::Corrupt { seq, send_ns }
    } else if payload.len() < want {
        Verdict::Truncated { seq, send_ns }
    } else {
        Verdict::Intact { seq, send_ns }
    }
}

/// True when `payload` is the first `payload.len()` bytes of the keystream
/// seeded by `seed`: eight bytes compared at a time.
fn is_keystream_prefix(payload: &[u8], seed: u64) -> bool {
    let mut words = payload.chunks_exact(8);
    for (i, chunk) in (&mut words).enumerate() {
        let Ok(word) = <[u8; 8]>::try_from(chunk) else {
            return false;
        };
        if u64::from_le_bytes(word) != stream_word(seed, i) {
            return false;
        }
    }
    let tail = words.remainder();
    let last = stream_word(seed, payload.len() / 8).to_le_bytes();
    tail == &last[..tail.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn datagram(key: u64, seq: u64, send_ns: u64, size: usize) -> Vec<u8> {
        let mut buf = vec![0u8; size];
        encode(&mut buf, key, seq, send_ns);
        buf
    }

    #[test]
    fn header_is_big_endian_sequence_then_send_time() {
        let d = datagram(1, 0x0102, 0x0a0b, 40);
        assert_eq!(&d[..8], &[0, 0, 0, 0, 0, 0, 1, 2]);
        assert_eq!(&d[8..16], &[0, 0, 0, 0, 0, 0, 0x0a, 0x0b]);
    }

    #[test]
    fn a_reply_shorter_than_the_header_is_foreign() {
        let d = datagram(7, 3, 99, 64);
        for len in 0..HEADER_LEN {
            assert_eq!(check(&d[..len], 7, 64), Verdict::Foreign, "{len} bytes");
        }
    }

    #[test]
    fn another_run_or_flow_fails_the_tag() {
        let (a, b) = (flow_key(1, 0), flow_key(2, 0));
        let d = datagram(a, 5, 1_000, 100);
        assert_eq!(check(&d, b, 100), Verdict::Foreign);
        assert_eq!(check(&d, flow_key(1, 1), 100), Verdict::Foreign);
        assert_ne!(random_nonce(), random_nonce());
    }

    proptest! {
        #[test]
        fn every_datagram_checks_intact(
            key in any::<u64>(), seq in any::<u64>(), send_ns in any::<u64>(),
            size in HEADER_LEN..3000,
        ) {
            let d = datagram(key, seq, send_ns, size);
            prop_assert_eq!(check(&d, key, size), Verdict::Intact { seq, send_ns });
        }

        #[test]
        fn any_cut_that_keeps_the_header_is_truncated(
            key in any::<u64>(), seq in any::<u64>(), size in HEADER_LEN + 1..3000,
            cut in any::<usize>(),
        ) {
            let d = datagram(key, seq, 42, size);
            let len = HEADER_LEN + cut % (size - HEADER_LEN);
            prop_assert_eq!(check(&d[..len], key, size), Verdict::Truncated { seq, send_ns: 42 });
        }

        #[test]
        fn any_flipped_byte_is_caught(
            key in any::<u64>(), seq in any::<u64>(), size in HEADER_LEN..3000,
            at in any::<usize>(), flip in 1u8..=255, cut in any::<usize>(),
        ) {
            let mut d = datagram(key, seq, 42, size);
            let at = at % size;
            d[at] ^= flip;
            // Also cut after the flipped byte: a damaged prefix is no truncation.
            let len = at + 1 + cut % (size - at);
            let verdict = check(&d[..len], key, size);
            if at < HEADER_LEN {
                prop_assert_eq!(verdict, Verdict::Foreign);
            } else {
                prop_assert_eq!(verdict, Verdict::Corrupt { seq, send_ns: 42 });
            }
        }

        #[test]
        fn a_longer_reply_is_corrupt(
            key in any::<u64>(), seq in any::<u64>(), size in HEADER_LEN..3000, extra in 1usize..64,
        ) {
            let d = datagram(key, seq, 42, size + extra);
            prop_assert_eq!(check(&d, key, size), Verdict::Corrupt { seq, send_ns: 42 });
        }
    }
}
