//! The operating-system layer: the only `unsafe` and libc-level code in the crate.
//!
//! Everything here is a thin, documented wrapper around one system call, with a
//! safe signature and an `io::Result`. It owns no state and makes no policy:
//! callers decide what an error means (docs/protocol.md "Running": raise `RLIMIT_NOFILE`,
//! classify `EMFILE`/`ENFILE`; "Draining 3": `FIONREAD` at drain start).
//!
//! # Notes
//!
//! Linux is the target. The calls used here exist on the BSDs and macOS too,
//! but only Linux is tested.

use std::io;
use std::os::fd::AsRawFd;
#[cfg(feature = "cli")]
use std::os::fd::{OwnedFd, RawFd};

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
    // rlim_t is u64 on 64-bit Linux and on musl, but u32 on 32-bit glibc.
    #[allow(clippy::useless_conversion)]
    Ok(u64::from(lim.rlim_cur))
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

/// Returns the heap's free memory to the operating system: glibc's
/// `malloc_trim(0)`, which also releases free pages in the middle of the
/// heap, not only at its top. Returns true when memory was released.
///
/// # Notes
///
/// glibc keeps freed blocks for reuse and raises its mmap threshold as
/// large blocks are freed, so buffers freed by clients that left would
/// otherwise stay resident. Other C libraries (musl) return memory on their
/// own; there this does nothing and returns false.
pub fn release_free_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only walks the allocator's own free lists; it
        // takes the allocator's locks like any malloc call.
        unsafe { libc::malloc_trim(0) != 0 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
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
/// once the count reaches `limit` (which the loop may lower as the drain
/// goes on; any signal sharing the counter counts), removes the pid file
/// at `unlink` if it still holds this process's PID, calls `say` and
/// `_exit(0)`s at once.
///
/// This is docs/protocol.md "Draining" 6's third signal: it works even when the loop is
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
    limit: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    unlink: Option<std::ffi::CString>,
    say: fn(),
) -> io::Result<signal_hook::SigId> {
    use std::sync::atomic::Ordering;
    // Formatted now, not in the handler: the line the pid file holds.
    let pid_line = format!("{}\n", std::process::id()).into_bytes();
    let action = move || {
        if count.fetch_add(1, Ordering::SeqCst) + 1 >= limit.load(Ordering::SeqCst) {
            // Only async-signal-safe calls here: open, read, close, unlink,
            // `say`, _exit.
            if let Some(path) = &unlink {
                unlink_if_ours(path, &pid_line);
            }
            say();
            signal_hook::low_level::exit(0);
        }
    };
    // SAFETY: the action only touches atomics and calls async-signal-safe
    // functions (`say` is one by this function's contract).
    unsafe { signal_hook::low_level::register(signal, action) }
}

/// Removes the pid file at `path` if it still holds `pid_line` (this
/// process's PID and a newline): after a take-over or a `--reuse-port`
/// hand-over the path may hold the new instance's PID, which is not ours to
/// remove (docs/protocol.md "Command line", pid file). Async-signal-safe:
/// `open` (never following a symlink, never waiting), `read`, `close` and
/// `unlink` on buffers that already exist.
fn unlink_if_ours(path: &std::ffi::CStr, pid_line: &[u8]) {
    // SAFETY: `path` is a valid NUL-terminated string; the flags ask for
    // nothing that can wait.
    let fd = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return;
    }
    let mut buf = [0u8; 32];
    // SAFETY: `buf` is valid for writes of its length; `fd` is ours.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    // SAFETY: `fd` was opened above and is closed once.
    unsafe { libc::close(fd) };
    let ours = usize::try_from(n).is_ok_and(|n| buf.get(..n) == Some(pid_line));
    if ours {
        // SAFETY: `path` is a valid NUL-terminated string.
        unsafe { libc::unlink(path.as_ptr()) };
    }
}

