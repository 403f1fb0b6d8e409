//! Process and socket helpers shared by the integration tests.
//!
//! [`Echod`] runs the real binary as a child, with its own port (0) and a
//! short drain timeout, forwards each stderr line into a channel (so the child
//! never blocks on a full pipe), and kills and reaps it on drop. Every wait
//! has a limit and names what it waited for; failures carry the child's
//! captured stderr.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

/// Generous limit for anything that should happen "at once".
pub const LIMIT: Duration = Duration::from_secs(20);

/// A running echod child process.
pub struct Echod {
    child: Child,
    lines: Receiver<String>,
    /// Every stderr line seen so far.
    pub seen: Vec<String>,
    addrs: Vec<SocketAddr>,
    /// The UDP sockets' addresses, from their `listening on ... proto=udp` lines.
    udp_addrs: Vec<SocketAddr>,
    status: Option<ExitStatus>,
}

impl Echod {
    /// Spawns echod with `--listen 127.0.0.1:0 --drain-timeout 0.5` before
    /// `args` (later flags win; a `--listen` in `args` replaces the default
    /// only if `args` has one), and waits for every `listening on` line.
    #[track_caller]
    pub fn spawn(args: &[&str]) -> Echod {
        let mut full: Vec<&str> = Vec::new();
        if !args.contains(&"--listen") {
            full.extend(["--listen", "127.0.0.1:0"]);
        }
        full.extend(["--drain-timeout", "0.5"]);
        full.extend(args);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_echod"));
        cmd.args(&full);
        Echod::spawn_command(
            cmd,
            full.iter().filter(|a| **a == "--listen").count().max(1),
        )
    }

    /// Like [`Echod::spawn`], but waits for no readiness line: for a start
    /// that is expected to fail (then [`Echod::wait_exit`] and `seen`).
    #[track_caller]
    pub fn spawn_unready(args: &[&str]) -> Echod {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_echod"));
        if !args.contains(&"--listen") {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        cmd.args(["--drain-timeout", "0.5"]).args(args);
        Echod::spawn_command(cmd, 0)
    }

    /// Spawns a prepared command (stderr is captured here) and waits for
    /// `listeners` TCP readiness lines, and for one `proto=udp` line per
    /// `--udp` argument of `cmd`.
    #[track_caller]
    pub fn spawn_command(mut cmd: Command, listeners: usize) -> Echod {
        let udp_sockets = count_udp_args(&cmd);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let caller_set_log = cmd.get_envs().any(|(k, _)| k == "RUST_LOG");
        if std::env::var_os("RUST_LOG").is_none() && !caller_set_log {
            cmd.env("RUST_LOG", "info");
        }
        let mut child = cmd.spawn().expect("spawn echod");
        let stderr = child.stderr.take().expect("stderr piped");
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if std::env::var_os("ECHOD_TEST_VERBOSE").is_some() {
                    eprintln!("echod| {line}");
                }
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut echod = Echod {
            child,
            lines: rx,
            seen: Vec::new(),
            addrs: Vec::new(),
            udp_addrs: Vec::new(),
            status: None,
        };
        // The binary prints every TCP line before the first UDP one.
        while echod.addrs.len() < listeners || echod.udp_addrs.len() < udp_sockets {
            let line = echod.next_line_matching("listening on ", LIMIT);
            if line.contains(" proto=udp ") {
                echod.udp_addrs.push(parse_listening(&line));
            } else {
                echod.addrs.push(parse_listening(&line));
            }
        }
        echod
    }

    /// Every UDP socket's address (`--udp`), in the order given.
    pub fn udp_addrs(&self) -> &[SocketAddr] {
        &self.udp_addrs
    }

    /// The first UDP socket's address.
    #[track_caller]
    pub fn udp_addr(&self) -> SocketAddr {
        match self.udp_addrs.first() {
            Some(&addr) => addr,
            None => self.fail("has no UDP socket (no --udp argument)"),
        }
    }

    /// The first listener's address, from its `listening on` line.
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// Every listener's address.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The child's PID.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Stops the child with SIGSTOP and waits until the kernel shows it
    /// stopped, so whatever a client sends next queues in the kernel unread.
    #[track_caller]
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
        let pid = self.pid();
        wait_until(LIMIT, "echod to be stopped", || process_state(pid) == 'T');
    }

