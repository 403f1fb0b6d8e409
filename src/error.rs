//! `Error`: why echod could not start or had to stop, as one line and an exit code.
//!
//! Start-up failures (address in use, pid file not writable) and the rare
//! loop-fatal failure (`poll` itself failing) live here. Per-connection
//! errors never become an `Error`: they close that connection and stay in the
//! loop (STYLE "Errors and exit codes").

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

use crate::config::ConfigError;

/// A failure that stops echod, with the action, the target and the OS reason.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A [`crate::Config`] setting is out of range; for a program with a
    /// command line, a usage error (exit 2).
    Config(ConfigError),
    /// A listener could not be created, bound or put into listening state.
    Listen {
        /// The address we tried to listen on.
        addr: SocketAddr,
        /// What the OS said.
        source: io::Error,
    },
    /// A listener other than an echo listener (`purpose`: `health`, `udp`)
    /// could not be created, bound or put into listening state.
    ListenFor {
        /// What the listener is for, as the message names it: `health`, `udp`.
        purpose: &'static str,
        /// The address we tried to listen on.
        addr: SocketAddr,
        /// What the OS said.
        source: io::Error,
    },
    /// Sockets handed over by the service manager (`LISTEN_FDS`) were unusable.
    Inherit {
        /// What was wrong with them.
        detail: String,
    },
    /// Setting up the event loop failed (`epoll`, waker, signal pipe).
    Setup {
        /// What we were setting up.
        what: &'static str,
        /// What the OS said.
        source: io::Error,
    },
    /// `poll` failed with something other than `Interrupted`; the loop cannot go on.
    Poll(io::Error),
    /// A take-over ([`crate::take_over`]) failed; the instance at the path,
    /// if any, serves on untouched.
    TakeOver {
        /// The handover socket we tried to take over from.
        path: PathBuf,
        /// What went wrong, as one line.
        detail: String,
    },
    /// The handover socket ([`crate::Server::offer_take_over`]) could not be created.
    Handover {
        /// The path we tried to listen on.
        path: PathBuf,
        /// What the OS (or the check of the path) said.
        source: io::Error,
    },
}

impl Error {
    /// The process exit status for this error: 2 for usage, 1 for everything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Config(_) => 2,
            _ => 1,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config(err) => write!(f, "invalid configuration: {err}"),
            Error::Listen { addr, source } => {
                write!(f, "cannot listen on {addr}: {}", os_reason(source))
            }
            Error::ListenFor {
                purpose,
                addr,
                source,
            } => write!(
                f,
                "cannot listen on {addr} ({purpose}): {}",
                os_reason(source)
            ),
            Error::Inherit { detail } => write!(f, "cannot use inherited sockets: {detail}"),
            Error::Setup { what, source } => {
                write!(f, "cannot set up {what}: {}", os_reason(source))
            }
            Error::Poll(source) => write!(f, "event loop failed: {}", os_reason(source)),
            Error::TakeOver { path, detail } => {
                write!(f, "cannot take over from {}: {detail}", path.display())
            }
            Error::Handover { path, source } => write!(
                f,
                "cannot offer take-over at {}: {}",
                path.display(),
                os_reason(source)
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Config(err) => Some(err),
            Error::Listen { source, .. }
            | Error::ListenFor { source, .. }
            | Error::Setup { source, .. }
            | Error::Poll(source)
            | Error::Handover { source, .. } => Some(source),
            Error::Inherit { .. } | Error::TakeOver { .. } => None,
        }
    }
}

impl From<ConfigError> for Error {
    fn from(err: ConfigError) -> Self {
        Error::Config(err)
    }
}

impl Error {
    /// An OS error as every error line words it: lowercase, short, no
    /// "(os error N)" (`address in use`, `permission denied`).
    pub fn os_reason(err: &io::Error) -> String {
        os_reason(err)
    }
}

/// The OS reason in the project's style: lowercase, short, no "(os error N)".
pub(crate) fn os_reason(err: &io::Error) -> String {
    match err.kind() {
        io::ErrorKind::AddrInUse => "address in use".to_owned(),
        io::ErrorKind::AddrNotAvailable => "address not available on this machine".to_owned(),
        io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
        io::ErrorKind::NotFound => "no such file or directory".to_owned(),
        _ => {
            let text = err.to_string();
            let text = match text.find(" (os error") {
                Some(cut) => &text[..cut],
                None => &text,
            };
            let mut chars = text.chars();
            match chars.next() {
                Some(first) => first.to_lowercase().chain(chars).collect(),
                None => "unknown error".to_owned(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_errors_read_as_action_target_reason() {
        let err = Error::Listen {
            addr: "127.0.0.1:9999".parse().unwrap(),
            source: io::Error::from(io::ErrorKind::AddrInUse),
        };
        assert_eq!(
            err.to_string(),
            "cannot listen on 127.0.0.1:9999: address in use"
        );
        assert_eq!(err.exit_code(), 1);
    }

    #[test]
    fn a_health_listen_error_names_its_purpose() {
        let err = Error::ListenFor {
            purpose: "health",
            addr: "127.0.0.1:9990".parse().unwrap(),
            source: io::Error::from(io::ErrorKind::AddrInUse),
        };
        assert_eq!(
            err.to_string(),
            "cannot listen on 127.0.0.1:9990 (health): address in use"
        );
        assert_eq!(err.exit_code(), 1);
    }

    #[test]
    fn os_reasons_drop_the_errno_suffix_and_capital() {
        let err = io::Error::from_raw_os_error(libc::EMFILE);
        assert_eq!(os_reason(&err), "too many open files");
    }
}
