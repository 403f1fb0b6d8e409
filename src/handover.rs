//! Take-over: a running echod hands its listening sockets to a new one over
//! a Unix socket, so a replacement loses no connect without systemd
//! (docs/protocol.md "Operations", take-over; issue 13).
//!
//! This module owns the wire format, the old instance's side
//! ([`HandoverListener`], a source the loop polls like any other) and the new
//! instance's side ([`take_over()`], blocking, run before the loop starts). It
//! does not own the `Poll`: like a connection, the old side's step functions
//! return a [`Step`] that says what the loop should do, and the loop
//! registers, deregisters and drops. It does not decide the drain either:
//! [`Step::HandedOver`] tells the loop the receiver is serving, and the loop
//! begins its drain. The `unsafe` (descriptor passing, `SO_PEERCRED`) lives
//! in `sys.rs`.
//!
//! # The exchange
//!
//! ```text
//! new instance                         old instance (--handover-socket PATH)
//!   connect(PATH) ------------------->  accept; SO_PEERCRED uid == our euid?
//!   REQUEST -------------------------->
//!                <--------------------  OFFER: one record per socket, and
//!                                       every descriptor in one SCM_RIGHTS
//!   validate each descriptor against
//!   its record; start serving them
//!   CONFIRM -------------------------->
//!                                       close the handover listener, then
//!                <------------ EOF ---  this connection; begin the drain
//!   bind PATH for the next take-over
//! ```
//!
//! Either side may send REFUSE (a one-line reason) instead of its next
//! message and close. The old instance refuses, logs one line and serves on
//! untouched when the peer runs as another user, speaks garbage, closes
//! early, declines, or does not confirm within the timeout. The new instance
//! reads end-of-stream after its CONFIRM as "the old instance let go"; a
//! REFUSE there means it did not (it timed out first), and the new instance
//! must not serve.
//!
//! # Wire format, version 1
//!
//! Every message is an 8-byte header and a body:
//!
//! ```text
//! header: magic "echd" (4) | version 1 (1) | type (1) | body length (2, big-endian)
//! type 1 REQUEST  new -> old  empty body
//! type 2 OFFER    old -> new  1..=253 records of 24 bytes; the descriptors ride on its first byte
//! type 3 CONFIRM  new -> old  empty body
//! type 4 REFUSE   either way  1..=200 bytes of UTF-8: the reason
//! record: kind (1: 1 tcp listener, 2 udp, 3 health listener) | family (1: 4 or 6)
//!         | port (2, big-endian) | IPv6 scope id (4, big-endian, 0 for IPv4)
//!         | address (16; IPv4 in the first 4, the rest zero)
//! ```
//!
//! At most 253 sockets: that is what one `SCM_RIGHTS` message may carry on
//! Linux (`SCM_MAX_FD`), and far more than echod ever listens on. Every
//! length a peer sends is checked against these bounds before it is used.
//!
//! Files: `handover/listener.rs` (the old side), `handover/take_over.rs`
//! (the new side, and the public [`TakenOver`] and [`Confirmation`]),
//! `handover/tests.rs` (the module's tests: the wire format, the socket
//! file, and both sides over real sockets). The loop's part is
//! `server/handover.rs`; the binary's sequence, `src/bin/echod/takeover.rs`.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::path::Path;

mod listener;
mod take_over;

pub(crate) use listener::{HandoverListener, Shared, Step, longest_temp_path};
pub(crate) use take_over::take_over;
pub use take_over::{Confirmation, TakenOver};
// The module's tests name these through `super::*`.
#[cfg(test)]
use listener::Refusal;
#[cfg(test)]
use take_over::{Received, TakeOverError};

/// How long each side of a take-over waits for the other: the running
/// instance for a request, then for the confirmation; the new instance for
/// the sockets, then for the running instance to let go ("a few seconds",
/// docs/protocol.md "Operations").
pub const TAKE_OVER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The first four bytes of every message.
const MAGIC: [u8; 4] = *b"echd";
/// The protocol version this echod speaks.
const VERSION: u8 = 1;
/// Bytes in a message header.
const HEADER_LEN: usize = 8;
/// Bytes in one socket record.
const RECORD_LEN: usize = 24;
/// The most sockets one offer carries: one `SCM_RIGHTS` message's limit.
pub(crate) const MAX_SOCKETS: usize = crate::sys::MAX_FDS_PER_MESSAGE;
/// The longest refusal reason, in bytes.
const MAX_REASON: usize = 200;
/// The longest message: an offer with [`MAX_SOCKETS`] records.
const MAX_MESSAGE: usize = HEADER_LEN + MAX_SOCKETS * RECORD_LEN;