    /// Resumes a child stopped by [`Echod::pause`] and waits until it runs.
    #[track_caller]
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
        let pid = self.pid();
        wait_until(LIMIT, "echod to run again", || process_state(pid) != 'T');
    }

    /// Waits for a stderr line containing `pattern` (searching lines already
    /// seen first) and returns it.
    #[track_caller]
    pub fn wait_for_line(&mut self, pattern: &str, limit: Duration) -> String {
        if let Some(line) = self.seen.iter().find(|l| l.contains(pattern)) {
            return line.clone();
        }
        self.next_line_matching(pattern, limit)
    }

    /// Waits for a new stderr line (not one already seen) containing `pattern`.
    #[track_caller]
    pub fn next_line_matching(&mut self, pattern: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(pattern) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    self.fail(&format!("no line containing {pattern:?} within {limit:?}"))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let _ = self.try_status();
                    self.fail(&format!(
                        "stderr closed before a line containing {pattern:?}"
                    ))
                }
            }
        }
    }

    /// Sends a signal to the child.
    pub fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on our own child's PID.
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(rc, 0, "kill({}, {sig}) failed", self.pid());
    }

    fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Waits for the child to exit and returns its status.
    #[track_caller]
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        match wait_for_exit(&mut self.child, limit) {
            Some(status) => {
                self.status = Some(status);
                self.collect_remaining_lines();
                status
            }
            None => self.fail(&format!("did not exit within {limit:?}")),
        }
    }

    /// Reads the stderr lines left after exit.
    pub fn collect_remaining_lines(&mut self) {
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(2)) {
            self.seen.push(line);
        }
    }

    /// Everything echod printed so far, for failure messages.
    pub fn stderr(&self) -> String {
        self.seen.join("\n")
    }

    /// Panics with the message, the exit status and the captured stderr.
    #[track_caller]
    pub fn fail(&self, what: &str) -> ! {
        panic!(
            "echod {what}\nstatus: {:?}\nstderr:\n{}",
            self.status,
            self.stderr()
        )
    }

    /// Asks for a `stats:` line (SIGUSR1) and returns it. Every event the
    /// server had read before the signal is handled by then: a barrier.
    #[track_caller]
    pub fn stats(&mut self) -> String {
        self.signal(libc::SIGUSR1);
        self.next_line_matching("stats: ", LIMIT)
    }

    /// Connects to the first listener.
    #[track_caller]
    pub fn connect(&self) -> TcpStream {
        connect(self.addr())
    }

    /// The health listener's address (`--health`), from its
    /// `listening on IP:PORT proto=http` line, which follows the echo
    /// listeners' lines.
    #[track_caller]
    pub fn health_addr(&mut self) -> SocketAddr {
        parse_listening(&self.wait_for_line(" proto=http ", LIMIT))
    }
}

impl Drop for Echod {
    fn drop(&mut self) {
        if self.try_status().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The number after `key=` in a log line such as `stats: ... pending=123`.
#[track_caller]
pub fn field(line: &str, key: &str) -> u64 {
    let at = line
        .find(&format!(" {key}="))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"));
    line[at + key.len() + 2..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no number after {key}= in {line:?}"))
}

/// How many `--udp ADDR` / `--udp=ADDR` arguments a command has.
fn count_udp_args(cmd: &Command) -> usize {
    cmd.get_args()
        .filter(|a| *a == "--udp" || a.to_string_lossy().starts_with("--udp="))
        .count()
}

/// The address in a `listening on IP:PORT` line.
#[track_caller]
pub fn parse_listening(line: &str) -> SocketAddr {
    let rest = &line[line.find("listening on ").expect("pattern") + "listening on ".len()..];
    let addr = rest
        .split_whitespace()
        .next()
        .expect("address after 'listening on'");
    addr.parse()
        .unwrap_or_else(|e| panic!("bad address {addr:?} in {line:?}: {e}"))
}

/// Connects with a read timeout as a safety net against hangs.
#[track_caller]
pub fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream.set_read_timeout(Some(LIMIT)).expect("read timeout");
    stream
        .set_write_timeout(Some(LIMIT))
        .expect("write timeout");
    stream
}

/// Connects from the local address `from` (any port), e.g. `127.0.0.2`,
/// so a test can be a second source on loopback; same timeouts as [`connect`].
#[track_caller]
pub fn connect_from(from: IpAddr, addr: SocketAddr) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None).expect("socket");
    socket
        .bind(&SocketAddr::new(from, 0).into())
        .unwrap_or_else(|e| panic!("bind {from}: {e}"));
    socket
        .connect(&addr.into())
        .unwrap_or_else(|e| panic!("connect {addr} from {from}: {e}"));
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(LIMIT)).expect("read timeout");
    stream
        .set_write_timeout(Some(LIMIT))
        .expect("write timeout");
    stream
}

