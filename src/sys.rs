//! The operating-system layer: the only `unsafe` and libc-level code in the crate.
//!
//! Everything here is a thin, documented wrapper around one system call, with a
//! safe signature and an `io::Result`. It owns no state and makes no policy:
//! callers decide what an error means (SPEC "Running": raise `RLIMIT_NOFILE`,
//! classify `EMFILE`/`ENFILE`; "Draining 3": `FIONREAD` at drain start).
//!
//! # Notes
//!
//! Linux is the target. The calls used here exist on the BSDs and macOS too,
//! but only Linux is tested.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and returns the new soft limit.
///
/// # Errors
///
/// Returns the OS error when the limit cannot be read or set.
pub fn raise_nofile_limit() -> io::Result<u64> {
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
        lim = raised;
    }
    Ok(lim.rlim_cur)
}

/// True when `err` says the process or the system has run out of descriptors
/// (`EMFILE`, `ENFILE`), or the kernel out of socket memory (`ENOBUFS`, `ENOMEM`).
///
/// These are the accept errors after which retrying at once would spin.
pub fn is_resource_exhausted(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// Number of bytes queued in a socket's receive buffer (`FIONREAD`).
///
/// # Errors
///
/// Returns the OS error from `ioctl`.
pub fn unread_bytes(fd: &impl AsRawFd) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int through the pointer, which is valid.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut n) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(usize::try_from(n).unwrap_or(0))
}