/// Listening sockets handed over by a service manager (`LISTEN_PID` names
/// this process, `LISTEN_FDS` counts them from fd 3), or `None` when there
/// are none.
///
/// Call it before anything else in the process opens a descriptor: when the
/// manager's fd 3 is missing (closed), the next descriptor opened (the
/// signal pipe, say) takes number 3 and would be mistaken for a socket.
///
/// The variables are left as they are: a child has another PID, so
/// `LISTEN_PID` never names it. Each socket is made close-on-exec and
/// non-blocking. The descriptors are taken once: a later call answers `None`.
///
/// # Errors
///
/// A one-line description, naming the variable or the descriptor, when a
/// variable is malformed or a descriptor is not an open, listening TCP
/// socket.
pub fn inherited_listeners() -> Result<Option<Vec<std::net::TcpListener>>, String> {
    /// The first descriptor a service manager passes (`SD_LISTEN_FDS_START`).
    const FIRST: i32 = 3;
    let Some(pid) = env_number("LISTEN_PID", "a process ID")? else {
        return Ok(None);
    };
    if pid != std::process::id() {
        return Ok(None);
    }
    let Some(count) = env_number("LISTEN_FDS", "a number of descriptors")? else {
        return Ok(None);
    };
    let end = i32::try_from(count)
        .ok()
        .and_then(|count| FIRST.checked_add(count))
        .ok_or_else(|| format!("LISTEN_FDS \"{count}\": too many descriptors"))?;
    // Two owners of one descriptor would close it twice.
    static TAKEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if count == 0 || TAKEN.swap(true, std::sync::atomic::Ordering::SeqCst) {
        return Ok(None);
    }
    (FIRST..end)
        .map(|fd| take_listener(fd, count))
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// The variable `name` as a number, `None` when it is not set.
fn env_number(name: &str, what: &str) -> Result<Option<u32>, String> {
    let Some(value) = std::env::var_os(name) else {
        return Ok(None);
    };
    value
        .to_str()
        .and_then(|text| text.parse().ok())
        .map(Some)
        .ok_or_else(|| format!("{name} {value:?}: expected {what}"))
}

/// Takes inherited descriptor `fd` as a listener, after checking that it is
/// an open, listening TCP socket; one of `count` passed.
fn take_listener(fd: i32, count: u32) -> Result<std::net::TcpListener, String> {
    use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
    // SAFETY: F_GETFD only reads the descriptor's flags; any number is valid
    // to ask about, and a closed one fails with EBADF.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
        return Err(format!("fd {fd} is not open (LISTEN_FDS={count})"));
    }
    // SAFETY: `fd` is open, and LISTEN_PID named this process, so the service
    // manager passed it to us; this is its one owner: `inherited_listeners`
    // takes the descriptors once (TAKEN), and its callers take them before
    // anything else in the process opens or adopts a descriptor.
    let socket = socket2::Socket::from(unsafe { OwnedFd::from_raw_fd(fd) });
    if let Err(why) = check_tcp_listener(&socket) {
        // Give the descriptor back untouched: it is not ours to close.
        let _ = socket.into_raw_fd();
        return Err(format!("fd {fd} {why}"));
    }
    socket
        .set_cloexec(true)
        .and_then(|()| socket.set_nonblocking(true))
        .map_err(|err| format!("fd {fd}: {}", crate::error::os_reason(&err)))?;
    Ok(std::net::TcpListener::from(socket))
}

/// Why `socket` is not a listening TCP socket, completing "fd N ...".
fn check_tcp_listener(socket: &socket2::Socket) -> Result<(), String> {
    use socket2::{Domain, Protocol, Type};
    let os = |err: std::io::Error| {
        if err.raw_os_error() == Some(libc::ENOTSOCK) {
            "is not a socket".to_owned()
        } else {
            format!("cannot be inspected: {}", crate::error::os_reason(&err))
        }
    };
    let domain = socket.domain().map_err(os)?;
    if domain == Domain::UNIX {
        return Err("is a Unix socket, not a TCP socket".to_owned());
    }
    let is_ip = domain == Domain::IPV4 || domain == Domain::IPV6;
    let kind = socket.r#type().map_err(os)?;
    if is_ip && kind == Type::DGRAM {
        return Err("is a UDP socket, not a TCP socket".to_owned());
    }
    let is_tcp = socket.protocol().map_err(os)? == Some(Protocol::TCP);
    if !is_ip || kind != Type::STREAM || !is_tcp {
        return Err("is not a TCP socket".to_owned());
    }
    if !socket.is_listener().map_err(os)? {
        return Err("is a TCP socket that is not listening".to_owned());
    }
    Ok(())
}