/// Reads until end-of-stream; panics on a reset or timeout.
#[track_caller]
pub fn read_to_eof(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    match stream.read_to_end(&mut out) {
        Ok(_) => out,
        Err(e) => panic!("read to EOF failed after {} bytes: {e}", out.len()),
    }
}

/// Sends `data` and reads back exactly as many bytes.
#[track_caller]
pub fn round_trip(stream: &mut TcpStream, data: &[u8]) -> Vec<u8> {
    stream.write_all(data).expect("write");
    let mut back = vec![0; data.len()];
    stream.read_exact(&mut back).expect("read echo");
    back
}

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Random bytes that never contain any byte of `SHUTDOWN`, so the notice
/// cannot be mistaken for echo.
pub fn payload_without_notice(len: usize, seed: u64) -> Vec<u8> {
    random_bytes(len, seed)
        .into_iter()
        .map(|b| if b"SHUTDOWN".contains(&b) { b'x' } else { b })
        .collect()
}

/// Asserts the stream `got` is an exact prefix of `sent` followed by the notice.
#[track_caller]
pub fn assert_prefix_then_notice(got: &[u8], sent: &[u8], notice: &[u8]) -> usize {
    assert!(
        got.ends_with(notice),
        "stream does not end with the notice; last bytes: {:?}",
        String::from_utf8_lossy(&got[got.len().saturating_sub(32)..])
    );
    let echo = &got[..got.len() - notice.len()];
    assert!(
        echo.len() <= sent.len(),
        "more echo ({}) than sent ({})",
        echo.len(),
        sent.len()
    );
    if let Some(at) = echo.iter().zip(sent).position(|(a, b)| a != b) {
        panic!(
            "echo differs from what was sent at byte {at} of {}",
            echo.len()
        );
    }
    echo.len()
}

/// True when a connect to `addr` is refused.
pub fn is_refused(addr: SocketAddr) -> bool {
    matches!(
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)),
        Err(e) if e.kind() == ErrorKind::ConnectionRefused
    )
}

/// Resident set size of a process in bytes, from `/proc/PID/status` (VmRSS).
pub fn rss_bytes(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS line");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("VmRSS value");
    kib * 1024
}

/// A process's state letter from `/proc/PID/stat` (`R`, `S`, `T` for stopped, ...).
pub fn process_state(pid: i32) -> char {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read stat");
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    rest.chars().next().expect("state")
}

/// TCP state `CLOSE_WAIT` as `/proc/net/tcp` writes it: the peer's FIN was
/// received (after every byte before it) and the socket is not closed yet.
pub const TCP_CLOSE_WAIT: u8 = 0x08;

/// The kernel's state of the IPv4 socket bound to `local` and connected to
/// `remote` (a `TCP_*` value from `/proc/net/tcp`), or `None` if there is none.
pub fn tcp_state(local: SocketAddr, remote: SocketAddr) -> Option<u8> {
    let hex = |addr: SocketAddr| match addr.ip() {
        IpAddr::V4(ip) => format!(
            "{:08X}:{:04X}",
            u32::from_le_bytes(ip.octets()),
            addr.port()
        ),
        IpAddr::V6(_) => panic!("tcp_state reads /proc/net/tcp: IPv4 only"),
    };
    let (local, remote) = (hex(local), hex(remote));
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.get(1) == Some(&local.as_str()) && fields.get(2) == Some(&remote.as_str()))
            .then(|| u8::from_str_radix(fields[3], 16).expect("state field"))
    })
}