/// Message type numbers (the header's sixth byte).
mod kind_byte {
    /// New -> old: "send me your sockets".
    pub const REQUEST: u8 = 1;
    /// Old -> new: the socket records (descriptors attached).
    pub const OFFER: u8 = 2;
    /// New -> old: "I am serving them".
    pub const CONFIRM: u8 = 3;
    /// Either way: "no", with a reason.
    pub const REFUSE: u8 = 4;
}

/// What a passed socket is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A TCP listener of the echo service (`--listen`).
    Tcp,
    /// A UDP echo socket (`--udp`).
    Udp,
    /// The health listener (`--health`).
    Health,
}

impl Kind {
    /// The record's kind byte.
    fn byte(self) -> u8 {
        match self {
            Kind::Tcp => 1,
            Kind::Udp => 2,
            Kind::Health => 3,
        }
    }

    /// The kind a record's byte names, if any.
    fn from_byte(byte: u8) -> Option<Kind> {
        match byte {
            1 => Some(Kind::Tcp),
            2 => Some(Kind::Udp),
            3 => Some(Kind::Health),
            _ => None,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Tcp => "tcp",
            Kind::Udp => "udp",
            Kind::Health => "health",
        })
    }
}

/// One passed socket's description: what it is and where it is bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Record {
    /// What the socket is for.
    pub(crate) kind: Kind,
    /// Its local address (IPv6 flow info is not carried and reads as 0).
    pub(crate) addr: SocketAddr,
}

impl fmt::Display for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind, self.addr)
    }
}

/// One decoded message.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Message {
    /// New -> old: asks for the sockets.
    Request,
    /// Old -> new: the sockets' descriptions, in descriptor order.
    Offer(Vec<Record>),
    /// New -> old: the new instance serves the sockets.
    Confirm,
    /// Either way: a refusal and its reason (lossy UTF-8, at most 200 bytes).
    Refuse(String),
}

/// Why bytes from a peer are not a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum WireError {
    /// The first bytes are not the magic: the peer is not echod.
    BadGreeting,
    /// The peer speaks another version of this protocol.
    Version(u8),
    /// The type byte names no message.
    UnknownType(u8),
    /// The body length is impossible for the message type.
    BadLength {
        /// The type byte.
        kind: u8,
        /// The length the header gave.
        len: usize,
    },
    /// A record does not parse.
    BadRecord {
        /// Its position in the offer, from 0.
        index: usize,
        /// What is wrong with it.
        detail: &'static str,
    },
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::BadGreeting => f.write_str("peer is not echod (bad greeting)"),
            WireError::Version(v) => write!(
                f,
                "peer speaks hand-over version {v}, this echod speaks {VERSION}"
            ),
            WireError::UnknownType(t) => write!(f, "unknown message type {t}"),
            WireError::BadLength { kind, len } => {
                write!(
                    f,
                    "message type {kind} with an impossible length of {len} bytes"
                )
            }
            WireError::BadRecord { index, detail } => write!(f, "record {index}: {detail}"),
        }
    }
}

/// A message header for `kind` with a body of `len` bytes (callers keep
/// `len` within [`MAX_MESSAGE`], far below `u16::MAX`).
fn header(kind: u8, len: usize) -> [u8; HEADER_LEN] {
    let len = u16::try_from(len).unwrap_or(u16::MAX).to_be_bytes();
    [
        MAGIC[0], MAGIC[1], MAGIC[2], MAGIC[3], VERSION, kind, len[0], len[1],
    ]
}

/// The REQUEST message.
pub(crate) fn encode_request() -> [u8; HEADER_LEN] {
    header(kind_byte::REQUEST, 0)
}

/// The CONFIRM message.
pub(crate) fn encode_confirm() -> [u8; HEADER_LEN] {
    header(kind_byte::CONFIRM, 0)
}

