//! `Config`: every setting the server runs with, its default and its
//! validation (docs/protocol.md "Running", "Command line").
//!
//! This module decides what a valid configuration is and names the field
//! that is not ([`ConfigError`]). It knows nothing of a command line: the
//! `echod` binary parses its flags into a `Config` and words a
//! `ConfigError` as a usage error about the flag of the same name.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

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
    /// Set `SO_REUSEPORT` on the listeners so several processes share a port.
    pub reuse_port: bool,
    /// Where the health listener (`/livez`, `/readyz`, `/metrics`) listens;
    /// `None` (the default) for no health listener. Its connections are never
    /// clients (docs/protocol.md "Lame duck and health").
    pub health: Option<SocketAddr>,
    /// UDP echo addresses (RFC 862), each its own socket; port 0 picks a
    /// free port; empty (the default) serves no UDP. At most
    /// [`MAX_UDP_SOCKETS`].
    pub udp: Vec<SocketAddr>,
    /// UDP replies a second over all `udp` sockets together, the reflection
    /// guard's budget (docs/protocol.md "UDP echo (RFC 862)"); at least 1.
    pub udp_max_rate: u32,
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
            reuse_port: false,
            health: None,
            udp: Vec::new(),
            udp_max_rate: 10_000,
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
    /// A [`ConfigError`] naming the first field that is out of range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.listen.is_empty() {
            return Err(ConfigError::new(
                "listen",
                None,
                "at least one address is needed",
            ));
        }
        if self.listen.len() > MAX_LISTENERS {
            let value = self.listen.len().to_string();
            return Err(ConfigError::new(
                "listen",
                Some(value),
                "at most 256 addresses",
            ));
        }
        if self.max_connections == 0 {
            return Err(ConfigError::new(
                "max_connections",
                Some("0".into()),
                "must be at least 1",
            ));
        }
        if self.max_pending == 0 {
            return Err(ConfigError::new(
                "max_pending",
                Some("0".into()),
                "must be at least 1",
            ));
        }
        if self.max_pending_total == 0 {
            return Err(ConfigError::new(
                "max_pending_total",
                Some("0".into()),
                "must be at least 1",
            ));
        }
        if self.backlog == 0 || self.backlog > i32::MAX as u32 {
            return Err(ConfigError::new(
                "backlog",
                Some(self.backlog.to_string()),
                "must be 1 to 2147483647",
            ));
        }
        if self.udp.len() > MAX_UDP_SOCKETS {
            return Err(ConfigError::new(
                "udp",
                Some(self.udp.len().to_string()),
                "at most 256 addresses",
            ));
        }
        // docs/protocol.md "UDP echo (RFC 862)": the rate limit is a
        // reflection guard, so there is no "0 = off"; a large N is the way
        // to (nearly) lift it.
        if self.udp_max_rate == 0 {
            return Err(ConfigError::new(
                "udp_max_rate",
                Some("0".into()),
                "must be at least 1: the limit guards against reflection",
            ));
        }
        // The health listener beside an echo listener on one port would be
        // refused by bind(2) anyway; saying which setting clashes is clearer.
        if let Some(health) = self.health.filter(|addr| addr.port() != 0) {
            if self.listen.contains(&health) {
                return Err(ConfigError::new(
                    "health",
                    Some(health.to_string()),
                    "is also a listen address",
                ));
            }
        }
        // docs/protocol.md "Draining" 3: a client tells a drain from a crash
        // by the notice before end-of-stream; an empty one says nothing.
        if self.shutdown_message.is_empty() {
            return Err(ConfigError::new(
                "shutdown_message",
                Some(String::new()),
                "must not be empty: clients tell a drain from a crash by it",
            ));
        }
        Ok(())
    }
}

/// A setting out of range: which field, its value, and why it was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The [`Config`] field, as spelled in the struct (`max_connections`).
    field: &'static str,
    /// The value refused, when there is one to show.
    value: Option<String>,
    /// Why it was refused.
    reason: &'static str,
}

impl ConfigError {
    fn new(field: &'static str, value: Option<String>, reason: &'static str) -> Self {
        ConfigError {
            field,
            value,
            reason,
        }
    }

    /// The field refused, as spelled in [`Config`].
    pub fn field(&self) -> &'static str {
        self.field
    }

    /// The value refused, if there is one to show.
    pub fn value(&self) -> Option<&str> {
        self.value.as_deref()
    }

    /// Why it was refused.
    pub fn reason(&self) -> &'static str {
        self.reason
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(value) => write!(f, "{} = {value:?}: {}", self.field, self.reason),
            None => write!(f, "{}: {}", self.field, self.reason),
        }
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid() {
        assert_eq!(Config::default().validate(), Ok(()));
    }

    #[test]
    fn errors_name_the_field_not_a_flag() {
        let config = Config {
            max_connections: 0,
            ..Config::default()
        };
        let err = config.validate().unwrap_err();
        assert_eq!(err.field(), "max_connections");
        assert_eq!(
            err.to_string(),
            "max_connections = \"0\": must be at least 1"
        );
    }

    #[test]
    fn an_embedder_cannot_set_an_empty_notice() {
        let config = Config {
            shutdown_message: Vec::new(),
            ..Config::default()
        };
        let err = config.validate().unwrap_err();
        assert_eq!(err.field(), "shutdown_message");
    }

    #[test]
    fn the_health_address_may_not_be_a_listen_address() {
        let addr: SocketAddr = "127.0.0.1:9999".parse().unwrap();
        let config = Config {
            listen: vec![addr],
            health: Some(addr),
            ..Config::default()
        };
        let err = config.validate().unwrap_err();
        assert_eq!(err.field(), "health");
        assert_eq!(
            err.to_string(),
            "health = \"127.0.0.1:9999\": is also a listen address"
        );
        // Port 0 twice is two different ports.
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let config = Config {
            listen: vec![any],
            health: Some(any),
            ..Config::default()
        };
        assert_eq!(config.validate(), Ok(()));
    }

    #[test]
    fn an_embedder_cannot_turn_the_udp_rate_limit_off_or_exceed_the_sockets() {
        let config = Config {
            udp_max_rate: 0,
            ..Config::default()
        };
        assert_eq!(config.validate().unwrap_err().field(), "udp_max_rate");
        let config = Config {
            udp: vec![DEFAULT_LISTEN; MAX_UDP_SOCKETS + 1],
            ..Config::default()
        };
        let err = config.validate().unwrap_err();
        assert_eq!(err.to_string(), "udp = \"257\": at most 256 addresses");
    }
}