/// Bytes this socket has sent but not yet had acknowledged (`SIOCOUTQ`).
pub fn unacked(stream: &TcpStream) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: TIOCOUTQ writes one c_int through the pointer, which is valid.
    let rc = unsafe { libc::ioctl(stream.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
    assert_eq!(rc, 0, "TIOCOUTQ: {}", std::io::Error::last_os_error());
    n as usize
}

/// Writes `sent` without reading until the server stops taking bytes, and
/// returns how many were written. The server stops reading at
/// `--max-pending`, then its receive buffer fills, then ours.
pub fn fill_until_blocked(client: &mut TcpStream, sent: &[u8]) -> usize {
    client.set_nonblocking(true).expect("non-blocking");
    let mut written = 0;
    let mut last_progress = Instant::now();
    // No progress for a while means both socket buffers are full; this window
    // only decides when to stop filling, nothing is asserted from it.
    while last_progress.elapsed() < Duration::from_millis(500) && written < sent.len() {
        match client.write(&sent[written..]) {
            Ok(n) => {
                written += n;
                last_progress = Instant::now();
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => panic!("write: {e}"),
        }
    }
    client.set_nonblocking(false).expect("blocking");
    written
}

/// CPU time (user + system) a process has used, from `/proc/PID/stat`, in clock ticks.
pub fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read stat");
    // Fields after the ")" of the command name; utime and stime are 14 and 15.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

/// Voluntary context switches of a process: each time it slept, for echod
/// each time it blocked in `epoll_wait`, so a count of the loop's wake-ups.
pub fn voluntary_switches(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("voluntary_ctxt_switches")
}

/// Polls `cond` until it holds or `limit` passes; returns whether it held.
/// For a wait whose outcome the test checks itself.
pub fn poll_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits until `cond` holds, polling; panics naming `what` after `limit`.
#[track_caller]
pub fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

// ------------------------------------------------ stderr the test arranges

/// The address of a listening TCP socket that process `pid` holds, found
/// in `/proc` (its descriptors, then `/proc/net/tcp` and `tcp6`), so a test
/// whose echod has no readable stderr (a full device, a pipe nobody reads)
/// still learns where it listens. `None` until the socket is listening.
pub fn listening_addr_of(pid: i32) -> Option<SocketAddr> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            let inode = target.strip_prefix("socket:[")?.strip_suffix(']')?;
            Some(inode.to_owned())
        })
        .collect();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local_address is field 1, st is field 3 (0A = LISTEN), inode is field 9.
            let (Some(local), Some(&"0A"), Some(inode)) =
                (fields.get(1), fields.get(3), fields.get(9))
            else {
                continue;
            };
            if inodes.iter().any(|i| i == inode) {
                return parse_proc_net_addr(local);
            }
        }
    }
    None
}

