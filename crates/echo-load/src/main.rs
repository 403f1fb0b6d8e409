//! `echo-load`: argv -> LoadConfig (or UdpConfig) -> run -> print -> ExitCode.
//!
//! Only parses the command line, runs [`echo_load::run`] (or
//! [`echo_load::run_udp`] with `--udp`) and maps the report to an exit
//! status (docs/protocol.md "The load generator"): 0 when every byte was
//! verified and nothing went wrong, 1 when data was wrong or lost or the
//! run could not happen, 2 on a usage error.

use std::io::IsTerminal as _;
use std::net::{SocketAddr, ToSocketAddrs as _};
use std::num::IntErrorKind;
use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

use lexopt::ValueExt as _;

use echo_load::{LoadConfig, LoadError, Payload, Stop, UdpConfig, run, run_udp};

const HELP: &str = "\
echo-load: drive an echo server with many connections, verify every echoed
byte, and report throughput, latency and drains; or, with --udp, measure a
path through any UDP echo server (RFC 862): round trips, loss, duplicates,
reordering and jitter

Usage: echo-load [OPTIONS] [ADDR]
       echo-load --udp [UDP OPTIONS] [ADDR]

Arguments:
  [ADDR]  server address, host:port or [v6]:port [default: 127.0.0.1:9999]

Options:
  -c, --connections N       connections to open [default: 50]
  -d, --duration SECS       send for SECS seconds, fractions allowed [default: 10]
  -n, --messages N          send exactly N messages in total instead
  -s, --size BYTES          generated payload of BYTES bytes per message [default: 64]
  -m, --message TEXT        send TEXT as every message instead
  -p, --pipeline K          messages in flight per connection [default: 1]
  -r, --rate R              open loop: R messages/s in total; latency is then
                            counted from each message's scheduled send time
  -t, --threads N           worker threads [default: number of CPUs]
      --connect-timeout SECS  connect timeout; also how long nothing may move (no
                              byte sent or received) while an echo or an end-of-stream
                              is awaited before the run ends with timeouts [default: 5]
      --warmup SECS         verify but do not measure the first SECS seconds [default: 0]
      --pin CPU,CPU..       pin worker i to the i-th CPU of the list (cycling)
      --shutdown-message TEXT  the notice a draining server sends [default: SHUTDOWN]
      --json                print one JSON object instead of the summary table
      --progress            one progress line per second on stderr (default
                            when stderr is a terminal)
  -h, --help                print this help
  -V, --version             print the version

UDP options (--udp: datagrams on an open-loop schedule, one thread; each
carries a sequence number, its send time and a checked payload):
      --udp                 measure over UDP
  -c, --flows N             flows, each its own socket connected to ADDR [default: 1]
  -r, --rate R              datagrams a second over all flows [default: 1000];
                            round trips count from each scheduled send time
  -d, --duration SECS       send for SECS seconds [default: 10]
  -n, --messages N          send exactly N datagrams in total instead
  -s, --size BYTES          bytes per datagram, the 24-byte header included
                            [default: 64]
      --reply-timeout SECS  how long replies are awaited after the last send;
                            a datagram still unanswered then is lost [default: 1]
      --max-loss FRACTION   a loss up to FRACTION (0 to 1) is still clean [default: 0]
      --json, --progress    as above

Limits (beyond them, a usage error):
  --connections at most 1000000, and connections x --pipeline at most 16777216;
  --duration, --warmup and --connect-timeout at most 1000000000 seconds;
  --rate at least one message every 1000000000 seconds
  With --udp: --flows at most 1000000; --size from 24 to 65507 (IPv4) or
  65527 (IPv6); --rate at most 10000000; --messages, or rate x duration, at
  most 1073741824 datagrams (a bit each in memory); --reply-timeout at most
  1000000000 seconds

Exit status:
  0  every echoed byte was verified and no error occurred (a drain announced
     by the shutdown message is not an error); with --udp: no loss (beyond
     --max-loss), no duplicate, no truncated or corrupt reply (reordering
     alone is not an error)
  1  data was wrong or lost, a connection failed, or the run could not start
  2  usage error, out-of-range values included
";

