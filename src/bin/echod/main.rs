//! The `echod` binary: inherited sockets -> argv -> options -> logger ->
//! signals -> bind (or take over, then confirm) -> handover socket -> pid
//! file -> readiness line -> run -> exit status (docs/protocol.md "Command
//! line", "Operations").
//!
//! Everything else lives in the library. Signal handlers go in before the
//! listeners are created, so a signal that arrives during start-up is queued
//! in the pipe rather than killing the process with clients in the backlog.

mod cli;
mod pidfile;
mod takeover;

use std::fmt;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use cli::{Command, UsageError};
use echod::{Server, SignalWatcher};
use pidfile::PidFile;

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(err) => {
            // A stderr that went away is no reason to panic on the way out.
            let _ = writeln!(std::io::stderr().lock(), "echod: {err}");
            err.exit_code()
        }
    }
}

fn run() -> Result<ExitCode, Failure> {
    // docs/protocol.md "Operations": a service manager's sockets are fd 3
    // onwards. Take them before anything opens a descriptor: with fd 3
    // missing, our own signal pipe would become fd 3 and be taken for one.
    // A usage error still comes first, though.
    let inherited = echod::take_inherited_listeners();
    let options = match cli::parse_args(std::env::args_os().skip(1))? {
        Command::Run(options) => *options,
        Command::Help => return Ok(print_and_exit(cli::HELP)),
        Command::Version => {
            let version = format!("echod {}\n", env!("CARGO_PKG_VERSION"));
            return Ok(print_and_exit(&version));
        }
    };
    let inherited = inherited?;
    // Only fails if a logger is already installed, which cannot happen here.
    let _ = echod::logging::init(options.log_level, options.log_timestamps);
    // docs/protocol.md "Running": room for many connections. The library
    // leaves process-wide limits alone; the binary asks for this one.
    match echod::raise_fd_limit() {
        Ok(limit) => log::debug!("descriptor limit: nofile={limit}"),
        Err(err) => log::warn!(
            "cannot raise the descriptor limit: {}",
            echod::Error::os_reason(&err)
        ),
    }
    let watcher = SignalWatcher::install(options.pid_file.as_deref())?;
    let mut server = match (&options.take_over, inherited) {
        (Some(path), Some(_)) => {
            return Err(Failure::Server(echod::Error::TakeOver {
                path: path.clone(),
                detail: "this process also inherited listening sockets (LISTEN_FDS); use one or the other".to_owned(),
            }));
        }
        // docs/protocol.md "Operations", take-over: takeover.rs.
        (Some(path), None) => match takeover::start(path, &options, watcher)? {
            takeover::Started::Serving(server) => *server,
            takeover::Started::Declined => return Ok(ExitCode::SUCCESS),
        },
        (None, inherited) => {
            let mut server = match inherited {
                Some(sockets) => {
                    let server = Server::from_listeners(options.config.clone(), sockets)?;
                    for addr in server.local_addrs() {
                        log::info!("using inherited socket: addr={addr}");
                    }
                    server
                }
                None => Server::bind(options.config.clone())?,
            };
            server.watch_signals(watcher)?;
            // Offered before the readiness line: a script that has seen
            // `listening on` may start the next take-over at once.
            if let Some(path) = &options.handover_socket {
                server.offer_take_over(path)?;
            }
            server
        }
    };
    server.notify_systemd();
    let pid = std::process::id();
    // The pid file comes before the readiness lines: once a script sees
    // `listening on`, the pid file is there to signal.
    let _pid_file = match &options.pid_file {
        Some(path) => match PidFile::write(path, pid) {
            Ok(file) => Some(file),
            // After a take-over the old instance is draining: this one
            // serves whatever happens to its pid file.
            Err(source) if options.take_over.is_some() => {
                let err = Failure::PidFile {
                    path: path.clone(),
                    source,
                };
                log::error!("{err}; serving on without it");
                None
            }
            Err(source) => {
                return Err(Failure::PidFile {
                    path: path.clone(),
                    source,
                });
            }
        },
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
    // The health listener's own line, after the echo listeners' (scripts
    // that count `listening on` lines count those first).
    if let Some(addr) = server.health_addr() {
        echod::logging::announce(format_args!("listening on {addr} proto=http pid={pid}"));
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
            let reason = echod::Error::os_reason(&err);
            let _ = writeln!(
                std::io::stderr().lock(),
                "echod: cannot write to stdout: {reason}"
            );
            ExitCode::FAILURE
        }
    }
}

/// Why the binary could not run, as one line and an exit status.
#[derive(Debug)]
enum Failure {
    /// A bad flag or value: exit 2.
    Usage(UsageError),
    /// The library could not start or run the server.
    Server(echod::Error),
    /// The pid file could not be written.
    PidFile {
        /// The path from `--pid-file`.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
}

impl Failure {
    /// 2 for a usage error (a config the library refused is one too), 1 for
    /// everything else.
    fn exit_code(&self) -> ExitCode {
        match self {
            Failure::Usage(_) => ExitCode::from(2),
            Failure::Server(err) => ExitCode::from(err.exit_code()),
            Failure::PidFile { .. } => ExitCode::FAILURE,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Usage(err) => write!(f, "{err}"),
            Failure::Server(err) => write!(f, "{err}"),
            Failure::PidFile { path, source } => write!(
                f,
                "cannot write pid file {}: {}",
                path.display(),
                echod::Error::os_reason(source)
            ),
        }
    }
}

impl From<UsageError> for Failure {
    fn from(err: UsageError) -> Self {
        Failure::Usage(err)
    }
}

impl From<echod::Error> for Failure {
    fn from(err: echod::Error) -> Self {
        Failure::Server(err)
    }
}