/// `0100007F:1F90` (IPv4, or 32 hex digits for IPv6) as the kernel prints
/// it: each 32-bit word of the address in host byte order, the port in hex.
fn parse_proc_net_addr(text: &str) -> Option<SocketAddr> {
    let (ip, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let mut bytes = Vec::new();
    for word in 0..ip.len() / 8 {
        let value = u32::from_str_radix(&ip[word * 8..word * 8 + 8], 16).ok()?;
        bytes.extend(value.to_ne_bytes());
    }
    let ip: std::net::IpAddr = match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok()?.into(),
        16 => <[u8; 16]>::try_from(bytes).ok()?.into(),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// An echod whose stderr the test arranged itself: nobody reads it here.
/// Readiness is its listening socket (see [`listening_addr_of`]): connects
/// queue in the backlog until the loop runs. Killed and reaped on drop.
pub struct Unwatched {
    child: Child,
    addr: SocketAddr,
    status: Option<ExitStatus>,
}

impl Unwatched {
    /// Spawns `cmd` (stdin and stdout null; stderr as the caller set it)
    /// and waits until it listens. `cmd` is consumed, so the parent keeps no
    /// copy of the child's stderr: a pipe's reader sees its end once the
    /// child exits.
    #[track_caller]
    pub fn spawn_command(mut cmd: Command) -> Unwatched {
        cmd.stdin(Stdio::null()).stdout(Stdio::null());
        let child = cmd.spawn().expect("spawn echod");
        drop(cmd);
        let mut echod = Unwatched {
            child,
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            status: None,
        };
        let pid = echod.pid();
        let deadline = Instant::now() + LIMIT;
        loop {
            if let Some(addr) = listening_addr_of(pid) {
                echod.addr = addr;
                return echod;
            }
            if let Some(status) = echod.try_status() {
                panic!("echod exited before listening: {status:?}");
            }
            assert!(
                Instant::now() < deadline,
                "echod did not listen within {LIMIT:?}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The child's PID.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The listener's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connects to the listener.
    #[track_caller]
    pub fn connect(&self) -> TcpStream {
        connect(self.addr)
    }

    /// Sends a signal to the child.
    pub fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on our own child's PID.
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(rc, 0, "kill({}, {sig}) failed", self.pid());
    }

    fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Waits for the child to exit and returns its status.
    #[track_caller]
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        if let Some(status) = self.status {
            return status;
        }
        let status = wait_for_exit(&mut self.child, limit)
            .unwrap_or_else(|| panic!("echod did not exit within {limit:?}"));
        self.status = Some(status);
        status
    }
}

impl Drop for Unwatched {
    fn drop(&mut self) {
        if self.try_status().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A pipe for a child's stderr whose reader stalls: the test holds the read
/// end and reads only when it chooses to.
pub struct StalledPipe {
    reader: std::fs::File,
    writer: Option<std::os::fd::OwnedFd>,
}

impl StalledPipe {
    /// A pipe of one page (4096 bytes), so a few dozen log lines fill it.
    pub fn new() -> StalledPipe {
        use std::os::fd::FromRawFd;
        let mut fds = [0; 2];
        // SAFETY: pipe2(2) fills two descriptors, close-on-exec so no other
        // test's child inherits them.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: F_SETPIPE_SZ on our own pipe; the kernel's minimum is a page.
        let size = unsafe { libc::fcntl(fds[1], libc::F_SETPIPE_SZ, 4096) };
        assert!(size > 0, "F_SETPIPE_SZ failed");
        // SAFETY: both descriptors are new and owned by nothing else.
        let (reader, writer) = unsafe {
            (
                std::fs::File::from_raw_fd(fds[0]),
                std::os::fd::OwnedFd::from_raw_fd(fds[1]),
            )
        };
        StalledPipe {
            reader,
            writer: Some(writer),
        }
    }

    /// Fills the pipe to the last byte, leaving its write end blocking: the
    /// next write to it would wait for a reader.
    pub fn fill(&mut self) {
        use std::os::fd::AsRawFd;
        let fd = self
            .writer
            .as_ref()
            .expect("writer not handed out")
            .as_raw_fd();
        // SAFETY: fcntl on our own descriptor. O_NONBLOCK is set on the
        // description only while filling, and cleared before the child gets it.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFL);
            libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
            let chunk = [b'#'; 512];
            // One byte at a time at the end, so no space at all is left.
            for len in [chunk.len(), 1] {
                while libc::write(fd, chunk.as_ptr().cast(), len) > 0 {}
            }
            libc::fcntl(fd, libc::F_SETFL, flags);
        }
    }

    /// The write end, as the child's stderr; the test keeps no copy.
    pub fn writer(&mut self) -> Stdio {
        Stdio::from(self.writer.take().expect("writer handed out once"))
    }

    /// Bytes waiting in the pipe (`FIONREAD`).
    pub fn queued(&self) -> usize {
        use std::os::fd::AsRawFd;
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD writes one c_int through a valid pointer.
        unsafe { libc::ioctl(self.reader.as_raw_fd(), libc::FIONREAD, &mut n) };
        n as usize
    }

    /// Starts reading: a thread forwards each line (lossy UTF-8) until the
    /// last writer closes the pipe.
    pub fn start_reading(self) -> Receiver<String> {
        let (tx, rx) = channel();
        let reader = self.reader;
        std::thread::spawn(move || {
            let mut reader = BufReader::new(reader);
            let mut line = Vec::new();
            while let Ok(n) = reader.read_until(b'\n', &mut line) {
                if n == 0
                    || tx
                        .send(String::from_utf8_lossy(&line).into_owned())
                        .is_err()
                {
                    break;
                }
                line.clear();
            }
        });
        rx
    }
}

/// Waits for a line containing `pattern` on `lines`, keeping every line
/// received in `seen`; fails naming `what` after `limit`.
#[track_caller]
pub fn next_line_containing(
    lines: &Receiver<String>,
    seen: &mut Vec<String>,
    pattern: &str,
    limit: Duration,
) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                seen.push(line.clone());
                if line.contains(pattern) {
                    return line;
                }
            }
            Err(err) => panic!(
                "no line containing {pattern:?} within {limit:?} ({err:?}); lines:\n{}",
                seen.concat()
            ),
        }
    }
}

