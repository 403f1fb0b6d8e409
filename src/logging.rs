//! echod's logger: each line goes to stderr in one write that never waits
//! and never ends the process (docs/protocol.md "Logs and notifications are
//! best effort").
//!
//! A line that stderr will not take at once (a full disk, a log shipper
//! that stalled or went away) is dropped and counted; the next line that
//! gets through is preceded by `log lines dropped: count=N`, and
//! [`lines_dropped`] gives the total for the statistics. The readiness line
//! goes out whatever the level ([`announce`]). This module owns the line
//! format (one place, so timestamps are easy to turn off or compile out)
//! and the choice of how to write without waiting; the system calls
//! themselves live in `sys.rs`. `simple_logger` keeps the part it can do,
//! choosing levels (`--log-level`, `RUST_LOG`); it cannot write: its
//! `eprintln!` panics on any error (an abort with `panic = "abort"`) and
//! waits on a full pipe.
//!
//! # How a write is kept from waiting
//!
//! `O_NONBLOCK` on fd 2 itself is not an option: the flag belongs to the
//! open file description, which a terminal or a journal stream shares with
//! other processes. A reader that went away fails a write with `EPIPE`
//! (Rust programs ignore SIGPIPE; on a socket `MSG_NOSIGNAL` sees to it).
//! So, by what stderr is:
//!
//! - a socket (the journal's stream): `send(MSG_DONTWAIT)`, non-blocking for
//!   this one call;
//! - a pipe, FIFO or terminal: our own description of it, opened again
//!   through `/proc/self/fd/2` with `O_NONBLOCK` (that flag is then ours
//!   alone), and a plain `write`;
//! - a regular file: a plain `write`; it never waits for a reader, and a
//!   full disk fails it with `ENOSPC`;
//! - anything else, or a reopen that was refused (no `/proc`, a pipe owned
//!   by another user): `poll(POLLOUT, 0)`, then the write. On Linux a pipe
//!   that polls writable has a free page, and a line is at most `PIPE_BUF`
//!   (one page) long, so the write does not wait unless another process
//!   fills that page in between; a terminal may have less room than the
//!   line. That residue is why this is only the fallback. It also errs
//!   towards dropping: `poll` wants a free page while a write may still
//!   join the last one (measured: a one-page pipe polls full after its
//!   first 78-byte line).
//!
//! Measured on Linux 6.18 with a stalled one-page pipe: a `write` of up to
//! `PIPE_BUF` bytes on the reopened `O_NONBLOCK` description fails with
//! `EAGAIN` and the shared description stays blocking. `pwritev2` with
//! `RWF_NOWAIT` was rejected: pipes honour it only from Linux 6.4 (before,
//! `EOPNOTSUPP`), 6.4 without its follow-up fix could still wait, and
//! terminals and regular files refuse it (`EOPNOTSUPP`). One line is one
//! system call; it was three (the old guard's `poll`, then simple_logger's
//! text and newline apart, so another writer could split a line).

use std::fmt::{self, Write as _};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use log::{Level, LevelFilter, Log, Metadata, Record};
use simple_logger::SimpleLogger;

use crate::sys::{self, FileKind};

/// stderr.
const STDERR: RawFd = 2;

/// The longest line written, newline included: a write of at most
/// `PIPE_BUF` bytes to a pipe is all or nothing and never interleaved with
/// another writer's. Longer lines are cut.
const LINE_MAX: usize = sys::PIPE_BUF;

/// Where lines go, fixed by the first [`init`] or [`announce`].
static OUTPUT: OnceLock<Output> = OnceLock::new();
/// Lines dropped since start.
static DROPPED: AtomicUsize = AtomicUsize::new(0);
/// Lines dropped since the last `log lines dropped` line was written.
static UNREPORTED: AtomicUsize = AtomicUsize::new(0);
/// The last write got only part of a line out: the next one begins with a
/// newline, so the fragment does not swallow it.
static TORN: AtomicBool = AtomicBool::new(false);

/// Installs the logger: `level` if given, else `RUST_LOG`, else info;
/// `timestamps` puts the UTC time at the start of each line.
///
/// # Errors
///
/// Fails only if a logger is already installed.
pub fn init(level: Option<LevelFilter>, timestamps: bool) -> Result<(), log::SetLoggerError> {
    let filter = SimpleLogger::new().with_level(LevelFilter::Info);
    let filter = match level {
        Some(level) => filter.with_level(level),
        None => filter.env(),
    };
    let max_level = filter.max_level();
    OUTPUT.get_or_init(|| Output::open(timestamps));
    log::set_boxed_logger(Box::new(Logger { filter }))?;
    log::set_max_level(max_level);
    Ok(())
}

/// Writes one info line whatever the level, even `off`: the readiness line
/// scripts wait for (docs/protocol.md "Command line").
pub fn announce(args: fmt::Arguments<'_>) {
    output().line(Level::Info, "echod", args);
}