#[cfg(feature = "cli")] // Used by the binary's logger only.
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

#[cfg(feature = "cli")] // Used by the binary's logger only.
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

#[cfg(feature = "cli")] // Used by the binary's logger only.
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

#[cfg(feature = "cli")] // Used by the binary's logger only.
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

#[cfg(feature = "cli")] // Used by the binary's logger only.
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

#[cfg(feature = "cli")] // Used by the binary's logger only.
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

#[cfg(feature = "cli")] // Used by the binary's logger only.
/// The most bytes a write to a pipe moves at once, never interleaved with
/// another writer's (`PIPE_BUF`, 4096 on Linux).
pub const PIPE_BUF: usize = libc::PIPE_BUF;

// ---------------------------------------------------------------------------
// Process figures for the health listener's `/metrics` (health/metrics.rs).
// The figures themselves are read from /proc with std there; only the units
// they are counted in need libc.
// ---------------------------------------------------------------------------

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`): the unit of the CPU
/// times and the start time in `/proc/self/stat`.
///
/// # Errors
///
/// The OS error when `sysconf` has no answer.
pub fn clock_ticks_per_second() -> io::Result<u64> {
    sysconf_positive(libc::_SC_CLK_TCK)
}

/// The page size in bytes (`sysconf(_SC_PAGESIZE)`): the unit of the
/// resident set in `/proc/self/stat` and `/proc/self/statm`.
///
/// # Errors
///
/// The OS error when `sysconf` has no answer.
pub fn page_size() -> io::Result<u64> {
    sysconf_positive(libc::_SC_PAGESIZE)
}

/// `sysconf(name)` when it is a positive number.
fn sysconf_positive(name: libc::c_int) -> io::Result<u64> {
    // SAFETY: sysconf takes a plain integer and touches no memory of ours.
    let value = unsafe { libc::sysconf(name) };
    match u64::try_from(value) {
        Ok(value) if value > 0 => Ok(value),
        // -1 with errno set for an unknown name; -1 alone for "no limit".
        _ => Err(io::Error::last_os_error()),
    }
}

// ===========================================================================
// Take-over: descriptor passing and socket checks
// (docs/protocol.md "Operations"; used by src/handover.rs).
//
// `SCM_RIGHTS` over a Unix stream socket, the peer's credentials
// (`SO_PEERCRED`), and what a received descriptor really is (`SO_TYPE`,
// `SO_DOMAIN`, `SO_PROTOCOL`, `SO_ACCEPTCONN`, `getsockname`). No policy:
// the hand-over protocol decides what to send, whom to trust and what to
// accept.
// ===========================================================================

/// The most descriptors one `SCM_RIGHTS` message may carry on Linux
/// (`SCM_MAX_FD`); `sendmsg` fails with `EINVAL` beyond it.
pub const MAX_FDS_PER_MESSAGE: usize = 253;

/// Bytes of control buffer for [`MAX_FDS_PER_MESSAGE`] descriptors.
// SAFETY: CMSG_SPACE is arithmetic on its argument; it touches no memory.
const FDS_CONTROL_SPACE: usize =
    unsafe { libc::CMSG_SPACE((MAX_FDS_PER_MESSAGE * size_of::<libc::c_int>()) as u32) } as usize;

/// A control buffer aligned for `cmsghdr`, whose fields are `size_t` and `int`.
type FdsControl = [usize; FDS_CONTROL_SPACE.div_ceil(size_of::<usize>())];

/// Sends `bytes` on the Unix stream socket `sock` with `fds` attached
/// (`sendmsg` with one `SCM_RIGHTS` message, `MSG_NOSIGNAL`). Returns how
/// many bytes were sent; the descriptors travel with the first of them.
///
/// The receiver gets its own descriptors for the same open sockets: nothing
/// is closed or changed here, and the caller keeps `fds`.
///
/// # Errors
///
/// `InvalidInput` for more than [`MAX_FDS_PER_MESSAGE`] descriptors or for
/// descriptors without a byte to carry them; otherwise the OS error
/// (`WouldBlock` on a full non-blocking socket, `EPIPE` when the peer left).
pub fn send_with_fds(
    sock: &impl std::os::fd::AsFd,
    bytes: &[u8],
    fds: &[std::os::fd::BorrowedFd<'_>],
) -> io::Result<usize> {
    if fds.len() > MAX_FDS_PER_MESSAGE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} descriptors in one message, the limit is {MAX_FDS_PER_MESSAGE}",
                fds.len()
            ),
        ));
    }
    if bytes.is_empty() && !fds.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "descriptors need at least one byte to travel with",
        ));
    }
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr().cast_mut().cast(),
        iov_len: bytes.len(),
    };
    let mut control: FdsControl = [0; FDS_CONTROL_SPACE.div_ceil(size_of::<usize>())];
    // SAFETY: msghdr is plain data; all-zero is "no name, no iovec, no control".
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        let payload = (fds.len() * size_of::<libc::c_int>()) as u32;
        msg.msg_control = control.as_mut_ptr().cast();
        // SAFETY: arithmetic only. `payload` is at most 253 ints, so the
        // space fits in `control` (sized for MAX_FDS_PER_MESSAGE, checked above).
        msg.msg_controllen = unsafe { libc::CMSG_SPACE(payload) } as _;
        // SAFETY: msg_control points at `control`, aligned for cmsghdr and at
        // least msg_controllen >= size_of::<cmsghdr>() bytes long, so the
        // first header is non-null and inside it; CMSG_DATA(cmsg) plus
        // `payload` bytes stays within CMSG_SPACE(payload). Writes are
        // unaligned-safe. Every raw fd comes from a live BorrowedFd.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(payload) as _;
            let data = libc::CMSG_DATA(cmsg).cast::<libc::c_int>();
            for (i, fd) in fds.iter().enumerate() {
                data.add(i).write_unaligned(fd.as_raw_fd());
            }
        }
    }
    // SAFETY: `msg` points at `iov` (valid for reads of bytes.len()) and at
    // `control`, both alive for the duration of the call.
    let n = unsafe { libc::sendmsg(sock.as_fd().as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Receives into `buf` from the Unix stream socket `sock`, with up to
/// `max_fds` descriptors attached (`recvmsg` with `MSG_CMSG_CLOEXEC`, so a
/// received descriptor never leaks into a child process). Returns the byte
/// count (0 at end-of-stream) and the descriptors, owned by the caller.
///
/// # Errors
///
/// `InvalidData` when the sender attached more descriptors than `max_fds`
/// (`MSG_CTRUNC`): every descriptor that did arrive is closed first, so
/// none leaks. Otherwise the OS error (`WouldBlock`, `Interrupted`, ...).
///
/// # Notes
///
/// At most [`MAX_FDS_PER_MESSAGE`] descriptors, whatever `max_fds` says.
pub fn recv_with_fds(
    sock: &impl std::os::fd::AsFd,
    buf: &mut [u8],
    max_fds: usize,
) -> io::Result<(usize, Vec<std::os::fd::OwnedFd>)> {
    use std::os::fd::{FromRawFd, OwnedFd};
    let max_fds = max_fds.min(MAX_FDS_PER_MESSAGE);
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut control: FdsControl = [0; FDS_CONTROL_SPACE.div_ceil(size_of::<usize>())];
    // SAFETY: msghdr is plain data; all-zero is "no name, no iovec, no control".
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if max_fds > 0 {
        msg.msg_control = control.as_mut_ptr().cast();
        // SAFETY: arithmetic only; at most FDS_CONTROL_SPACE, the size of `control`.
        msg.msg_controllen =
            unsafe { libc::CMSG_SPACE((max_fds * size_of::<libc::c_int>()) as u32) } as _;
    }
    // SAFETY: `msg` points at `iov` (valid for writes of buf.len()) and at
    // `control` (valid for writes of msg_controllen bytes), alive for the call.
    let n = unsafe { libc::recvmsg(sock.as_fd().as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut fds = Vec::new();
    // SAFETY: the kernel filled `control` with msg_controllen bytes of
    // well-formed cmsghdrs; CMSG_FIRSTHDR/CMSG_NXTHDR stay within them and
    // return null at the end. Each SCM_RIGHTS payload holds
    // (cmsg_len - CMSG_LEN(0)) / size_of::<c_int>() descriptors, newly
    // installed in this process and owned by nobody else, so wrapping each
    // in an OwnedFd exactly once is sound. Reads are unaligned-safe.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            let header = cmsg.read_unaligned();
            if header.cmsg_level == libc::SOL_SOCKET && header.cmsg_type == libc::SCM_RIGHTS {
                let bytes = (header.cmsg_len as usize).saturating_sub(libc::CMSG_LEN(0) as usize);
                let data = libc::CMSG_DATA(cmsg).cast::<libc::c_int>();
                for i in 0..bytes / size_of::<libc::c_int>() {
                    fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        // The kernel dropped what did not fit; close what did, so nothing leaks.
        drop(fds);
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("more than {max_fds} descriptors attached"),
        ));
    }
    Ok((n as usize, fds))
}

/// Who is at the other end of a Unix socket, as the kernel saw it at
/// `connect`/`listen` time (`SO_PEERCRED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCredentials {
    /// The peer's process id (in our pid namespace; 0 if it is outside it).
    pub pid: i32,
    /// The peer's effective user id.
    pub uid: u32,
}