/// Waits up to `limit` for `child` to exit: its status, or `None` (it is
/// still running; the caller decides whether to kill it). The one exit
/// wait every harness here uses.
pub fn wait_for_exit(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        // Polling the exit status; there is no portable exit event to block on.
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ------------------------------------------------------------ connect loop

/// What the attempts of a [`ConnectLoop`] saw.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tally {
    /// Connects attempted.
    pub attempts: u64,
    /// The byte came back.
    pub echoed: u64,
    /// An instance accepted it during its drain: the notice came (not a failure).
    pub drained: u64,
    /// The connect was refused.
    pub refused: u64,
    /// A reset or broken pipe, at any step.
    pub reset: u64,
    /// End-of-stream with neither echo nor notice.
    pub eof: u64,
    /// No answer within 5 s.
    pub timeout: u64,
    /// Anything else (wrong bytes, other errors).
    pub other: u64,
}

impl Tally {
    /// Attempts that got neither their echo nor the notice.
    pub fn failures(&self) -> u64 {
        self.refused + self.reset + self.eof + self.timeout + self.other
    }

    fn add(&mut self, o: &Tally) {
        self.attempts += o.attempts;
        self.echoed += o.echoed;
        self.drained += o.drained;
        self.refused += o.refused;
        self.reset += o.reset;
        self.eof += o.eof;
        self.timeout += o.timeout;
        self.other += o.other;
    }

    fn count_error(&mut self, err: &std::io::Error) {
        match err.kind() {
            ErrorKind::ConnectionRefused => self.refused += 1,
            ErrorKind::ConnectionReset | ErrorKind::BrokenPipe | ErrorKind::ConnectionAborted => {
                self.reset += 1
            }
            ErrorKind::WouldBlock | ErrorKind::TimedOut => self.timeout += 1,
            _ => self.other += 1,
        }
    }

    /// One attempt: connect, send one byte, read the echo or the notice, close.
    pub fn attempt(&mut self, addr: SocketAddr) {
        self.attempts += 1;
        let mut stream = match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
            Ok(s) => s,
            Err(e) => return self.count_error(&e),
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = stream.set_nodelay(true);
        if let Err(e) = stream.write_all(b"x") {
            return self.count_error(&e);
        }
        let mut buf = [0; 16];
        match stream.read(&mut buf) {
            Ok(0) => self.eof += 1,
            // The echo and the notice may come in one read.
            Ok(n) if buf[..n].starts_with(b"S") || buf[..n].ends_with(b"SHUTDOWN") => {
                self.drained += 1
            }
            Ok(_) if buf[0] == b'x' => self.echoed += 1,
            Ok(_) => self.other += 1,
            Err(e) => self.count_error(&e),
        }
    }
}

