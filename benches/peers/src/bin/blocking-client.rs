//! `blocking-client -a ADDR -c CONNECTIONS -l LENGTH -t SECONDS [--pin CPU]`:
//! a closed-loop load client in the style of rust_echo_bench.
//!
//! One OS thread per connection, each doing a blocking `write_all` of LENGTH
//! bytes and then a blocking `read_exact` of LENGTH bytes, over and over, and
//! counting round trips. That is the client most published Rust echo
//! comparisons use, so figures taken with it line up with theirs. It does not
//! check the echoed bytes (check_echo.py and echo-load do that) and it does
//! not measure latency; it measures round trips per second.
//!
//! All connections are opened before the clock starts, so connect cost is not
//! counted. After SECONDS a flag tells every thread to stop after its current
//! round trip; requests are the completed round trips and seconds is the time
//! from start to the last thread stopping.
//!
//! Prints one line of JSON on stdout: `{"requests": N, "seconds": S, "rps": R}`.
//! Exit status: 0 when every connection ran to the end, 1 when any failed
//! (the JSON is still printed; the failures go to stderr), 2 on a usage error.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

const USAGE: &str =
    "usage: blocking-client -a ADDR -c CONNECTIONS -l LENGTH -t SECONDS [--pin CPU]";

/// A server that stops answering ends the run instead of hanging it.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Each thread only needs its message buffers and a few frames; small stacks
/// keep thousands of connections cheap.
const THREAD_STACK: usize = 256 * 1024;

/// The parsed command line.
struct Options {
    /// Where the echo server listens.
    addr: SocketAddr,
    /// Number of connections, and so of threads; at least 1.
    connections: usize,
    /// Bytes per message; at least 1.
    length: usize,
    /// How long to send for once every connection is open.
    duration: Duration,
    /// CPU to pin the whole process to, if any.
    pin: Option<usize>,
}

fn main() -> ExitCode {
    let options = match parse_args(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(message) => {
            eprintln!("blocking-client: {message}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if let Some(cpu) = options.pin {
        if let Err(err) = pin_to_cpu(cpu) {
            eprintln!("blocking-client: cannot pin to CPU {cpu}: {err}");
            return ExitCode::from(1);
        }
    }
    run(&options)
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Options, String> {
    let (mut addr, mut connections, mut length, mut seconds, mut pin) =
        (None, None, None, None, None);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |what: &str| format!("{flag} {value:?}: expected {what}");
        match flag.as_str() {
            "-a" | "--address" => addr = Some(value.parse().map_err(|_| bad("IP:PORT"))?),
            "-c" | "--connections" => {
                connections = Some(positive(&value).ok_or_else(|| bad("a count > 0"))?)
            }
            "-l" | "--length" => {
                length = Some(positive(&value).ok_or_else(|| bad("a byte count > 0"))?)
            }
            "-t" | "--duration" => {
                let secs: f64 = value.parse().map_err(|_| bad("seconds > 0"))?;
                if !(secs > 0.0 && secs.is_finite()) {
                    return Err(bad("seconds > 0"));
                }
                seconds = Some(Duration::from_secs_f64(secs));
            }
            "--pin" => pin = Some(value.parse().map_err(|_| bad("a CPU number"))?),
            _ => return Err(format!("unknown flag {flag:?}")),
        }
    }
    Ok(Options {
        addr: addr.ok_or("-a ADDR is required")?,
        connections: connections.ok_or("-c CONNECTIONS is required")?,
        length: length.ok_or("-l LENGTH is required")?,
        duration: seconds.ok_or("-t SECONDS is required")?,
        pin,
    })
}

fn positive(value: &str) -> Option<usize> {
    value.parse().ok().filter(|&n| n > 0)
}

/// Pins the calling thread to `cpu`. Called in `main` before any thread is
/// spawned: `sched_setaffinity(0, ..)` only affects the calling thread, but
/// every thread created afterwards inherits its mask, so this pins the whole
/// process.
fn pin_to_cpu(cpu: usize) -> std::io::Result<()> {
    // SAFETY: cpu_set_t is plain data, zeroed is the empty set; CPU_SET
    // checks `cpu` against the set's size and the pointer is valid for the call.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if cpu >= 8 * std::mem::size_of::<libc::cpu_set_t>() {
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        }
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn run(options: &Options) -> ExitCode {
    let stop = Arc::new(AtomicBool::new(false));
    // Every worker plus main: nobody starts until all connections are open.
    let start = Arc::new(Barrier::new(options.connections + 1));
    let mut workers = Vec::with_capacity(options.connections);
    for index in 0..options.connections {
        let (stop, start) = (Arc::clone(&stop), Arc::clone(&start));
        let (addr, length) = (options.addr, options.length);
        let spawned = thread::Builder::new()
            .name(format!("conn-{index}"))
            .stack_size(THREAD_STACK)
            .spawn(move || round_trips(addr, length, &start, &stop));
        match spawned {
            Ok(handle) => workers.push(handle),
            Err(err) => {
                // The barrier would wait forever for the missing thread.
                eprintln!("blocking-client: cannot spawn thread {index}: {err}");
                std::process::exit(1);
            }
        }
    }

    start.wait();
    let began = Instant::now();
    thread::sleep(options.duration);
    stop.store(true, Ordering::Relaxed);

    let mut requests: u64 = 0;
    let mut failures = 0;
    for handle in workers {
        match handle.join() {
            Ok(Ok(count)) => requests += count,
            Ok(Err(message)) => {
                eprintln!("blocking-client: {message}");
                failures += 1;
            }
            Err(_) => failures += 1,
        }
    }
    let seconds = began.elapsed().as_secs_f64();
    let rps = requests as f64 / seconds;
    println!("{{\"requests\": {requests}, \"seconds\": {seconds:.3}, \"rps\": {rps:.1}}}");
    if failures == 0 {
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "blocking-client: {failures} of {} connections failed",
            options.connections
        );
        ExitCode::from(1)
    }
}

/// One connection's loop. Returns the completed round trips, or a one-line
/// description of what failed (the count of a failed connection is dropped,
/// and the run exits 1, so a partial figure is never mistaken for a full one).
fn round_trips(
    addr: SocketAddr,
    length: usize,
    start: &Barrier,
    stop: &AtomicBool,
) -> Result<u64, String> {
    let connected = TcpStream::connect(addr).and_then(|stream| {
        stream.set_read_timeout(Some(READ_TIMEOUT))?;
        Ok(stream)
    });
    // Wait at the barrier even after a failed connect, or main would hang.
    start.wait();
    let mut stream = connected.map_err(|err| format!("cannot connect to {addr}: {err}"))?;
    let message = vec![b'x'; length];
    let mut echo = vec![0u8; length];
    let mut count = 0;
    while !stop.load(Ordering::Relaxed) {
        stream
            .write_all(&message)
            .map_err(|err| format!("write to {addr} after {count} round trips: {err}"))?;
        stream
            .read_exact(&mut echo)
            .map_err(|err| format!("read from {addr} after {count} round trips: {err}"))?;
        count += 1;
    }
    Ok(count)
}
