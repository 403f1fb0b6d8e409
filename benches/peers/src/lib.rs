//! Start-up helpers shared by the peer servers: reading the one `ADDR`
//! argument and printing the readiness line.
//!
//! Owns only the contract the benchmark relies on (one argument, one
//! `listening on IP:PORT` line on stdout, flushed). It deliberately owns
//! nothing about serving: each server binary stays a self-contained,
//! canonical example of its style so the comparison measures the style,
//! not a shared helper.

use std::io::Write;
use std::net::SocketAddr;

/// Reads the single `ADDR` argument (for example `127.0.0.1:0`).
///
/// These are benchmark peers, so a bad invocation ends the process with a
/// usage line and exit status 2 rather than being reported up.
pub fn addr_from_args(program: &str) -> SocketAddr {
    let mut args = std::env::args().skip(1);
    let (Some(arg), None) = (args.next(), args.next()) else {
        eprintln!("usage: {program} ADDR   (for example 127.0.0.1:0)");
        std::process::exit(2);
    };
    match arg.parse() {
        Ok(addr) => addr,
        Err(err) => {
            eprintln!("{program}: invalid ADDR {arg:?}: {err}");
            std::process::exit(2);
        }
    }
}

/// Ends the process with `PROGRAM: MESSAGE` on stderr and exit status 1,
/// for start-up failures such as an address already in use.
pub fn exit_with(program: &str, message: impl std::fmt::Display) -> ! {
    eprintln!("{program}: {message}");
    std::process::exit(1);
}

/// Prints `listening on IP:PORT` with the port the kernel actually bound and
/// flushes, because the benchmark reads this line as the readiness signal
/// and stdout may be a pipe.
pub fn announce(addr: SocketAddr) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "listening on {addr}").expect("write the listening line to stdout");
    out.flush().expect("flush the listening line to stdout");
}