/// Client threads that each connect, send a byte, read the answer and
/// close, in a loop, until stopped (or a bound is reached).
pub struct ConnectLoop {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    attempts: std::sync::Arc<std::sync::atomic::AtomicU64>,
    threads: Vec<std::thread::JoinHandle<Tally>>,
}

impl ConnectLoop {
    /// Starts `threads` client threads on `addr`, each bounded to
    /// `max_attempts` attempts and to ten times [`LIMIT`].
    pub fn start(addr: SocketAddr, threads: usize, max_attempts: u64) -> ConnectLoop {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let attempts = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let threads = (0..threads)
            .map(|_| {
                let (stop, attempts) = (stop.clone(), attempts.clone());
                std::thread::spawn(move || {
                    let mut tally = Tally::default();
                    let started = Instant::now();
                    while !stop.load(Ordering::Relaxed)
                        && tally.attempts < max_attempts
                        && started.elapsed() < LIMIT * 10
                    {
                        tally.attempt(addr);
                        attempts.fetch_add(1, Ordering::Relaxed);
                    }
                    tally
                })
            })
            .collect();
        ConnectLoop {
            stop,
            attempts,
            threads,
        }
    }

    /// Attempts made so far, by every thread.
    pub fn attempts(&self) -> u64 {
        self.attempts.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits until the threads made `n` attempts in all.
    #[track_caller]
    pub fn wait_for_attempts(&self, n: u64) {
        wait_until(LIMIT, &format!("{n} connect attempts"), || {
            self.attempts() >= n
        });
    }

    /// Stops the threads and adds up what they saw.
    pub fn stop(self) -> Tally {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut total = Tally::default();
        for thread in self.threads {
            total.add(&thread.join().expect("client thread"));
        }
        total
    }
}

// ------------------------------------------------ HTTP for the health listener

/// One HTTP answer: the status code, the head (status line and headers,
/// without the blank line) and the body.
#[derive(Debug)]
pub struct HttpAnswer {
    /// The status code (200, 503, ...).
    pub status: u16,
    /// The status line and headers, CRLF-separated.
    pub head: String,
    /// Everything after the blank line.
    pub body: String,
}

impl HttpAnswer {
    /// Splits a whole answer read to end-of-stream.
    #[track_caller]
    pub fn parse(raw: &[u8]) -> HttpAnswer {
        let text = String::from_utf8_lossy(raw).into_owned();
        let (head, body) = text
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("no end of head in {text:?}"));
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("no status code in {head:?}"));
        HttpAnswer {
            status,
            head: head.to_owned(),
            body: body.to_owned(),
        }
    }

    /// The value of header `name` (case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.split("\r\n").skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }
}

/// Sends `request` as is, reads to end-of-stream and returns what came back.
#[track_caller]
pub fn http_raw(addr: SocketAddr, request: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut stream = connect(addr);
    stream.write_all(request)?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    Ok(answer)
}

/// True when `curl` runs here; checked once.
pub fn have_curl() -> bool {
    static HAVE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAVE.get_or_init(|| {
        Command::new("curl")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    })
}

/// `GET path` on `addr`, as a probe or a scraper would send it: with curl
/// when it is installed (a real client's request), else over a plain
/// `TcpStream`.
#[track_caller]
pub fn http_get(addr: SocketAddr, path: &str) -> HttpAnswer {
    if !have_curl() {
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
        let raw = http_raw(addr, request.as_bytes())
            .unwrap_or_else(|e| panic!("GET {path} from {addr}: {e}"));
        return HttpAnswer::parse(&raw);
    }
    let out = Command::new("curl")
        .args(["--silent", "--show-error", "--include", "--http1.1"])
        .args(["--max-time", &LIMIT.as_secs().to_string()])
        .arg(format!("http://{addr}{path}"))
        .stdin(Stdio::null())
        .output()
        .expect("run curl");
    assert!(
        out.status.success(),
        "curl GET {path} from {addr}: {:?} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    HttpAnswer::parse(&out.stdout)
}

/// Descriptors process `pid` holds open, from `/proc/PID/fd`.
pub fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| dir.count())
        .unwrap_or(0)
}

// ------------------------------------------------------------------ UDP