/// Lines dropped since start because stderr would not take them at once.
pub fn lines_dropped() -> usize {
    DROPPED.load(Ordering::Relaxed)
}

/// Writes `msg` from a signal handler if that cannot wait: only system
/// calls, no lock, no allocation. On the `poll` fallback (see the module
/// docs) it writes nothing, since another writer could make it wait.
pub(crate) fn write_from_signal_handler(msg: &[u8]) {
    // `OnceLock::get` is one atomic load once initialised: signal-safe.
    if let Some(out) = OUTPUT.get() {
        if out.sink.never_waits() {
            let _ = out.sink.write(msg);
        }
    }
}

fn output() -> &'static Output {
    OUTPUT.get_or_init(|| Output::open(true))
}

/// The `log` facade's end: simple_logger's level choice, our writing.
struct Logger {
    /// Decides which records are enabled; never asked to write.
    filter: SimpleLogger,
}

impl Log for Logger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.filter.enabled(metadata)
    }

    fn log(&self, record: &Record<'_>) {
        if self.filter.enabled(record.metadata()) {
            output().line(record.level(), record.target(), *record.args());
        }
    }

    fn flush(&self) {}
}

/// stderr as this process writes it.
struct Output {
    /// How a write is kept from waiting.
    sink: Sink,
    /// Lines begin with the UTC time (`--log-timestamps`).
    timestamps: bool,
}

impl Output {
    fn open(timestamps: bool) -> Output {
        Output {
            sink: Sink::open(),
            timestamps,
        }
    }

    /// Formats and writes one line, after the count of lines dropped
    /// before it if there is one to tell.
    fn line(&self, level: Level, target: &str, args: fmt::Arguments<'_>) {
        let unreported = UNREPORTED.load(Ordering::Relaxed);
        if unreported > 0 {
            let mut report = LineBuf::new();
            self.format(
                &mut report,
                Level::Warn,
                module_path!(),
                format_args!("log lines dropped: count={unreported}"),
            );
            if !self.put(&report) {
                count_drop();
                return;
            }
            UNREPORTED.fetch_sub(unreported, Ordering::Relaxed);
        }
        let mut line = LineBuf::new();
        self.format(&mut line, level, target, args);
        if !self.put(&line) {
            count_drop();
        }
    }

    /// The line format, the one place it is defined:
    /// `[TIMESTAMP ]LEVEL [target] message`.
    fn format(&self, out: &mut LineBuf, level: Level, target: &str, args: fmt::Arguments<'_>) {
        // LineBuf never fails a write: it cuts what does not fit.
        if self.timestamps {
            let _ = write_timestamp(out, SystemTime::now());
            let _ = out.write_char(' ');
        }
        let _ = write!(out, "{:<5} [{target}] {args}", level.as_str());
        out.finish();
    }

    /// One attempt to write the whole line; true when all of it went out.
    fn put(&self, line: &LineBuf) -> bool {
        let torn = TORN.load(Ordering::Relaxed);
        let bytes = line.bytes(torn);
        match self.sink.write(bytes) {
            Ok(n) if n == bytes.len() => {
                TORN.store(false, Ordering::Relaxed);
                true
            }
            Ok(n) => {
                // A terminal or a stream socket took part of it: the reader
                // has a line without its end until the next write adds one.
                if n > 0 {
                    TORN.store(bytes[n - 1] != b'\n', Ordering::Relaxed);
                }
                false
            }
            Err(_) => false,
        }
    }
}

fn count_drop() {
    DROPPED.fetch_add(1, Ordering::Relaxed);
    UNREPORTED.fetch_add(1, Ordering::Relaxed);
}

/// How a write to stderr is kept from waiting (see the module docs).
enum Sink {
    /// stderr is a socket: `send(MSG_DONTWAIT)` on fd 2.
    Socket,
    /// Our own non-blocking description of stderr's pipe, FIFO or terminal.
    Private(OwnedFd),
    /// stderr is a regular file: `write` on fd 2.
    File,
    /// Nothing better was possible: `poll`, then `write` on fd 2.
    Polled,
}

impl Sink {
    fn open() -> Sink {
        match sys::file_kind(STDERR) {
            Ok(FileKind::Socket) => Sink::Socket,
            Ok(FileKind::Regular) => Sink::File,
            Ok(FileKind::Fifo | FileKind::CharDevice) => match sys::reopen_nonblocking(STDERR) {
                Ok(fd) => Sink::Private(fd),
                Err(_) => Sink::Polled,
            },
            Ok(FileKind::Other) | Err(_) => Sink::Polled,
        }
    }

    /// True unless this is the `poll` fallback, which a racing writer can
    /// still make wait.
    fn never_waits(&self) -> bool {
        !matches!(self, Sink::Polled)
    }