/// The credentials of the process at the other end of the Unix socket `sock`.
///
/// # Errors
///
/// The OS error from `getsockopt` (`ENOTSOCK`, `ENOTCONN`, ...).
pub fn peer_credentials(sock: &impl std::os::fd::AsFd) -> io::Result<PeerCredentials> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` is valid and writable for `len` bytes, and `len` too.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if len as usize != size_of::<libc::ucred>() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "SO_PEERCRED returned a short answer",
        ));
    }
    Ok(PeerCredentials {
        pid: cred.pid,
        uid: cred.uid,
    })
}

/// This process's effective user id.
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid takes no arguments and always succeeds.
    unsafe { libc::geteuid() }
}

/// Sets the mode of the socket `sock` itself (`fchmod`).
///
/// # Errors
///
/// The OS error from `fchmod`.
///
/// # Notes
///
/// On Linux a Unix socket bound afterwards creates its file with this mode
/// minus the umask, so a socket given 0600 before `bind` never has a more
/// open file, not even for an instant. Elsewhere the file's mode may ignore
/// it: callers check the mode after `bind` anyway.
pub fn set_socket_mode(sock: &impl std::os::fd::AsFd, mode: u32) -> io::Result<()> {
    // SAFETY: fchmod on a descriptor we borrow; no memory is passed.
    if unsafe { libc::fchmod(sock.as_fd().as_raw_fd(), mode as libc::mode_t) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// What a descriptor is, as far as checking a received socket needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketFacts {
    /// `SO_DOMAIN`: `IPV4`, `IPV6`, `UNIX`, ...
    pub domain: socket2::Domain,
    /// `SO_TYPE`: `STREAM`, `DGRAM`, ...
    pub kind: socket2::Type,
    /// `SO_PROTOCOL`, when the kernel names one (`TCP`, `UDP`, ...).
    pub protocol: Option<socket2::Protocol>,
    /// `SO_ACCEPTCONN`: the socket is in listening state.
    pub listening: bool,
    /// `getsockname`, when it is an IP address (`None` for other families).
    pub local: Option<std::net::SocketAddr>,
}

impl SocketFacts {
    /// True for a TCP socket in listening state.
    pub fn is_listening_tcp(&self) -> bool {
        self.listening
            && self.kind == socket2::Type::STREAM
            && self.protocol == Some(socket2::Protocol::TCP)
            && self.is_ip()
    }

    /// True for a UDP socket.
    pub fn is_udp(&self) -> bool {
        self.kind == socket2::Type::DGRAM
            && self.protocol == Some(socket2::Protocol::UDP)
            && self.is_ip()
    }

    /// True for an IPv4 or IPv6 socket.
    pub fn is_ip(&self) -> bool {
        self.domain == socket2::Domain::IPV4 || self.domain == socket2::Domain::IPV6
    }
}

/// Reads a descriptor's [`SocketFacts`] (`SO_DOMAIN`, `SO_TYPE`,
/// `SO_PROTOCOL`, `SO_ACCEPTCONN`, `getsockname`). Nothing about the socket
/// changes.
///
/// # Errors
///
/// `ENOTSOCK` when `fd` is not a socket; otherwise the OS error.
pub fn socket_facts(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<SocketFacts> {
    // SockRef only borrows the descriptor (it is never closed through it);
    // on something that is not a socket every query fails with ENOTSOCK.
    let socket = socket2::SockRef::from(&fd);
    let kind = socket.r#type()?;
    Ok(SocketFacts {
        domain: socket.domain()?,
        kind,
        protocol: socket.protocol()?,
        listening: socket.is_listener()?,
        local: socket.local_addr()?.as_socket(),
    })
}

#[cfg(test)]
mod handover_tests {
    //! The take-over section's calls on real sockets.
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn descriptors_sent_with_bytes_arrive_as_the_same_sockets() {
        let (a, b) = UnixStream::pair().expect("pair");
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let sent = send_with_fds(&a, b"xy", &[tcp.as_fd(), udp.as_fd()]).expect("send");
        assert_eq!(sent, 2);
        let mut buf = [0u8; 8];
        let (n, fds) = recv_with_fds(&b, &mut buf, 2).expect("recv");
        assert_eq!(&buf[..n], b"xy");
        assert_eq!(fds.len(), 2);
        let tcp_facts = socket_facts(fds[0].as_fd()).expect("facts");
        assert!(tcp_facts.is_listening_tcp());
        assert_eq!(tcp_facts.local, Some(tcp.local_addr().expect("addr")));
        let udp_facts = socket_facts(fds[1].as_fd()).expect("facts");
        assert!(udp_facts.is_udp() && !udp_facts.is_listening_tcp());
        assert_eq!(udp_facts.local, Some(udp.local_addr().expect("addr")));
        // MSG_CMSG_CLOEXEC: a received descriptor never leaks into a child.
        for fd in &fds {
            // SAFETY: F_GETFD on a descriptor we own reads its flags only.
            let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) };
            assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
        }
    }

    #[test]
    fn more_descriptors_than_asked_for_are_closed_and_an_error() {
        let (a, b) = UnixStream::pair().expect("pair");
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        send_with_fds(&a, b"x", &[tcp.as_fd(), tcp.as_fd(), tcp.as_fd()]).expect("send");
        let err = recv_with_fds(&b, &mut [0u8; 8], 1).expect_err("accepted 3 descriptors");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert_eq!(err.to_string(), "more than 1 descriptors attached");
    }

    #[test]
    fn descriptor_limits_are_checked_before_sending() {
        let (a, _b) = UnixStream::pair().expect("pair");
        let fds = vec![a.as_fd(); MAX_FDS_PER_MESSAGE + 1];
        let err = send_with_fds(&a, b"x", &fds).expect_err("sent 254 descriptors");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        let err = send_with_fds(&a, b"", &fds[..1]).expect_err("sent without a byte");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        // The most one message may carry does go through.
        let (c, d) = UnixStream::pair().expect("pair");
        let fds = vec![c.as_fd(); MAX_FDS_PER_MESSAGE];
        send_with_fds(&c, b"x", &fds).expect("send 253");
        let (_, got) = recv_with_fds(&d, &mut [0u8; 1], MAX_FDS_PER_MESSAGE).expect("recv 253");
        assert_eq!(got.len(), MAX_FDS_PER_MESSAGE);
    }

    #[test]
    fn peer_credentials_name_the_process_at_the_other_end() {
        let (a, _b) = UnixStream::pair().expect("pair");
        let peer = peer_credentials(&a).expect("SO_PEERCRED");
        assert_eq!(peer.uid, effective_uid());
        assert_eq!(peer.pid, std::process::id() as i32);
    }

    #[test]
    fn socket_facts_refuse_what_is_not_a_socket() {
        let file = std::fs::File::open("/dev/null").expect("open");
        let err = socket_facts(file.as_fd()).expect_err("a file is not a socket");
        assert_eq!(err.raw_os_error(), Some(libc::ENOTSOCK));
    }
}
