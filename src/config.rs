//! `Config`: every setting echod runs with, its default, its validation, and
//! the parsing of echod's command line into it (SPEC "Command line").
//!
//! This module decides what a valid configuration is and words every usage
//! error. It does not bind sockets, install a logger or read the environment
//! beyond resolving `--listen` host names: the binary and the server do that.

use std::ffi::OsString;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use log::LevelFilter;

/// The address echod listens on when no `--listen` is given.
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 1), 9999));

/// The most TCP listeners one server takes (each needs a token of its own).
pub const MAX_LISTENERS: usize = 256;
/// The most UDP sockets one server takes.
pub const MAX_UDP_SOCKETS: usize = 256;

/// Everything the server needs to run.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// let mut config = echod::Config::default();
/// config.listen = vec!["127.0.0.1:0".parse().unwrap()];
/// config.drain_timeout = Duration::from_millis(500);
/// assert_eq!(config.shutdown_message, b"SHUTDOWN");
/// assert!(config.validate().is_ok());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Addresses to listen on, each its own listener; port 0 picks a free port.
    pub listen: Vec<SocketAddr>,
    /// How long a drain may last before the remaining connections are closed.
    pub drain_timeout: Duration,
    /// How long the lame duck lasts: after the first drain signal the server
    /// keeps serving (reporting not ready) this long before it drains;
    /// zero drains at once.
    pub drain_delay: Duration,
    /// The notice: exact bytes sent to every connection when the drain begins.
    pub shutdown_message: Vec<u8>,
    /// Connections served at once; at the limit the server stops accepting.
    pub max_connections: usize,
    /// Unsent echo bytes a connection may hold before the server stops reading it.
    pub max_pending: usize,
    /// Unsent echo bytes all connections together may hold (the memory
    /// budget); when spent, a connection that needs more stops being read.
    pub max_pending_total: usize,
    /// The listen backlog passed to `listen(2)` (the kernel caps it at `somaxconn`).
    pub backlog: u32,
    /// Where to write the PID after binding; removed at exit if it still holds this PID.
    pub pid_file: Option<PathBuf>,
    /// Log level from `--log-level`; `None` means `RUST_LOG`, else info.
    pub log_level: Option<LevelFilter>,
    /// Log lines begin with the UTC time (`--log-timestamps on`, the default).
    pub log_timestamps: bool,
    /// Set `SO_REUSEPORT` on the listeners so several processes share a port.
    pub reuse_port: bool,
    /// A connection that has received and sent nothing this long is closed
    /// (FIN, no notice); zero means never (docs/protocol.md "Protections").
    pub idle_timeout: Duration,
    /// Connections one source (an IPv4 address or an IPv6 /64) may hold at
    /// once; more are closed at once with nothing sent; zero means no limit.
    pub max_connections_per_ip: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: vec![DEFAULT_LISTEN],
            drain_timeout: Duration::from_secs(5),
            drain_delay: Duration::ZERO,
            shutdown_message: b"SHUTDOWN".to_vec(),
            max_connections: 10_000,
            max_pending: 256 * 1024,
            max_pending_total: 16 * 1024 * 1024,
            backlog: 1024,
            pid_file: None,
            log_level: None,
            log_timestamps: true,
            reuse_port: false,
            idle_timeout: Duration::ZERO,
            max_connections_per_ip: 0,
        }
    }
}

impl Config {
    /// Checks the invariants the server relies on.
    ///
    /// # Errors
    ///
    /// Returns a [`UsageError`] naming the offending setting.
    pub fn validate(&self) -> Result<(), UsageError> {
        if self.listen.is_empty() {
            return Err(UsageError::new(
                "--listen",
                "",
                "at least one address is needed",
            ));
        }
        if self.listen.len() > MAX_LISTENERS {
            let value = self.listen.len().to_string();
            return Err(UsageError::new("--listen", &value, "at most 256 addresses"));
        }
        if self.max_connections == 0 {
            return Err(UsageError::new(
                "--max-connections",
                "0",
                "must be at least 1",
            ));
        }
        if self.max_pending == 0 {
            return Err(UsageError::new("--max-pending", "0", "must be at least 1"));
        }
        if self.max_pending_total == 0 {
            return Err(UsageError::new(
                "--max-pending-total",
                "0",
                "must be at least 1",
            ));
        }
        if self.backlog == 0 || self.backlog > i32::MAX as u32 {
            let value = self.backlog.to_string();
            return Err(UsageError::new(
                "--backlog",
                &value,
                "must be 1 to 2147483647",
            ));
        }
        // docs/protocol.md "Command line": a client tells a drain from a
        // crash by the notice before end-of-stream; an empty one says nothing.
        if self.shutdown_message.is_empty() {
            return Err(UsageError::empty(
                "--shutdown-message",
                "must not be empty: clients tell a drain from a crash by it",
            ));
        }
        Ok(())
    }
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Run the server with this configuration.
    Run(Config),
    /// Print the help text and exit 0.
    Help,
    /// Print the version and exit 0.
    Version,
}