/// Sends `payload` to the UDP echo at `server` from a fresh client socket
/// and returns the reply (the read timeout is a safety net, not a wait).
#[track_caller]
pub fn udp_round_trip(server: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let local = if server.is_ipv4() {
        "127.0.0.1:0"
    } else {
        "[::1]:0"
    };
    let client = std::net::UdpSocket::bind(local).expect("bind a UDP client");
    client.set_read_timeout(Some(LIMIT)).expect("read timeout");
    client.send_to(payload, server).expect("send a datagram");
    let mut buf = vec![0; 64 * 1024];
    let (len, from) = client
        .recv_from(&mut buf)
        .unwrap_or_else(|e| panic!("no echo from {server}: {e}"));
    assert_eq!(from, server, "the echo comes from the address sent to");
    buf.truncate(len);
    buf
}

/// What a [`DatagramLoop`] saw.
#[derive(Debug, Default, Clone, Copy)]
pub struct DatagramTally {
    /// Datagrams sent.
    pub sent: u64,
    /// Datagrams whose own echo came back within the wait.
    pub answered: u64,
    /// Echoes of an earlier datagram, come after its wait ended.
    pub late: u64,
    /// Sends or receives that failed (an ICMP port unreachable, say).
    pub errors: u64,
}

/// A client thread that sends numbered datagrams to a UDP echo one at a
/// time, waiting up to a given time for each one's own echo before the
/// next, until stopped (or for ten times [`LIMIT`] at most).
pub struct DatagramLoop {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    answered: std::sync::Arc<std::sync::atomic::AtomicU64>,
    thread: std::thread::JoinHandle<DatagramTally>,
}

impl DatagramLoop {
    /// Starts the thread on `server`; each datagram waits `wait` for its echo.
    pub fn start(server: SocketAddr, wait: Duration) -> DatagramLoop {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let answered = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (stop2, answered2) = (stop.clone(), answered.clone());
        let thread = std::thread::spawn(move || {
            let client = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind a UDP client");
            client.connect(server).expect("connect the UDP client");
            let mut tally = DatagramTally::default();
            let started = Instant::now();
            let mut buf = [0u8; 64];
            while !stop2.load(Ordering::Relaxed) && started.elapsed() < LIMIT * 10 {
                let seq = tally.sent;
                let mut datagram = [0u8; 32];
                datagram[..8].copy_from_slice(&seq.to_be_bytes());
                tally.sent += 1;
                if client.send(&datagram).is_err() {
                    tally.errors += 1;
                    continue;
                }
                let until = Instant::now() + wait;
                loop {
                    let left = until.saturating_duration_since(Instant::now());
                    if left.is_zero() || client.set_read_timeout(Some(left)).is_err() {
                        break; // lost, as far as this loop is concerned
                    }
                    match client.recv(&mut buf) {
                        Ok(32) if buf[8..32] == [0; 24] => {
                            let got = u64::from_be_bytes(buf[..8].try_into().expect("8 bytes"));
                            if got == seq {
                                tally.answered += 1;
                                answered2.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                            tally.late += 1;
                        }
                        Ok(_) => panic!("an echo that is not a datagram sent: {:?}", &buf),
                        Err(e)
                            if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
                        {
                            break;
                        }
                        Err(_) => {
                            tally.errors += 1;
                            break;
                        }
                    }
                }
                // Pacing, not synchronisation: well under the default reply
                // rate limit (10,000 a second), and the two cores stay free
                // for the instances.
                std::thread::sleep(Duration::from_micros(200));
            }
            tally
        });
        DatagramLoop {
            stop,
            answered,
            thread,
        }
    }

    /// Datagrams answered so far.
    pub fn answered(&self) -> u64 {
        self.answered.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits until `n` datagrams in all were answered.
    #[track_caller]
    pub fn wait_for_answers(&self, n: u64) {
        wait_until(LIMIT, &format!("{n} datagrams answered"), || {
            self.answered() >= n
        });
    }

    /// Stops the thread and returns what it saw.
    pub fn stop(self) -> DatagramTally {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().expect("datagram thread")
    }
}
