//! echod's command line: flags into a [`Options`] (the library's `Config`
//! plus what only the binary uses), `--help`, and the wording of every
//! usage error (docs/protocol.md "Command line").
//!
//! Parsing first, then the library's validation: a `ConfigError` names a
//! `Config` field, which is spelled like its flag (`max_connections` is
//! `--max-connections`), and becomes a usage error about that flag.

use std::ffi::OsString;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use echod::{Config, ConfigError};
use log::LevelFilter;

/// What the binary runs with: the server's `Config` and the binary's own settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The server's settings.
    pub config: Config,
    /// Where to write the PID after binding; removed at exit if it still holds this PID.
    pub pid_file: Option<PathBuf>,
    /// Log level from `--log-level`; `None` means `RUST_LOG`, else info.
    pub log_level: Option<LevelFilter>,
    /// Log lines begin with the UTC time (`--log-timestamps on`, the default).
    pub log_timestamps: bool,
    /// Take-over (docs/protocol.md "Operations"): offer this instance's
    /// listening sockets to a successor at this Unix socket path.
    pub handover_socket: Option<PathBuf>,
    /// Take-over: take the listening sockets over from the instance
    /// offering them at this path instead of binding `--listen`.
    pub take_over: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            config: Config::default(),
            pid_file: None,
            log_level: None,
            log_timestamps: true,
            handover_socket: None,
            take_over: None,
        }
    }
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Run the server with these options.
    Run(Box<Options>),
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

impl From<ConfigError> for UsageError {
    /// The library names a `Config` field; its flag has the same name in
    /// kebab case.
    fn from(err: ConfigError) -> Self {
        let flag = format!("--{}", err.field().replace('_', "-"));
        match err.value() {
            Some("") => UsageError::empty(&flag, err.reason()),
            Some(value) => UsageError::new(&flag, value, err.reason()),
            None => UsageError::new(&flag, "", err.reason()),
        }
    }
}

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
      --handover-socket PATH    offer a take-over: listen on this Unix socket (mode 0600) and
                                hand every listening socket (TCP, UDP, health) to the echod
                                that connects, then drain
      --take-over PATH          take the listening sockets over from the echod offering them at
                                PATH instead of binding --listen, --udp or --health; the old one
                                then drains
      --pid-file PATH           write the PID here after binding (atomically);
                                removed at exit if it still holds this PID
      --log-level LEVEL         error, warn, info, debug, trace or off [default: info, or RUST_LOG];
                                the 'listening on' line is printed at any level
      --log-timestamps on|off   begin log lines with the UTC time [default: on]
      --health ADDR             serve GET /livez, /readyz (503 from the first drain signal on)
                                and /metrics (Prometheus) over HTTP on ADDR [default: off];
                                its connections are never counted as clients
      --udp ADDR                also echo UDP datagrams (RFC 862) on ADDR, repeatable [default: none]
                                (port 0 picks a free port; the log says which)
      --udp-max-rate N          UDP replies a second over all --udp sockets, at least 1: a guard
                                against reflection, like ignoring source ports below 1024 [default: 10000]
  -h, --help                    print this help
  -V, --version                 print the version