/// A command-line mistake: which flag, which value, and why it was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageError {
    /// The one-line description, without the program name.
    message: String,
}

impl UsageError {
    fn new(flag: &str, value: &str, why: &str) -> Self {
        let message = if value.is_empty() {
            format!("{flag}: {why}")
        } else {
            format!("{flag} {value:?}: {why}")
        };
        UsageError { message }
    }

    /// An empty value where one is needed: `--flag "": why`.
    fn empty(flag: &str, why: &str) -> Self {
        UsageError {
            message: format!("{flag} \"\": {why}"),
        }
    }

    fn plain(message: String) -> Self {
        UsageError { message }
    }
}

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (see --help)", self.message)
    }
}

impl std::error::Error for UsageError {}

/// echod's `--help` text.
pub const HELP: &str = "\
echod: a TCP echo service that drains gracefully

Usage: echod [OPTIONS]

Options:
      --listen ADDR             address to listen on, repeatable [default: 127.0.0.1:9999]
                                (port 0 picks a free port; the log says which)
      --drain-timeout SECS      how long a drain may last, fractions allowed;
                                0 = write what the kernel takes at once, then close [default: 5]
      --drain-delay SECS        lame duck: after the first drain signal keep serving (not ready)
                                this long, then drain; a second signal drains at once [default: 0]
      --shutdown-message TEXT   the notice sent to every connection on drain, not empty [default: SHUTDOWN]
      --max-connections N       connections served at once [default: 10000]
      --max-pending BYTES       unsent echo bytes per connection before reading pauses;
                                suffixes K, M (KiB, MiB) allowed [default: 256K]
      --max-pending-total BYTES unsent echo bytes of all connections together (the memory
                                budget); when spent, connections that need more pause [default: 16M]
      --backlog N               listen backlog [default: 1024]
      --idle-timeout SECS       close a connection that received and sent nothing this long
                                (FIN, no notice), checked every quarter of it, 15 s apart at
                                most; fractions allowed; 0 = never [default: 0]
      --max-connections-per-ip N
                                connections one IPv4 address or IPv6 /64 may hold at once; more
                                are closed at once with nothing sent; 0 = no limit [default: 0]
      --reuse-port              set SO_REUSEPORT so several processes share the port
      --pid-file PATH           write the PID here after binding (atomically);
                                removed at exit if it still holds this PID
      --log-level LEVEL         error, warn, info, debug, trace or off [default: info, or RUST_LOG];
                                the 'listening on' line is printed at any level
      --log-timestamps on|off   begin log lines with the UTC time [default: on]
  -h, --help                    print this help
  -V, --version                 print the version

Signals:
  SIGHUP, SIGINT, SIGTERM, SIGQUIT   begin the drain: stop accepting, echo what arrived,
                                     send the notice, wait for connections to leave
  the same again while draining      close everything now and exit
  a third                            exit at once
  SIGUSR1                            log one line of live statistics

Exit status:
  0  after a drain, whatever started it
  1  cannot run (address in use, permission denied, ...)
  2  usage error
";