/// A usage error: what was wrong and why.
struct Usage {
    what: String,
    why: String,
}

impl Usage {
    fn new(what: impl Into<String>, why: impl Into<String>) -> Usage {
        Usage {
            what: what.into(),
            why: why.into(),
        }
    }
}

impl From<lexopt::Error> for Usage {
    fn from(err: lexopt::Error) -> Usage {
        use lexopt::Error as E;
        match err {
            E::MissingValue { option: Some(o) } => Usage::new(o, "missing value"),
            E::UnexpectedOption(o) => Usage::new(o, "unknown option"),
            E::UnexpectedArgument(a) => Usage::new(a.to_string_lossy(), "unexpected argument"),
            E::UnexpectedValue { option, value } => Usage::new(
                format!("{option}={}", value.to_string_lossy()),
                "this option takes no value",
            ),
            E::NonUnicodeValue(v) => Usage::new(v.to_string_lossy(), "not valid UTF-8"),
            other => Usage::new("arguments", other.to_string()),
        }
    }
}

/// What the command line asks for.
enum Command {
    Help,
    Version,
    Run {
        config: Box<LoadConfig>,
        json: bool,
        typed: Typed,
    },
    Udp {
        config: Box<UdpConfig>,
        json: bool,
        typed: Typed,
    },
}

