//! The `echod` binary: inherited sockets -> argv -> Config -> logger ->
//! signals -> bind -> pid file -> run -> exit status (SPEC "Command line").
//!
//! Everything else lives in the library. Signal handlers go in before the
//! listeners are created, so a signal that arrives during start-up is queued
//! in the pipe rather than killing the process with clients in the backlog.

use std::io::Write;
use std::process::ExitCode;

use echod::{Command, Config, Error, Server, SignalWatcher};

#[path = "echod/pidfile.rs"]
mod pidfile;
use pidfile::PidFile;

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(err) => {
            // A stderr that went away is no reason to panic on the way out.
            let _ = writeln!(std::io::stderr().lock(), "echod: {err}");
            err.exit_code().into()
        }
    }
}

fn run() -> Result<ExitCode, Error> {
    // docs/protocol.md "Operations": a service manager's sockets are fd 3
    // onwards. Take them before anything opens a descriptor: with fd 3
    // missing, our own signal pipe would become fd 3 and be taken for one.
    // A usage error still comes first, though.
    let inherited = echod::sys::inherited_listeners();
    let config = match echod::config::parse_args(std::env::args_os().skip(1))? {
        Command::Run(config) => config,
        Command::Help => return Ok(print_and_exit(echod::config::HELP)),
        Command::Version => {
            let version = format!("echod {}\n", env!("CARGO_PKG_VERSION"));
            return Ok(print_and_exit(&version));
        }
    };
    let inherited = inherited.map_err(|detail| Error::Inherit { detail })?;
    init_logger(&config);
    // docs/protocol.md "Running": room for many connections. The library
    // leaves process-wide limits alone; the binary asks for this one.
    match echod::raise_fd_limit() {
        Ok(limit) => log::debug!("descriptor limit: nofile={limit}"),
        Err(err) => log::warn!(
            "cannot raise the descriptor limit: {}",
            echod::error::os_reason(&err)
        ),
    }
    let watcher = SignalWatcher::install(config.pid_file.as_deref())?;
    let mut server = match inherited {
        Some(sockets) => {
            let server = Server::from_listeners(config.clone(), sockets)?;
            for addr in server.local_addrs() {
                log::info!("using inherited socket: addr={addr}");
            }
            server
        }
        None => Server::bind(config.clone())?,
    };
    server.watch_signals(watcher)?;
    server.notify_systemd();
    let pid = std::process::id();
    // The pid file comes before the readiness lines: once a script sees
    // `listening on`, the pid file is there to signal.
    let _pid_file = match &config.pid_file {
        Some(path) => Some(PidFile::write(path, pid).map_err(|source| Error::PidFile {
            path: path.clone(),
            source,
        })?),
        None => None,
    };
    // Whatever --log-level says: scripts wait for this line
    // (docs/protocol.md "Command line").
    for addr in server.local_addrs() {
        echod::logging::announce(format_args!("listening on {addr} pid={pid}"));
    }
    // UDP echo (docs/protocol.md "UDP echo (RFC 862)"): one line per socket,
    // after every TCP line, so a reader of TCP lines finds them first.
    for addr in server.udp_addrs() {
        echod::logging::announce(format_args!("listening on {addr} proto=udp pid={pid}"));
    }
    server.run()?;
    Ok(ExitCode::SUCCESS)
}

/// Prints `--help` or `--version`. A stdout that cannot take it
/// (`>/dev/full`) is one line on stderr and exit 1: a script must not take
/// an empty file for the help. A reader that went away (`| head -1`) took
/// what it wanted: exit 0 quietly.
fn print_and_exit(text: &str) -> ExitCode {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(err) => {
            let reason = echod::error::os_reason(&err);
            let _ = writeln!(
                std::io::stderr().lock(),
                "echod: cannot write to stdout: {reason}"
            );
            ExitCode::FAILURE
        }
    }
}

fn init_logger(config: &Config) {
    // Only fails if a logger is already installed, which cannot happen here.
    let _ = echod::logging::init(config.log_level, config.log_timestamps);
}