/// Parses echod's arguments (without the program name) into a [`Command`].
///
/// # Errors
///
/// Returns a [`UsageError`] for an unknown flag, a missing or malformed
/// value, or a configuration that fails [`Config::validate`].
pub fn parse_args<I>(args: I) -> Result<Command, UsageError>
where
    I: IntoIterator,
    I::Item: Into<OsString>,
{
    use lexopt::prelude::*;

    let mut config = Config::default();
    let mut listen = Vec::new();
    let mut parser = lexopt::Parser::from_args(args);
    while let Some(arg) = parser.next().map_err(lexopt_error)? {
        match arg {
            Long("listen") => {
                let value = string_value(&mut parser, "--listen")?;
                listen.extend(parse_listen(&value)?);
            }
            Long("drain-timeout") => {
                let value = string_value(&mut parser, "--drain-timeout")?;
                config.drain_timeout = parse_seconds("--drain-timeout", &value)?;
            }
            Long("drain-delay") => {
                let value = string_value(&mut parser, "--drain-delay")?;
                config.drain_delay = parse_seconds("--drain-delay", &value)?;
            }
            Long("shutdown-message") => {
                let value = string_value(&mut parser, "--shutdown-message")?;
                config.shutdown_message = value.into_bytes();
            }
            Long("max-connections") => {
                let value = string_value(&mut parser, "--max-connections")?;
                config.max_connections = parse_count("--max-connections", &value)?;
            }
            Long("max-pending") => {
                let value = string_value(&mut parser, "--max-pending")?;
                config.max_pending = parse_bytes("--max-pending", &value)?;
            }
            Long("max-pending-total") => {
                let value = string_value(&mut parser, "--max-pending-total")?;
                config.max_pending_total = parse_bytes("--max-pending-total", &value)?;
            }
            Long("backlog") => {
                let value = string_value(&mut parser, "--backlog")?;
                config.backlog = parse_count("--backlog", &value)?;
            }
            Long("pid-file") => {
                let value = parser.value().map_err(lexopt_error)?;
                if value.is_empty() {
                    return Err(UsageError::empty("--pid-file", "must name a file"));
                }
                config.pid_file = Some(PathBuf::from(value));
            }
            Long("log-level") => {
                let value = string_value(&mut parser, "--log-level")?;
                config.log_level = Some(parse_level(&value)?);
            }
            Long("log-timestamps") => {
                let value = string_value(&mut parser, "--log-timestamps")?;
                config.log_timestamps = parse_on_off("--log-timestamps", &value)?;
            }
            Long("reuse-port") => config.reuse_port = true,
            // docs/protocol.md "Protections".
            Long("idle-timeout") => {
                let value = string_value(&mut parser, "--idle-timeout")?;
                config.idle_timeout = parse_seconds("--idle-timeout", &value)?;
            }
            Long("max-connections-per-ip") => {
                let value = string_value(&mut parser, "--max-connections-per-ip")?;
                config.max_connections_per_ip = parse_count("--max-connections-per-ip", &value)?;
            }
            Short('h') | Long("help") => return Ok(Command::Help),
            Short('V') | Long("version") => return Ok(Command::Version),
            _ => return Err(lexopt_error(arg.unexpected())),
        }
    }
    if !listen.is_empty() {
        config.listen = listen;
    }
    config.validate()?;
    Ok(Command::Run(config))
}

fn lexopt_error(err: lexopt::Error) -> UsageError {
    // lexopt words its errors as `invalid option '--x'`; keep them, lowercase.
    UsageError::plain(err.to_string())
}

fn string_value(parser: &mut lexopt::Parser, flag: &str) -> Result<String, UsageError> {
    let value = parser.value().map_err(lexopt_error)?;
    value
        .into_string()
        .map_err(|raw| UsageError::new(flag, &raw.to_string_lossy(), "is not valid UTF-8"))
}

/// Parses `IP:PORT`, `[IPv6]:PORT` or `HOST:PORT` (resolved now, every address kept).
fn parse_listen(value: &str) -> Result<Vec<SocketAddr>, UsageError> {
    if let Ok(addr) = value.parse::<SocketAddr>() {
        return Ok(vec![addr]);
    }
    if !value.contains(':') {
        return Err(UsageError::new(
            "--listen",
            value,
            "expected IP:PORT, e.g. 127.0.0.1:9999",
        ));
    }
    match value.to_socket_addrs() {
        Ok(addrs) => {
            let mut addrs: Vec<SocketAddr> = addrs.collect();
            addrs.dedup();
            if addrs.is_empty() {
                Err(UsageError::new("--listen", value, "name has no address"))
            } else {
                Ok(addrs)
            }
        }
        Err(_) => Err(UsageError::new(
            "--listen",
            value,
            "expected IP:PORT or HOST:PORT that resolves",
        )),
    }
}

fn parse_seconds(flag: &str, value: &str) -> Result<Duration, UsageError> {
    let expected = || UsageError::new(flag, value, "expected seconds, e.g. 5 or 0.5");
    // `f64` parsing takes "inf" and "NaN", and turns "1e400" into infinity.
    let secs: f64 = value.trim().parse().map_err(|_| expected())?;
    if secs.is_nan() {
        return Err(expected());
    }
    if secs < 0.0 {
        return Err(UsageError::new(flag, value, "must be zero or more seconds"));
    }
    Duration::try_from_secs_f64(secs).map_err(|_| too_large(flag, value))
}

fn too_large(flag: &str, value: &str) -> UsageError {
    UsageError::new(flag, value, "is too large")
}

fn parse_count<T>(flag: &str, value: &str) -> Result<T, UsageError>
where
    T: std::str::FromStr<Err = std::num::ParseIntError>,
{
    value
        .trim()
        .parse()
        .map_err(|err: std::num::ParseIntError| {
            if *err.kind() == std::num::IntErrorKind::PosOverflow {
                too_large(flag, value)
            } else {
                UsageError::new(flag, value, "expected a whole number")
            }
        })
}