/// The values given on the command line as typed, by long flag, so that an
/// error the library finds later can quote the flag and its value.
#[derive(Default)]
struct Typed(Vec<(&'static str, String)>);

impl Typed {
    /// Takes the value of `flag` from the parser and remembers it.
    fn value(&mut self, parser: &mut lexopt::Parser, flag: &'static str) -> Result<String, Usage> {
        let value = parser.value()?.string()?;
        self.0.push((flag, value.clone()));
        Ok(value)
    }

    /// `--flag "value"` with the last value given to `flag`, or `--flag`
    /// alone when it was not given (its default was rejected).
    fn quote(&self, flag: &str) -> String {
        match self.0.iter().rev().find(|(f, _)| *f == flag) {
            Some((_, value)) => format!("{flag} {value:?}"),
            None => flag.to_string(),
        }
    }

    /// True when `flag` was given.
    fn has(&self, flag: &str) -> bool {
        self.0.iter().any(|(f, _)| *f == flag)
    }

    /// The flag and value behind a configuration field the library
    /// rejected: `--field-name`, except that the flows of a UDP run may
    /// have been given as `-c`/`--connections`.
    fn quote_field(&self, field: &str) -> String {
        let flag = format!("--{}", field.replace('_', "-"));
        if flag == "--flows" && !self.has("--flows") && self.has("--connections") {
            return self.quote("--connections");
        }
        self.quote(&flag)
    }
}

fn main() -> ExitCode {
    match parse_args() {
        Ok(Command::Help) => {
            out(HELP);
            ExitCode::SUCCESS
        }
        Ok(Command::Version) => {
            out(&format!("echo-load {}\n", env!("CARGO_PKG_VERSION")));
            ExitCode::SUCCESS
        }
        Ok(Command::Run {
            config,
            json,
            typed,
        }) => match run(&config) {
            Ok(report) => {
                if json {
                    out(&format!("{}\n", report.to_json()));
                } else {
                    out(&format!(
                        "echo-load: {} connections to {}\n{report}\n",
                        config.connections, config.addr
                    ));
                }
                verdict(report.is_clean())
            }
            Err(err) => load_failed(err, &typed),
        },
        Ok(Command::Udp {
            config,
            json,
            typed,
        }) => match run_udp(&config) {
            Ok(report) => {
                if json {
                    out(&format!("{}\n", report.to_json()));
                } else {
                    let flows = match config.flows {
                        1 => "1 flow".to_string(),
                        n => format!("{n} flows"),
                    };
                    out(&format!(
                        "echo-load: udp, {flows} to {}, {}-byte datagrams at {}/s\n{report}\n",
                        config.addr, config.size, config.rate
                    ));
                }
                verdict(report.is_clean())
            }
            Err(err) => load_failed(err, &typed),
        },
        Err(usage) => usage_error(&usage),
    }
}

/// Exit status 0 for a clean run, 1 otherwise.
fn verdict(clean: bool) -> ExitCode {
    if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// A run that could not happen: a field the library rejected is a usage
/// error quoting the flag as typed; anything else is exit 1.
fn load_failed(err: LoadError, typed: &Typed) -> ExitCode {
    match err {
        LoadError::InvalidConfig { field, reason } => {
            usage_error(&Usage::new(typed.quote_field(field), reason))
        }
        err => {
            err_line(&format!("echo-load: {err}"));
            ExitCode::from(1)
        }
    }
}

/// Writes to stdout; a reader that went away (`echo-load | head -1`) is not
/// worth a panic, and the exit status still tells the result.
fn out(text: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    let _ = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush());
}

/// Writes one line to stderr, ignoring a stderr that went away.
fn err_line(text: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{text}");
}

fn usage_error(usage: &Usage) -> ExitCode {
    err_line(&format!(
        "echo-load: {}: {} (see echo-load --help)",
        usage.what, usage.why
    ));
    ExitCode::from(2)
}

/// Flags of the TCP mode only.
const TCP_ONLY: [&str; 7] = [
    "--message",
    "--pipeline",
    "--threads",
    "--connect-timeout",
    "--warmup",
    "--pin",
    "--shutdown-message",
];

/// Flags of the UDP mode only.
const UDP_ONLY: [&str; 3] = ["--flows", "--reply-timeout", "--max-loss"];

fn parse_args() -> Result<Command, Usage> {
    use lexopt::prelude::*;
    let mut config = LoadConfig::default();
    let mut udp = UdpConfig::default();
    let (mut json, mut progress, mut is_udp) = (false, false, false);
    let (mut duration, mut messages) = (None, None);
    let (mut size, mut message) = (None, None);
    let (mut connections, mut flows) = (None, None);
    let mut addr = None;
    let mut typed = Typed::default();
    let mut parser = lexopt::Parser::from_env();
    while let Some(arg) = parser.next()? {
        let flag = match arg {
            Short('c') | Long("connections") => "--connections",
            Short('d') | Long("duration") => "--duration",
            Short('n') | Long("messages") => "--messages",
            Short('s') | Long("size") => "--size",
            Short('m') | Long("message") => "--message",
            Short('p') | Long("pipeline") => "--pipeline",
            Short('r') | Long("rate") => "--rate",
            Short('t') | Long("threads") => "--threads",
            Long("connect-timeout") => "--connect-timeout",
            Long("warmup") => "--warmup",
            Long("pin") => "--pin",
            Long("shutdown-message") => "--shutdown-message",
            Long("flows") => "--flows",
            Long("reply-timeout") => "--reply-timeout",
            Long("max-loss") => "--max-loss",
            Long("udp") => {
                is_udp = true;
                continue;
            }
            Long("json") => {
                json = true;
                continue;
            }
            Long("progress") => {
                progress = true;
                continue;
            }
            Short('h') | Long("help") => return Ok(Command::Help),
            Short('V') | Long("version") => return Ok(Command::Version),
            Value(value) if addr.is_none() => {
                addr = Some(value.string()?);
                continue;
            }
            _ => return Err(arg.unexpected().into()),
        };
        // Every option left takes a value.
        let value = typed.value(&mut parser, flag)?;
        match flag {
            "--connections" => connections = Some(count(&value, flag)?),
            "--duration" => duration = Some(seconds(&value, flag)?),
            "--messages" => messages = Some(count(&value, flag)?),
            "--size" => size = Some(count(&value, flag)?),
            "--message" => message = Some(value),
            "--pipeline" => config.pipeline = count(&value, flag)?,
            "--rate" => config.rate = Some(number(&value, flag)?),
            "--threads" => config.threads = count(&value, flag)?,
            "--connect-timeout" => config.connect_timeout = seconds(&value, flag)?,
            "--warmup" => config.warmup = seconds(&value, flag)?,
            "--pin" => config.pin_cpus = cpus(&value)?,
            "--shutdown-message" => config.shutdown_message = value.into_bytes(),
            "--flows" => flows = Some(count(&value, flag)?),
            "--reply-timeout" => udp.reply_timeout = seconds(&value, flag)?,
            "--max-loss" => udp.max_loss = number(&value, flag)?,
            // Only the flags named above reach here.
            other => return Err(Usage::new(other, "unknown option")),
        }
    }
    let stop = match (duration, messages) {
        (Some(_), Some(_)) => {
            return Err(Usage::new("--messages", "cannot be used with --duration"));
        }
        (_, Some(n)) => Some(Stop::Messages(n)),
        (Some(d), None) => Some(Stop::Duration(d)),
        (None, None) => None,
    };
    let progress = progress || std::io::stderr().is_terminal();
    // A flag of the other mode is refused, not silently ignored.
    let (foreign, why) = if is_udp {
        (&TCP_ONLY[..], "cannot be used with --udp")
    } else {
        (&UDP_ONLY[..], "only with --udp")
    };
    if let Some(flag) = foreign.iter().find(|f| typed.has(f)) {
        return Err(Usage::new(typed.quote(flag), why));
    }
    if is_udp {
        udp.flows = flows.or(connections).unwrap_or(udp.flows);
        udp.stop = stop.unwrap_or(udp.stop);
        udp.size = size.unwrap_or(udp.size);
        udp.rate = config.rate.unwrap_or(udp.rate);
        if let Some(addr) = addr {
            udp.addr = resolve(&addr)?;
        }
        udp.progress = progress;
        return Ok(Command::Udp {
            config: Box::new(udp),
            json,
            typed,
        });
    }
    config.connections = connections.unwrap_or(config.connections);
    config.stop = stop.unwrap_or(config.stop);
    config.payload = match (size, message) {
        (Some(_), Some(_)) => return Err(Usage::new("--message", "cannot be used with --size")),
        (_, Some(text)) => Payload::Literal(text.into_bytes()),
        (Some(n), None) => Payload::Size(n),
        (None, None) => config.payload,
    };
    if let Some(addr) = addr {
        config.addr = resolve(&addr)?;
    }
    config.progress = progress;
    Ok(Command::Run {
        config: Box::new(config),
        json,
        typed,
    })
}

fn number<T: FromStr>(value: &str, flag: &str) -> Result<T, Usage> {
    value
        .parse()
        .map_err(|_| Usage::new(format!("{flag} {value:?}"), "not a valid number"))
}

/// A whole number of things (connections, messages, bytes, threads).
/// Range checks that depend on the run are the library's; here only what
/// the type cannot hold is "too large".
fn count<T: TryFrom<u64>>(value: &str, flag: &str) -> Result<T, Usage> {
    let what = || format!("{flag} {value:?}");
    match value.parse::<u64>() {
        Ok(n) => T::try_from(n).map_err(|_| Usage::new(what(), "too large")),
        Err(err) if *err.kind() == IntErrorKind::PosOverflow => {
            Err(Usage::new(what(), "too large"))
        }
        Err(_) => Err(Usage::new(what(), "not a valid number")),
    }
}

fn seconds(value: &str, flag: &str) -> Result<Duration, Usage> {
    let what = || format!("{flag} {value:?}");
    let secs: f64 = value
        .parse()
        .map_err(|_| Usage::new(what(), "not a number of seconds"))?;
    if secs.is_nan() || secs < 0.0 {
        return Err(Usage::new(what(), "must be zero or more seconds"));
    }
    // Past what a Duration holds (1e20, inf): the longest Duration, which
    // the library rejects naming its limit, one wording for every case.
    Ok(Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX))
}

fn cpus(list: &str) -> Result<Vec<usize>, Usage> {
    list.split(',')
        .map(|cpu| {
            cpu.trim().parse().map_err(|_| {
                Usage::new(format!("--pin {list:?}"), "not a comma-separated CPU list")
            })
        })
        .collect()
}

fn resolve(addr: &str) -> Result<SocketAddr, Usage> {
    if let Ok(parsed) = SocketAddr::from_str(addr) {
        return Ok(parsed);
    }
    match addr.to_socket_addrs() {
        Ok(mut found) => found
            .next()
            .ok_or_else(|| Usage::new(addr, "no address found for this host")),
        Err(err) => Err(Usage::new(addr, format!("not a host:port address ({err})"))),
    }
}