    /// One write that does not wait; `WouldBlock` when stderr is full.
    fn write(&self, bytes: &[u8]) -> io::Result<usize> {
        loop {
            let result = match self {
                Sink::Socket => sys::send_nowait(STDERR, bytes),
                Sink::Private(fd) => sys::write_fd(fd.as_raw_fd(), bytes),
                Sink::File => sys::write_fd(STDERR, bytes),
                Sink::Polled if sys::is_writable_now(STDERR) => sys::write_fd(STDERR, bytes),
                Sink::Polled => Err(io::ErrorKind::WouldBlock.into()),
            };
            match result {
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }
}

/// One line in a fixed buffer: no allocation, cut at `LINE_MAX`.
struct LineBuf {
    /// `buf[0]` is always a newline, sent first only to end a torn line;
    /// the text starts at 1.
    buf: [u8; LINE_MAX],
    /// End of the text.
    len: usize,
}

impl LineBuf {
    fn new() -> LineBuf {
        let mut buf = [0; LINE_MAX];
        buf[0] = b'\n';
        LineBuf { buf, len: 1 }
    }

    /// Ends the line with its newline, cutting the text if it has to.
    fn finish(&mut self) {
        self.len = self.len.min(LINE_MAX - 1);
        self.buf[self.len] = b'\n';
        self.len += 1;
    }

    /// The line, with a newline in front when the last write was torn.
    fn bytes(&self, torn: bool) -> &[u8] {
        if torn {
            &self.buf[..self.len]
        } else {
            &self.buf[1..self.len]
        }
    }
}

impl fmt::Write for LineBuf {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        // Room for the text, leaving the last byte to the newline.
        let room = (LINE_MAX - 1).saturating_sub(self.len);
        let mut take = s.len().min(room);
        while !s.is_char_boundary(take) {
            take -= 1;
        }
        self.buf[self.len..self.len + take].copy_from_slice(&s.as_bytes()[..take]);
        self.len += take;
        Ok(())
    }
}

/// `2024-05-01T12:34:56.789Z`: UTC, milliseconds, as simple_logger wrote it.
fn write_timestamp(out: &mut impl fmt::Write, now: SystemTime) -> fmt::Result {
    // A clock before 1970 is broken; print the epoch rather than fail.
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (year, month, day) = civil_from_days(secs / 86_400);
    let of_day = secs % 86_400;
    write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60,
        since.subsec_millis()
    )
}

/// The proleptic Gregorian date `days` days after 1970-01-01 (Howard
/// Hinnant's `civil_from_days`, for days on or after the epoch).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    // Shift to 0000-03-01, so that a leap day ends its 400-year era.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn timestamp(secs: u64, millis: u64) -> String {
        let mut out = String::new();
        let at = UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(millis);
        write_timestamp(&mut out, at).unwrap();
        out
    }

    #[test]
    fn timestamps_are_utc_with_milliseconds() {
        assert_eq!(timestamp(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(timestamp(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(timestamp(1_709_251_199, 999), "2024-02-29T23:59:59.999Z");
        assert_eq!(timestamp(4_102_444_800, 0), "2100-01-01T00:00:00.000Z");
    }

    #[test]
    fn every_day_follows_the_one_before() {
        let mut prev = civil_from_days(0);
        for days in 1..200_000 {
            let next = civil_from_days(days);
            let (y, m, d) = prev;
            let expected = if next.2 == 1 {
                if m == 12 {
                    (y + 1, 1, 1)
                } else {
                    (y, m + 1, 1)
                }
            } else {
                (y, m, d + 1)
            };
            assert_eq!(next, expected, "day {days}");
            prev = next;
        }
    }

    fn formatted(timestamps: bool, args: fmt::Arguments<'_>) -> String {
        let out = Output {
            sink: Sink::Polled,
            timestamps,
        };
        let mut line = LineBuf::new();
        out.format(&mut line, Level::Info, "echod", args);
        String::from_utf8(line.bytes(false).to_vec()).unwrap()
    }

    #[test]
    fn lines_read_level_target_message() {
        assert_eq!(
            formatted(false, format_args!("listening on 127.0.0.1:9 pid=7")),
            "INFO  [echod] listening on 127.0.0.1:9 pid=7\n"
        );
        let stamped = formatted(true, format_args!("x"));
        assert!(stamped.ends_with("Z INFO  [echod] x\n"), "{stamped:?}");
        assert_eq!(
            stamped.len(),
            "2024-05-01T12:34:56.789Z INFO  [echod] x\n".len()
        );
    }

    #[test]
    fn long_lines_are_cut_on_a_character_and_still_end_with_a_newline() {
        let long = "é".repeat(LINE_MAX);
        let line = formatted(false, format_args!("{long}"));
        assert!(line.len() < LINE_MAX, "{}", line.len());
        assert!(line.ends_with("é\n"));
        let mut buf = LineBuf::new();
        let _ = buf.write_str("abc");
        buf.finish();
        assert_eq!(buf.bytes(true), b"\nabc\n");
    }
}