Signals:
  SIGHUP, SIGINT, SIGTERM, SIGQUIT   begin the drain: stop accepting, echo what arrived,
                                     send the notice, wait for connections to leave
  the same again while draining      close everything now and exit
  a third                            exit at once
  with --drain-delay                 the first starts the lame duck (serving, not ready);
                                     another during it starts the drain; then as above
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

    let mut options = Options::default();
    let config = &mut options.config;
    let mut listen = Vec::new();
    let mut parser = lexopt::Parser::from_args(args);
    while let Some(arg) = parser.next().map_err(lexopt_error)? {
        match arg {
            Long("listen") => {
                let value = string_value(&mut parser, "--listen")?;
                listen.extend(parse_addr("--listen", &value)?);
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
                options.pid_file = Some(PathBuf::from(value));
            }
            Long("log-level") => {
                let value = string_value(&mut parser, "--log-level")?;
                options.log_level = Some(parse_level(&value)?);
            }
            Long("log-timestamps") => {
                let value = string_value(&mut parser, "--log-timestamps")?;
                options.log_timestamps = parse_on_off("--log-timestamps", &value)?;
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
            Long("handover-socket") => {
                let value = PathBuf::from(parser.value().map_err(lexopt_error)?);
                check_socket_path("--handover-socket", &value, true)?;
                options.handover_socket = Some(value);
            }
            Long("take-over") => {
                let value = PathBuf::from(parser.value().map_err(lexopt_error)?);
                check_socket_path("--take-over", &value, false)?;
                options.take_over = Some(value);
            }
            Long("udp") => {
                let value = string_value(&mut parser, "--udp")?;
                config.udp.extend(parse_addr("--udp", &value)?);
            }
            Long("udp-max-rate") => {
                let value = string_value(&mut parser, "--udp-max-rate")?;
                config.udp_max_rate = parse_count("--udp-max-rate", &value)?;
            }
            Long("health") => {
                let value = string_value(&mut parser, "--health")?;
                config.health = Some(parse_health(&value)?);
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
    Ok(Command::Run(Box::new(options)))
}

/// A take-over path a Unix socket address can hold (`offered`: also with
/// the temporary name bound beside it).
fn check_socket_path(flag: &str, path: &std::path::Path, offered: bool) -> Result<(), UsageError> {
    match echod::take_over_path_problem(path, offered) {
        None => Ok(()),
        Some(why) if path.as_os_str().is_empty() => Err(UsageError::empty(flag, &why)),
        Some(why) => Err(UsageError::new(flag, &path.to_string_lossy(), &why)),
    }
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

/// Parses `flag`'s `IP:PORT`, `[IPv6]:PORT` or `HOST:PORT` (resolved now,
/// every address kept).
fn parse_addr(flag: &str, value: &str) -> Result<Vec<SocketAddr>, UsageError> {
    if let Ok(addr) = value.parse::<SocketAddr>() {
        return Ok(vec![addr]);
    }
    if !value.contains(':') {
        return Err(UsageError::new(
            flag,
            value,
            "expected IP:PORT, e.g. 127.0.0.1:9999",
        ));
    }
    match value.to_socket_addrs() {
        Ok(addrs) => {
            let mut addrs: Vec<SocketAddr> = addrs.collect();
            addrs.dedup();
            if addrs.is_empty() {
                Err(UsageError::new(flag, value, "name has no address"))
            } else {
                Ok(addrs)
            }
        }
        Err(_) => Err(UsageError::new(
            flag,
            value,
            "expected IP:PORT or HOST:PORT that resolves",
        )),
    }
}

/// Parses `--health`'s one address: `IP:PORT`, `[IPv6]:PORT`, or
/// `HOST:PORT` resolved now (its first address).
fn parse_health(value: &str) -> Result<SocketAddr, UsageError> {
    if let Ok(addr) = value.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let expected = || UsageError::new("--health", value, "expected IP:PORT, e.g. 0.0.0.0:9990");
    if !value.contains(':') {
        return Err(expected());
    }
    value
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(expected)
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

    fn run_options(args: &[&str]) -> Result<Options, String> {
        match parse_args(args.iter().copied()) {
            Ok(Command::Run(options)) => Ok(*options),
            Ok(other) => Err(format!("unexpected {other:?}")),
            Err(err) => Err(err.to_string()),
        }
    }

    fn run(args: &[&str]) -> Result<Config, String> {
        run_options(args).map(|options| options.config)
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
    }

    #[test]
    fn every_flag_sets_its_field() {
        let options = run_options(&[
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
            "--handover-socket",
            "/run/echod/handover.sock",
            "--take-over",
            "/run/echod/old.sock",
        ])
        .unwrap();
        let config = &options.config;
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
        assert_eq!(options.pid_file, Some(PathBuf::from("/tmp/x.pid")));
        assert_eq!(options.log_level, Some(LevelFilter::Debug));
        assert!(config.reuse_port);
        assert_eq!(config.idle_timeout, Duration::from_secs(300));
        assert_eq!(config.max_connections_per_ip, 5);
        assert_eq!(
            options.handover_socket,
            Some(PathBuf::from("/run/echod/handover.sock"))
        );
        assert_eq!(
            options.take_over,
            Some(PathBuf::from("/run/echod/old.sock"))
        );
    }

    #[test]
    fn take_over_paths_must_fit_a_unix_socket_address() {
        // 107 bytes is the most sun_path holds with its NUL.
        let longest = format!("/{}", "s".repeat(106));
        assert!(run(&["--take-over", &longest]).is_ok());
        let too_long = format!("/{}", "s".repeat(107));
        let err = run(&["--take-over", &too_long]).unwrap_err();
        assert!(
            err.starts_with("--take-over \"/sss")
                && err.contains("is 108 bytes; a Unix socket path holds at most 107"),
            "{err}"
        );
        // The handover socket is first bound at a temporary name beside it,
        // which is longer than a short name in a long directory.
        assert!(run(&["--handover-socket", "/run/echod/handover.sock"]).is_ok());
        let deep = format!("/{}/h.sock", "d".repeat(70));
        let err = run(&["--handover-socket", &deep]).unwrap_err();
        assert!(
            err.contains("its directory is too long") && err.contains("at most 107"),
            "{err}"
        );
        assert!(run(&["--take-over", &deep]).is_ok());
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
                &["--take-over", ""],
                "--take-over \"\": must name a Unix socket",
            ),
            (
                &["--handover-socket", ""],
                "--handover-socket \"\": must name a Unix socket",
            ),
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
                &["--udp-max-rate", "0"],
                "--udp-max-rate \"0\": must be at least 1: the limit guards against reflection",
            ),
            (
                &["--udp-max-rate", "4294967296"],
                "--udp-max-rate \"4294967296\": is too large",
            ),
            (
                &["--udp", "nonsense"],
                "--udp \"nonsense\": expected IP:PORT",
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
    fn a_config_error_is_worded_as_a_usage_error_about_its_flag() {
        let err = run(&["--shutdown-message", ""]).unwrap_err();
        assert!(
            err.starts_with("--shutdown-message \"\": must not be empty"),
            "{err}"
        );
        let err = run(&["--max-connections", "0"]).unwrap_err();
        assert_eq!(
            err,
            "--max-connections \"0\": must be at least 1 (see --help)"
        );
    }

    #[test]
    fn log_timestamps_is_on_or_off() {
        assert!(run_options(&[]).unwrap().log_timestamps);
        assert!(
            run_options(&["--log-timestamps", "on"])
                .unwrap()
                .log_timestamps
        );
        assert!(
            !run_options(&["--log-timestamps=off"])
                .unwrap()
                .log_timestamps
        );
        let err = run(&["--log-timestamps", "yes"]).unwrap_err();
        assert_eq!(
            err,
            "--log-timestamps \"yes\": expected on or off (see --help)"
        );
    }

    #[test]
    fn health_takes_one_address_not_shared_with_listen() {
        assert_eq!(run(&[]).unwrap().health, None);
        let config = run(&["--health", "127.0.0.1:9990"]).unwrap();
        assert_eq!(config.health, Some("127.0.0.1:9990".parse().unwrap()));
        let config = run(&["--health=[::1]:0"]).unwrap();
        assert_eq!(config.health, Some("[::1]:0".parse().unwrap()));
        for (args, expected) in [
            (
                &["--health", "9990"][..],
                "--health \"9990\": expected IP:PORT",
            ),
            (
                &["--health", "127.0.0.1:99999"][..],
                "--health \"127.0.0.1:99999\": expected IP:PORT",
            ),
            (
                &["--listen", "127.0.0.1:9999", "--health", "127.0.0.1:9999"][..],
                "--health \"127.0.0.1:9999\": is also a listen address",
            ),
        ] {
            let err = run(args).unwrap_err();
            assert!(err.contains(expected), "{args:?}: {err:?}");
        }
        // Port 0 twice is two different ports.
        assert!(run(&["--listen", "127.0.0.1:0", "--health", "127.0.0.1:0"]).is_ok());
    }

    #[test]
    fn byte_sizes_overflowing_are_refused() {
        let err = run(&["--max-pending", "99999999999999999999G"]).unwrap_err();
        assert!(err.contains("--max-pending"), "{err}");
    }

    #[test]
    fn udp_is_off_by_default_and_its_flags_set_their_fields() {
        let config = run(&[]).unwrap();
        assert!(config.udp.is_empty());
        assert_eq!(config.udp_max_rate, 10_000);
        let config = run(&[
            "--udp",
            "127.0.0.1:0",
            "--udp=[::1]:7007",
            "--udp-max-rate",
            "50",
        ])
        .unwrap();
        assert_eq!(
            config.udp,
            vec![
                "127.0.0.1:0".parse::<SocketAddr>().unwrap(),
                "[::1]:7007".parse().unwrap()
            ]
        );
        assert_eq!(config.udp_max_rate, 50);
        // --udp does not replace the TCP listener's default.
        assert_eq!(config.listen, Config::default().listen);
    }
}