/// A REFUSE message; the reason is cut to 200 bytes (at a character
/// boundary) and an empty one becomes "refused".
pub(crate) fn encode_refuse(reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(MAX_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let reason = match &reason[..end] {
        "" => "refused",
        cut => cut,
    };
    let mut out = Vec::with_capacity(HEADER_LEN + reason.len());
    out.extend_from_slice(&header(kind_byte::REFUSE, reason.len()));
    out.extend_from_slice(reason.as_bytes());
    out
}

/// An OFFER message for `records`, or `None` when there are none or more
/// than [`MAX_SOCKETS`].
pub(crate) fn encode_offer(records: &[Record]) -> Option<Vec<u8>> {
    if records.is_empty() || records.len() > MAX_SOCKETS {
        return None;
    }
    let mut out = Vec::with_capacity(HEADER_LEN + records.len() * RECORD_LEN);
    out.extend_from_slice(&header(kind_byte::OFFER, records.len() * RECORD_LEN));
    for record in records {
        let mut bytes = [0u8; RECORD_LEN];
        bytes[0] = record.kind.byte();
        bytes[2..4].copy_from_slice(&record.addr.port().to_be_bytes());
        match record.addr {
            SocketAddr::V4(v4) => {
                bytes[1] = 4;
                bytes[8..12].copy_from_slice(&v4.ip().octets());
            }
            SocketAddr::V6(v6) => {
                bytes[1] = 6;
                bytes[4..8].copy_from_slice(&v6.scope_id().to_be_bytes());
                bytes[8..24].copy_from_slice(&v6.ip().octets());
            }
        }
        out.extend_from_slice(&bytes);
    }
    Some(out)
}

/// Decodes the message at the start of `buf`: `Ok(Some((message, bytes
/// used)))`, `Ok(None)` when more bytes are needed, or the reason the bytes
/// can never become a message. Garbage is reported as soon as one byte of
/// the magic is wrong, so a stray client is refused without waiting.
pub(crate) fn decode(buf: &[u8]) -> Result<Option<(Message, usize)>, WireError> {
    let magic_seen = buf.len().min(MAGIC.len());
    if buf.get(..magic_seen) != MAGIC.get(..magic_seen) {
        return Err(WireError::BadGreeting);
    }
    let Some(head) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let (version, kind) = (head[4], head[5]);
    let len = usize::from(u16::from_be_bytes([head[6], head[7]]));
    if version != VERSION {
        return Err(WireError::Version(version));
    }
    let len_ok = match kind {
        kind_byte::REQUEST | kind_byte::CONFIRM => len == 0,
        kind_byte::OFFER => len > 0 && len % RECORD_LEN == 0 && len / RECORD_LEN <= MAX_SOCKETS,
        kind_byte::REFUSE => (1..=MAX_REASON).contains(&len),
        other => return Err(WireError::UnknownType(other)),
    };
    if !len_ok {
        return Err(WireError::BadLength { kind, len });
    }
    let Some(body) = buf.get(HEADER_LEN..HEADER_LEN + len) else {
        return Ok(None);
    };
    let message = match kind {
        kind_byte::REQUEST => Message::Request,
        kind_byte::CONFIRM => Message::Confirm,
        kind_byte::REFUSE => Message::Refuse(String::from_utf8_lossy(body).into_owned()),
        _ => Message::Offer(
            body.chunks_exact(RECORD_LEN)
                .enumerate()
                .map(|(index, bytes)| {
                    // chunks_exact yields exactly RECORD_LEN bytes each.
                    let bytes = bytes.try_into().map_err(|_| "short record");
                    bytes
                        .and_then(decode_record)
                        .map_err(|detail| WireError::BadRecord { index, detail })
                })
                .collect::<Result<_, _>>()?,
        ),
    };
    Ok(Some((message, HEADER_LEN + len)))
}

/// Decodes one 24-byte record.
fn decode_record(bytes: &[u8; RECORD_LEN]) -> Result<Record, &'static str> {
    let kind = Kind::from_byte(bytes[0]).ok_or("unknown socket kind")?;
    let port = u16::from_be_bytes([bytes[2], bytes[3]]);
    let scope = u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    let mut ip = [0u8; 16];
    ip.copy_from_slice(&bytes[8..]);
    let addr = match bytes[1] {
        4 if scope == 0 && ip[4..] == [0; 12] => {
            SocketAddr::from((Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]), port))
        }
        4 => return Err("IPv4 record with IPv6 bytes set"),
        6 => SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::from(ip), port, 0, scope)),
        _ => return Err("unknown address family"),
    };
    Ok(Record { kind, addr })
}

/// The longest path a Unix socket address holds, in bytes (`sun_path`
/// less its terminating NUL, on Linux).
pub(crate) const MAX_PATH: usize = 107;

/// Why `path` cannot name a Unix socket for a take-over, if it cannot: it
/// is empty, or longer than [`MAX_PATH`] (`bound`: also with the temporary
/// name a [`HandoverListener`] binds beside it first).
pub(crate) fn path_problem(path: &Path, bound: bool) -> Option<String> {
    let len = path.as_os_str().len();
    if len == 0 {
        return Some("must name a Unix socket".to_owned());
    }
    if len > MAX_PATH {
        return Some(format!(
            "is {len} bytes; a Unix socket path holds at most {MAX_PATH}"
        ));
    }
    let temp = longest_temp_path(path);
    if bound && temp > MAX_PATH {
        return Some(format!(
            "its directory is too long: the temporary socket bound beside it may take {temp} bytes, \
             a Unix socket path holds at most {MAX_PATH}"
        ));
    }
    None
}

/// `d` as operators write it: "5s", "0.5s".
fn seconds(d: std::time::Duration) -> String {
    format!("{}s", d.as_secs_f64())
}

#[cfg(test)]
mod tests;