/// `recv(2)` without flags: one system call, no wrapper layers.
///
/// # Errors
///
/// The OS error, including `WouldBlock` on an empty non-blocking socket.
#[inline]
pub fn recv(fd: &impl AsRawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// `send(2)` with `MSG_NOSIGNAL`: a peer that closed yields `EPIPE`, not SIGPIPE.
///
/// # Errors
///
/// The OS error, including `WouldBlock` when the send buffer is full.
#[inline]
pub fn send(fd: &impl AsRawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for reads of `buf.len()` bytes.
    let n = unsafe {
        libc::send(
            fd.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
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

/// Unblocks `signals` in this thread's signal mask.
///
/// A process inherits its mask from whoever started it; a blocked drain
/// signal would never reach the loop.
///
/// # Errors
///
/// Returns the OS error from `pthread_sigmask`.
pub fn unblock_signals(signals: &[libc::c_int]) -> io::Result<()> {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is valid and writable; the signal numbers are valid constants.
    unsafe {
        libc::sigemptyset(&mut set);
        for &sig in signals {
            libc::sigaddset(&mut set, sig);
        }
    }
    // SAFETY: `set` is initialised; a null old-set pointer is allowed.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// Registers a handler that counts deliveries of `signal` in `count` and,
/// on the `limit`-th delivery of any signal sharing the counter, removes
/// `unlink` (the pid file), calls `say` and `_exit(0)`s at once.
///
/// This is SPEC "Draining" 6's third signal: it works even when the loop is
/// stuck, because it runs in the handler. The counter also lets the loop
/// count signals that signal-hook-mio merged into one report. `say` must be
/// async-signal-safe and must never block (docs/protocol.md "Draining" 6:
/// a full stderr pipe must not keep the process alive).
///
/// # Errors
///
/// Returns the OS error from `sigaction`.
pub fn register_escalation(
    signal: libc::c_int,
    count: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    limit: usize,
    unlink: Option<std::ffi::CString>,
    say: fn(),
) -> io::Result<signal_hook::SigId> {
    use std::sync::atomic::Ordering;
    let action = move || {
        if count.fetch_add(1, Ordering::SeqCst) + 1 >= limit {
            // Only async-signal-safe calls here: unlink, `say`, _exit.
            if let Some(path) = &unlink {
                // SAFETY: `path` is a valid NUL-terminated string owned by the closure.
                unsafe { libc::unlink(path.as_ptr()) };
            }
            say();
            signal_hook::low_level::exit(0);
        }
    };
    // SAFETY: the action only touches an atomic and calls async-signal-safe
    // functions (`say` is one by this function's contract).
    unsafe { signal_hook::low_level::register(signal, action) }
}

/// Listening sockets handed over by a service manager (`LISTEN_PID` names
/// this process, `LISTEN_FDS` counts them from fd 3), or `None` when there are none.
///
/// The variables are left as they are: a child has another PID, so
/// `LISTEN_PID` never names it.
///
/// # Errors
///
/// Returns a one-line description when the variables are malformed or a
/// descriptor is not a listening TCP socket.
pub fn inherited_listeners() -> Result<Option<Vec<std::net::TcpListener>>, String> {
    use std::os::fd::{FromRawFd, OwnedFd};
    let fds = sd_notify::listen_fds().map_err(|err| format!("LISTEN_FDS: {err}"))?;
    if fds.len() == 0 {
        return Ok(None);
    }
    let mut listeners = Vec::with_capacity(fds.len());
    for fd in fds {
        // SAFETY: the service manager passed these descriptors to this process
        // (LISTEN_PID matched) and nothing else in the process owns them.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let socket = socket2::Socket::from(owned);
        let is_stream = socket.r#type().map(|t| t == socket2::Type::STREAM);
        let is_listener = socket.is_listener();
        if !matches!((is_stream, is_listener), (Ok(true), Ok(true))) {
            // Give the descriptor back untouched: it is not ours to close.
            std::mem::forget(socket);
            return Err(format!("fd {fd} is not a listening TCP socket"));
        }
        socket
            .set_nonblocking(true)
            .map_err(|err| format!("fd {fd}: {err}"))?;
        listeners.push(std::net::TcpListener::from(socket));
    }
    Ok(Some(listeners))
}

/// What kind of file a descriptor refers to, as far as writing to it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// A socket (a journal stream, a socketpair).
    Socket,
    /// A pipe or FIFO.
    Fifo,
    /// A character device: a terminal, `/dev/null`, `/dev/full`, a serial console.
    CharDevice,
    /// A regular file.
    Regular,
    /// Anything else (a directory, a block device).
    Other,
}

/// The kind of file `fd` refers to (`fstat`).
///
/// # Errors
///
/// The OS error from `fstat`, for example `EBADF` when `fd` is not open.
pub fn file_kind(fd: RawFd) -> io::Result<FileKind> {
    // SAFETY: stat is plain data; fstat fills it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is valid and writable; an invalid fd only yields EBADF.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(match st.st_mode & libc::S_IFMT {
        libc::S_IFSOCK => FileKind::Socket,
        libc::S_IFIFO => FileKind::Fifo,
        libc::S_IFCHR => FileKind::CharDevice,
        libc::S_IFREG => FileKind::Regular,
        _ => FileKind::Other,
    })
}

/// Opens the pipe, FIFO or terminal behind `fd` again, write-only and
/// non-blocking, as a new open file description of this process's own.
///
/// `O_NONBLOCK` belongs to the open file description, which a stderr
/// shares with every process that inherited it (the shell, the terminal's
/// other programs, a supervisor's other children); setting it on fd 2 would
/// change their writes too. A fresh `open` of `/proc/self/fd/N` gives a
/// description of our own, so the flag stays ours. `O_NOCTTY`: opening a
/// terminal must not make it our controlling terminal.
///
/// # Errors
///
/// The OS error from `open`: `ENOENT` without `/proc`, `EACCES` when the
/// pipe or terminal belongs to another user, `ENXIO` for a socket or for a
/// FIFO whose reader is gone.
pub fn reopen_nonblocking(fd: RawFd) -> io::Result<OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(format!("/proc/self/fd/{fd}"))?;
    Ok(OwnedFd::from(file))
}

/// `write(2)` on a raw descriptor: one system call, async-signal-safe.
///
/// # Errors
///
/// The OS error, including `WouldBlock` on a full non-blocking pipe.
pub fn write_fd(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for reads of `buf.len()` bytes; a bad fd only yields EBADF.
    let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// `send(2)` with `MSG_DONTWAIT | MSG_NOSIGNAL` on a raw descriptor: this one
/// call never waits, whatever the socket's own flags, and a reader that went
/// away yields `EPIPE` rather than SIGPIPE. Async-signal-safe.
///
/// # Errors
///
/// The OS error, including `WouldBlock` when the socket buffer is full.
pub fn send_nowait(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for reads of `buf.len()` bytes; a bad fd only yields EBADF.
    let n = unsafe {
        libc::send(
            fd,
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// True when `poll` says `fd` is writable now (zero timeout), and neither
/// broken (`POLLERR`) nor hung up (`POLLHUP`). Async-signal-safe.
///
/// # Notes
///
/// On Linux a pipe is writable when at least one of its page-sized slots
/// is free, so a write of at most `PIPE_BUF` (one page) bytes then completes
/// without waiting, unless another writer fills the slot first; a pipe
/// whose last page still has room but no free slot is reported full. A
/// regular file is always writable. A terminal is writable with some room
/// left, not necessarily enough for the whole write.
pub fn is_writable_now(fd: RawFd) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    let ready = unsafe { libc::poll(&mut pfd, 1, 0) };
    ready > 0
        && pfd.revents & libc::POLLOUT != 0
        && pfd.revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) == 0
}

/// The most bytes a write to a pipe moves at once, never interleaved with
/// another writer's (`PIPE_BUF`, 4096 on Linux).
pub const PIPE_BUF: usize = libc::PIPE_BUF;