/// Parses a byte count with an optional binary suffix: `4096`, `256K`, `1M`, `1MiB`.
fn parse_bytes(flag: &str, value: &str) -> Result<usize, UsageError> {
    let trimmed = value.trim();
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (digits, suffix) = trimmed.split_at(split);
    let multiplier: usize = match suffix.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1024,
        "m" | "mb" | "mib" => 1024 * 1024,
        "g" | "gb" | "gib" => 1024 * 1024 * 1024,
        _ => {
            return Err(UsageError::new(
                flag,
                value,
                "expected bytes, e.g. 262144 or 256K",
            ));
        }
    };
    let count: usize = digits.parse().map_err(|err: std::num::ParseIntError| {
        if *err.kind() == std::num::IntErrorKind::PosOverflow {
            too_large(flag, value)
        } else {
            UsageError::new(flag, value, "expected bytes, e.g. 262144 or 256K")
        }
    })?;
    count
        .checked_mul(multiplier)
        .ok_or_else(|| too_large(flag, value))
}

fn parse_on_off(flag: &str, value: &str) -> Result<bool, UsageError> {
    match value {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(UsageError::new(flag, value, "expected on or off")),
    }
}

fn parse_level(value: &str) -> Result<LevelFilter, UsageError> {
    value.parse().map_err(|_| {
        UsageError::new(
            "--log-level",
            value,
            "expected error, warn, info, debug, trace or off",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Config, String> {
        match parse_args(args.iter().copied()) {
            Ok(Command::Run(config)) => Ok(config),
            Ok(other) => Err(format!("unexpected {other:?}")),
            Err(err) => Err(err.to_string()),
        }
    }

    #[test]
    fn no_arguments_give_the_documented_defaults() {
        let config = run(&[]).unwrap();
        assert_eq!(config, Config::default());
        assert_eq!(config.listen, vec!["127.0.0.1:9999".parse().unwrap()]);
        assert_eq!(config.max_pending, 262_144);
        assert_eq!(config.max_pending_total, 16 << 20);
        assert_eq!(config.backlog, 1024);
        assert_eq!(config.drain_timeout, Duration::from_secs(5));
        assert_eq!(config.idle_timeout, Duration::ZERO);
        assert_eq!(config.max_connections_per_ip, 0);
    }

    #[test]
    fn every_flag_sets_its_field() {
        let config = run(&[
            "--listen",
            "127.0.0.1:0",
            "--listen",
            "[::1]:7000",
            "--drain-timeout",
            "0.25",
            "--shutdown-message",
            "BYE",
            "--max-connections",
            "7",
            "--max-pending",
            "64K",
            "--max-pending-total",
            "2M",
            "--backlog",
            "4096",
            "--pid-file",
            "/tmp/x.pid",
            "--log-level",
            "debug",
            "--reuse-port",
            "--idle-timeout",
            "300",
            "--max-connections-per-ip",
            "5",
        ])
        .unwrap();
        assert_eq!(
            config.listen,
            vec![
                "127.0.0.1:0".parse::<SocketAddr>().unwrap(),
                "[::1]:7000".parse().unwrap()
            ]
        );
        assert_eq!(config.drain_timeout, Duration::from_millis(250));
        assert_eq!(config.shutdown_message, b"BYE");
        assert_eq!(config.max_connections, 7);
        assert_eq!(config.max_pending, 65_536);
        assert_eq!(config.max_pending_total, 2 << 20);
        assert_eq!(config.backlog, 4096);
        assert_eq!(config.pid_file, Some(PathBuf::from("/tmp/x.pid")));
        assert_eq!(config.log_level, Some(LevelFilter::Debug));
        assert!(config.reuse_port);
        assert_eq!(config.idle_timeout, Duration::from_secs(300));
        assert_eq!(config.max_connections_per_ip, 5);
    }

    #[test]
    fn equals_form_and_zero_timeout_are_accepted() {
        let config = run(&["--drain-timeout=0", "--max-pending=1M"]).unwrap();
        assert_eq!(config.drain_timeout, Duration::ZERO);
        assert_eq!(config.max_pending, 1 << 20);
    }

    #[test]
    fn help_and_version_win() {
        assert_eq!(parse_args(["--help"]).unwrap(), Command::Help);
        assert_eq!(parse_args(["-h"]).unwrap(), Command::Help);
        assert_eq!(parse_args(["-V"]).unwrap(), Command::Version);
    }

    #[test]
    fn rejections_name_the_flag_and_the_value() {
        let cases: &[(&[&str], &str)] = &[
            (
                &["--drain-timeout", "-1"],
                "--drain-timeout \"-1\": must be zero or more seconds",
            ),
            (
                &["--drain-timeout", "soon"],
                "--drain-timeout \"soon\": expected seconds",
            ),
            (
                &["--drain-timeout", "NaN"],
                "--drain-timeout \"NaN\": expected seconds",
            ),
            (
                &["--drain-timeout", "inf"],
                "--drain-timeout \"inf\": is too large",
            ),
            (
                &["--drain-timeout", "1e400"],
                "--drain-timeout \"1e400\": is too large",
            ),
            (
                &["--drain-timeout", "-inf"],
                "--drain-timeout \"-inf\": must be zero or more seconds",
            ),
            (
                &["--max-pending", "99999999999999999999G"],
                "--max-pending \"99999999999999999999G\": is too large",
            ),
            (
                &["--max-pending", "99999999999G"],
                "--max-pending \"99999999999G\": is too large",
            ),
            (
                &["--backlog", "4294967296"],
                "--backlog \"4294967296\": is too large",
            ),
            (
                &["--max-connections", "99999999999999999999"],
                "--max-connections \"99999999999999999999\": is too large",
            ),
            (&["--pid-file", ""], "--pid-file \"\": must name a file"),
            (
                &["--shutdown-message", ""],
                "--shutdown-message \"\": must not be empty",
            ),
            (
                &["--max-connections", "0"],
                "--max-connections \"0\": must be at least 1",
            ),
            (
                &["--max-connections", "-3"],
                "--max-connections \"-3\": expected a whole number",
            ),
            (
                &["--max-pending", "12Q"],
                "--max-pending \"12Q\": expected bytes",
            ),
            (
                &["--max-pending", "0"],
                "--max-pending \"0\": must be at least 1",
            ),
            (
                &["--max-pending-total", "0"],
                "--max-pending-total \"0\": must be at least 1",
            ),
            (
                &["--max-pending-total", "lots"],
                "--max-pending-total \"lots\": expected bytes",
            ),
            (
                &["--backlog", "0"],
                "--backlog \"0\": must be 1 to 2147483647",
            ),
            (
                &["--listen", "nonsense"],
                "--listen \"nonsense\": expected IP:PORT",
            ),
            (
                &["--listen", "127.0.0.1:99999"],
                "--listen \"127.0.0.1:99999\"",
            ),
            (
                &["--log-level", "loud"],
                "--log-level \"loud\": expected error, warn",
            ),
            (
                &["--idle-timeout", "-5"],
                "--idle-timeout \"-5\": must be zero or more seconds",
            ),
            (
                &["--idle-timeout", "never"],
                "--idle-timeout \"never\": expected seconds",
            ),
            (
                &["--max-connections-per-ip", "-1"],
                "--max-connections-per-ip \"-1\": expected a whole number",
            ),
            (
                &["--max-connections-per-ip", "99999999999999999999"],
                "--max-connections-per-ip \"99999999999999999999\": is too large",
            ),
            (&["--bogus"], "invalid option '--bogus'"),
            (&["--listen"], "missing argument for option '--listen'"),
            (&["stray"], "unexpected argument"),
        ];
        for (args, expected) in cases {
            let err = run(args).unwrap_err();
            assert!(
                err.contains(expected),
                "{args:?}: {err:?} lacks {expected:?}"
            );
            assert!(err.ends_with("(see --help)"), "{args:?}: {err:?}");
            assert!(!err.contains('\n'), "{args:?}: one line: {err:?}");
        }
    }

    #[test]
    fn an_embedder_cannot_set_an_empty_notice() {
        let config = Config {
            shutdown_message: Vec::new(),
            ..Config::default()
        };
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("--shutdown-message"), "{err}");
    }

    #[test]
    fn log_timestamps_is_on_or_off() {
        assert!(run(&[]).unwrap().log_timestamps);
        assert!(run(&["--log-timestamps", "on"]).unwrap().log_timestamps);
        assert!(!run(&["--log-timestamps=off"]).unwrap().log_timestamps);
        let err = run(&["--log-timestamps", "yes"]).unwrap_err();
        assert_eq!(
            err,
            "--log-timestamps \"yes\": expected on or off (see --help)"
        );
    }

    #[test]
    fn byte_sizes_overflowing_are_refused() {
        let err = run(&["--max-pending", "99999999999999999999G"]).unwrap_err();
        assert!(err.contains("--max-pending"), "{err}");
    }
}
