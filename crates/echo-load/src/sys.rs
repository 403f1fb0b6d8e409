//! The operating-system layer: echo-load's only `unsafe` and libc-level code.
//!
//! Thin wrappers around one system call each, with a safe signature. They
//! own no state and make no policy; the callers decide what an error means.
//! echod's `src/sys.rs` has its own copies: the two packages share no code,
//! so the server's library never carries the load generator and the load
//! generator never links the server.
//!
//! # Notes
//!
//! Linux is the target; only Linux is tested.

use std::io;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd};
use std::ptr;
use std::time::Duration;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit.
///
/// # Errors
///
/// Returns the OS error when the limit cannot be read or set.
pub fn raise_nofile_limit() -> io::Result<()> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit for the duration of the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: `raised` is a valid rlimit; the kernel only reads it.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// True when `err` says the process or the system has run out of descriptors
/// (`EMFILE`, `ENFILE`), or the kernel out of socket memory (`ENOBUFS`, `ENOMEM`).
pub fn is_resource_exhausted(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Pins the calling thread to one CPU.
///
/// # Errors
///
/// Returns the OS error from `sched_setaffinity` (for example when `cpu` does
/// not exist or is not allowed for this process).
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain data; zeroed is its empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: `cpu` is below CPU_SETSIZE, checked above.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a valid cpu_set_t of the size passed; pid 0 is this thread.
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// User and system CPU time consumed so far by the whole process (`getrusage`).
pub fn process_cpu_time() -> (Duration, Duration) {
    // SAFETY: rusage is plain data and getrusage fills it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is valid and writable; RUSAGE_SELF cannot fail with a valid pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    (tv(usage.ru_utime), tv(usage.ru_stime))
}

/// A one-shot `timerfd` on `CLOCK_MONOTONIC` (the clock behind `Instant`),
/// readable when it expires: a poll wake-up to the microsecond, where a
/// poll timeout is rounded up to whole milliseconds. Arming it again
/// resets its expiration count, so it never needs to be read: each expiry
/// wakes an edge-triggered poll anew.
#[derive(Debug)]
pub struct Timer {
    fd: OwnedFd,
}

impl Timer {
    /// A disarmed, non-blocking timer.
    ///
    /// # Errors
    ///
    /// Returns the OS error from `timerfd_create`.
    pub fn new() -> io::Result<Timer> {
        // SAFETY: plain system call; the flags are valid.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nobody else.
        Ok(Timer {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Arms the timer to expire once, `after` from now (at least 1 ns: a
    /// zero `it_value` would disarm it). Replaces any earlier setting.
    ///
    /// # Errors
    ///
    /// Returns the OS error from `timerfd_settime`.
    pub fn arm(&self, after: Duration) -> io::Result<()> {
        let after = after.max(Duration::from_nanos(1));
        // SAFETY: itimerspec is plain data; zeroed is "no interval". Fields
        // are set one by one since some targets add padding fields.
        let mut spec: libc::itimerspec = unsafe { std::mem::zeroed() };
        // Saturates where time_t is 32 bits; no wait here is that long.
        spec.it_value.tv_sec = libc::time_t::try_from(after.as_secs()).unwrap_or(libc::time_t::MAX);
        // Below 10^9, so it fits every target's tv_nsec type.
        spec.it_value.tv_nsec = after.subsec_nanos() as _;
        // SAFETY: `spec` is a valid itimerspec; a null old value is allowed.
        let rc = unsafe { libc::timerfd_settime(self.fd.as_raw_fd(), 0, &spec, ptr::null_mut()) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The descriptor, for registering with a poll.
    pub fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// The inode of the socket behind `fd`, the key of its line in
/// `/proc/net/udp`.
///
/// # Errors
///
/// Returns the OS error when `/proc/self/fd` cannot be read (no `/proc`).
pub fn socket_inode(fd: RawFd) -> io::Result<u64> {
    use std::os::unix::fs::MetadataExt as _;
    Ok(std::fs::metadata(format!("/proc/self/fd/{fd}"))?.ino())
}

/// Datagrams the kernel dropped on arrival at the UDP sockets whose inodes
/// are in `inodes` (a full receive buffer, mostly), summed from the
/// `drops` column of `/proc/net/udp` and `/proc/net/udp6`.
///
/// # Errors
///
/// Returns the OS error when neither table can be read.
pub fn udp_drops(inodes: &std::collections::HashSet<u64>) -> io::Result<u64> {
    let (mut total, mut read, mut last_err) = (0, false, None);
    for table in ["/proc/net/udp", "/proc/net/udp6"] {
        let text = match std::fs::read_to_string(table) {
            Ok(text) => text,
            Err(err) => {
                last_err = Some(err);
                continue;
            }
        };
        read = true;
        // Columns: sl local rem st tx:rx tr:when retrnsmt uid timeout inode ref pointer drops.
        for line in text.lines().skip(1) {
            let mut fields = line.split_whitespace().skip(9);
            let (Some(inode), Some(drops)) = (fields.next(), fields.nth(2)) else {
                continue;
            };
            if inode.parse().is_ok_and(|i: u64| inodes.contains(&i)) {
                total += drops.parse::<u64>().unwrap_or(0);
            }
        }
    }
    match (read, last_err) {
        (false, Some(err)) => Err(err),
        _ => Ok(total),
    }
}

/// Asks for a socket receive buffer of `bytes` (`SO_RCVBUF`); the kernel
/// caps it at `net.core.rmem_max` without an error.
///
/// # Errors
///
/// Returns the OS error from `setsockopt`.
pub fn set_recv_buffer(fd: RawFd, bytes: usize) -> io::Result<()> {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: `value` is a valid c_int for the duration of the call, and
    // the length passed is its size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&raw const value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
