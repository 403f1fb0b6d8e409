//! The servers under test: building the peers, starting a server as a
//! pinned child process, waiting for its `listening on IP:PORT` line, and
//! killing it again whatever happens (a `Drop` guard, and `PR_SET_PDEATHSIG`
//! in case the bench itself dies without unwinding).

use std::io::{self, BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

/// One server implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Echod,
    C,
    TokioCt,
    TokioMt,
    Mio,
}

impl Kind {
    /// Short name used in tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Echod => "echod",
            Kind::C => "c-epoll",
            Kind::TokioCt => "tokio-ct",
            Kind::TokioMt => "tokio-mt",
            Kind::Mio => "mio",
        }
    }
}

/// A server binary that exists and can be started.
#[derive(Debug, Clone)]
pub struct Server {
    pub kind: Kind,
    pub path: PathBuf,
}

/// echod itself plus every peer that could be built; prints why a peer is
/// missing.
pub fn available(root: &Path) -> Vec<Server> {
    let mut servers = vec![Server {
        kind: Kind::Echod,
        path: PathBuf::from(env!("CARGO_BIN_EXE_echod")),
    }];
    let peers = root.join("benches/peers");
    let c_out = peers.join("target/epoll_echo");
    match build_c(&peers.join("c/epoll_echo.c"), &c_out) {
        Ok(()) => servers.push(Server {
            kind: Kind::C,
            path: c_out,
        }),
        Err(e) => println!("SKIP c-epoll: cannot build it with gcc: {e}"),
    }
    let release = peers.join("target/release");
    match build_rust_peers(&peers) {
        Ok(()) => {
            for (kind, bin) in [
                (Kind::TokioCt, "tokio-ct-echo"),
                (Kind::TokioMt, "tokio-mt-echo"),
                (Kind::Mio, "mio-echo"),
            ] {
                servers.push(Server {
                    kind,
                    path: release.join(bin),
                });
            }
        }
        Err(e) => println!("SKIP tokio-ct, tokio-mt, mio, blocking-client: {e}"),
    }
    servers
}

/// Path of the blocking client, when the Rust peers were built.
pub fn blocking_client(root: &Path) -> Option<PathBuf> {
    let path = root.join("benches/peers/target/release/blocking-client");
    path.exists().then_some(path)
}

fn build_c(source: &Path, out: &Path) -> Result<(), String> {
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let status = Command::new("gcc")
        .args(["-O2", "-Wall", "-Wextra", "-o"])
        .arg(out)
        .arg(source)
        .status()
        .map_err(|e| format!("cannot run gcc: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("gcc failed: {status}"))
    }
}

fn build_rust_peers(peers: &Path) -> Result<(), String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "--quiet", "--manifest-path"])
        .arg(peers.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(peers.join("target"))
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("cargo build of benches/peers failed: {status}"))
    }
}

/// How to start a server.
#[derive(Debug, Clone, Default)]
pub struct Launch {
    /// CPU to pin the process (all its threads) to.
    pub pin: Option<usize>,
    /// A program to run the server under, e.g. valgrind and its options.
    pub wrapper: Vec<String>,
    /// Extra echod flags (ignored for peers).
    pub echod_args: Vec<String>,
    /// Longest wait for the listening line.
    pub ready_timeout: Duration,
}

impl Launch {
    pub fn pinned(pin: Option<usize>) -> Launch {
        Launch {
            pin,
            ready_timeout: Duration::from_secs(10),
            ..Launch::default()
        }
    }
}

/// A started server. Dropping it kills the process and reaps it.
#[derive(Debug)]
pub struct Running {
    pub addr: SocketAddr,
    pub pid: i32,
    child: Option<Child>,
}

impl Running {
    /// Sends `signal` to the server.
    pub fn signal(&self, signal: libc::c_int) -> io::Result<()> {
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        if unsafe { libc::kill(self.pid, signal) } == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Takes the child out, e.g. to wait for it on another thread. The
    /// caller then owns killing it.
    pub fn take_child(&mut self) -> Option<Child> {
        self.child.take()
    }

    /// Waits up to `timeout` for the server to exit; true when it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        let Some(child) = self.child.as_mut() else {
            return true;
        };
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return true;
            }
            thread::sleep(Duration::from_millis(5));
        }
        false
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The command that starts `server` on `listen`, pinned as `launch` says.
pub fn command(server: &Server, listen: &str, launch: &Launch) -> Command {
    let mut args: Vec<String> = launch.wrapper.clone();
    args.push(server.path.display().to_string());
    if server.kind == Kind::Echod {
        args.extend(["--listen".to_string(), listen.to_string()]);
        args.extend(launch.echod_args.iter().cloned());
    } else {
        args.push(listen.to_string());
    }
    let mut cmd = Command::new(&args[0]);
    cmd.args(&args[1..]).stdin(Stdio::null());
    let pin = launch.pin;
    // SAFETY: the closure only makes async-signal-safe system calls.
    unsafe {
        cmd.pre_exec(move || child_setup(pin));
    }
    cmd
}

/// In the child before exec: die with the bench, and pin to one CPU (what
/// `taskset -c CPU` does, without an extra exec in the start-up time).
fn child_setup(pin: Option<usize>) -> io::Result<()> {
    // SAFETY: plain system calls on the current process with valid arguments.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        if let Some(cpu) = pin {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

/// Starts `server` on 127.0.0.1:0 and waits for its listening line.
pub fn start(server: &Server, launch: &Launch) -> Result<Running, String> {
    let mut cmd = command(server, "127.0.0.1:0", launch);
    // echod logs on stderr, the peers print on stdout.
    let echod = server.kind == Kind::Echod;
    if echod {
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    } else {
        cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", server.path.display()))?;
    let pipe: Box<dyn Read + Send> = match (echod, child.stdout.take(), child.stderr.take()) {
        (true, _, Some(err)) => Box::new(err),
        (false, Some(out), _) => Box::new(out),
        _ => return Err("no pipe to read the listening line from".into()),
    };
    let pid = child.id() as i32;
    let mut running = Running {
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        pid,
        child: Some(child),
    };
    running.addr = wait_listening(pipe, launch.ready_timeout)
        .map_err(|e| format!("{} did not start: {e}", server.kind.name()))?;
    Ok(running)
}

/// Reads lines until `listening on IP:PORT`; keeps draining the pipe after
/// that on a thread so the server never blocks on a full pipe.
fn wait_listening(pipe: Box<dyn Read + Send>, timeout: Duration) -> Result<SocketAddr, String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if !sent {
                if let Some(addr) = parse_listening(&line) {
                    sent = tx.send(Ok(addr)).is_ok();
                } else {
                    let _ = tx.send(Err(line));
                }
            }
        }
    });
    let deadline = std::time::Instant::now() + timeout;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(Ok(addr)) => return Ok(addr),
            Ok(Err(line)) => seen.push(line),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                return Err(format!(
                    "no listening line within {timeout:?}; saw {seen:?}"
                ));
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(format!("exited before listening; output {seen:?}"));
            }
        }
    }
}

/// The address in a `... listening on IP:PORT ...` line.
fn parse_listening(line: &str) -> Option<SocketAddr> {
    let rest = &line[line.find("listening on ")? + "listening on ".len()..];
    rest.split_whitespace().next()?.parse().ok()
}

/// A free port on 127.0.0.1, for runs that must connect before any line
/// is printed.
pub fn free_port() -> io::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}
