//! What a UDP run (`echo-load --udp`) is asked to do: [`UdpConfig`], its
//! defaults, and the bounds every field is checked against before
//! anything runs.
//!
//! Owns validation only; `udp.rs` runs what passes. `config.rs` holds what
//! both modes share ([`Stop`], [`MAX_SECS`]). Implements docs/protocol.md
//! "The load generator": out-of-range values (durations past what a clock
//! holds, rates whose interval overflows, plans past what the received
//! bitmaps can hold) are usage errors, never an abort.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use crate::LoadError;
use crate::config::{MAX_CONNECTIONS, MAX_SECS, Stop};

/// Most datagrams one UDP run plans (`-n`, or rate × duration): each has a
/// bit in its flow's received bitmap, 128 MiB at this bound.
pub const MAX_DATAGRAMS: u64 = 1 << 30;

/// Most flows of one UDP run: a socket and a descriptor each, like a
/// connection.
pub const MAX_FLOWS: usize = MAX_CONNECTIONS;

/// Highest UDP `--rate`, datagrams a second in total: one every 100 ns,
/// beyond what one thread can send.
pub const MAX_UDP_RATE: f64 = 10_000_000.0;

/// Largest UDP datagram to an IPv4 server: 65,535 bytes of IP packet
/// minus the 20-byte IPv4 and 8-byte UDP headers.
pub const MAX_DATAGRAM_V4: usize = 65_507;

/// Largest UDP datagram to an IPv6 server: 65,535 bytes of IPv6 payload
/// minus the 8-byte UDP header (no jumbograms).
pub const MAX_DATAGRAM_V6: usize = 65_527;

/// What a UDP run (`echo-load --udp`) is asked to do. Field names match the
/// command-line flags.
#[derive(Debug, Clone, PartialEq)]
pub struct UdpConfig {
    /// Server address.
    pub addr: SocketAddr,
    /// Flows, each its own socket connected to the server; at least 1.
    pub flows: usize,
    /// Open-loop total rate, datagrams a second over all flows. Round
    /// trips are counted from each datagram's scheduled send time.
    pub rate: f64,
    /// When to stop sending: after a duration, or a number of datagrams
    /// ([`Stop::Messages`]) in total over all flows.
    pub stop: Stop,
    /// Bytes of each datagram, header included: from
    /// [`UDP_HEADER_LEN`](crate::UDP_HEADER_LEN) to [`MAX_DATAGRAM_V4`]
    /// ([`MAX_DATAGRAM_V6`] to an IPv6 server).
    pub size: usize,
    /// How long after the last send replies are still awaited; a datagram
    /// unanswered then is lost.
    pub reply_timeout: Duration,
    /// The largest fraction of datagrams (0 to 1) that may be lost in a
    /// clean run.
    pub max_loss: f64,
    /// Print one progress line per second on stderr.
    pub progress: bool,
}

impl Default for UdpConfig {
    fn default() -> Self {
        UdpConfig {
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 9999)),
            flows: 1,
            rate: 1000.0,
            stop: Stop::Duration(Duration::from_secs(10)),
            size: 64,
            reply_timeout: Duration::from_secs(1),
            max_loss: 0.0,
            progress: false,
        }
    }
}

impl UdpConfig {
    /// Checks the configuration without running anything.
    ///
    /// # Errors
    ///
    /// Returns [`LoadError::InvalidConfig`] naming the first bad field.
    pub fn validate(&self) -> Result<(), LoadError> {
        self.planned().map(|_| ())
    }

    /// Checks every field (docs/protocol.md "The load generator":
    /// out-of-range values are usage errors, never an abort) and returns
    /// how many datagrams the run sends in total.
    pub(crate) fn planned(&self) -> Result<u64, LoadError> {
        let invalid =
            |field: &'static str, reason: String| LoadError::InvalidConfig { field, reason };
        let max_secs = Duration::from_secs(MAX_SECS);
        let too_long = || format!("too long: at most {MAX_SECS} seconds");
        if self.flows == 0 {
            return Err(invalid("flows", "must be at least 1".into()));
        }
        if self.flows > MAX_FLOWS {
            return Err(invalid("flows", format!("too large: at most {MAX_FLOWS}")));
        }
        let rate = self.rate;
        if !(rate.is_finite() && rate > 0.0) {
            return Err(invalid("rate", "must be a positive number".into()));
        }
        if rate > MAX_UDP_RATE {
            let reason = format!("too large: at most {MAX_UDP_RATE} datagrams a second");
            return Err(invalid("rate", reason));
        }
        if rate < 1.0 / MAX_SECS as f64 {
            let reason = format!("too small: at least one datagram every {MAX_SECS} seconds");
            return Err(invalid("rate", reason));
        }
        let (header, largest, family) = (crate::UDP_HEADER_LEN, self.max_size(), self.family());
        if self.size < header {
            let reason = format!("too small: at least {header} bytes (the header)");
            return Err(invalid("size", reason));
        }
        if self.size > largest {
            let reason = format!("too large: at most {largest} bytes over {family}");
            return Err(invalid("size", reason));
        }
        let planned = match self.stop {
            Stop::Duration(d) if d.is_zero() => {
                return Err(invalid("duration", "must be above 0".into()));
            }
            Stop::Duration(d) if d > max_secs => return Err(invalid("duration", too_long())),
            // Datagram k is due at k / rate: those due before the end.
            Stop::Duration(d) => due_before(d.as_secs_f64() * rate),
            Stop::Messages(0) => return Err(invalid("messages", "must be at least 1".into())),
            Stop::Messages(n) => n as f64,
        };
        if planned > MAX_DATAGRAMS as f64 {
            let (field, what) = match self.stop {
                Stop::Duration(_) => ("duration", "too long at this --rate: rate × duration"),
                Stop::Messages(_) => ("messages", "too large"),
            };
            let reason = format!("{what} must be at most {MAX_DATAGRAMS} datagrams");
            return Err(invalid(field, reason));
        }
        // The last datagram's due time must stay on the clock.
        if (planned - 1.0) / rate > MAX_SECS as f64 {
            let reason = format!(
                "too small for --messages: the last datagram would be due after {MAX_SECS} seconds"
            );
            return Err(invalid("rate", reason));
        }
        if self.reply_timeout.is_zero() {
            return Err(invalid("reply_timeout", "must be above 0".into()));
        }
        if self.reply_timeout > max_secs {
            return Err(invalid("reply_timeout", too_long()));
        }
        if !(0.0..=1.0).contains(&self.max_loss) {
            return Err(invalid("max_loss", "must be a fraction from 0 to 1".into()));
        }
        Ok(planned as u64)
    }

    /// The largest datagram to this server's address family.
    fn max_size(&self) -> usize {
        if self.is_ipv4() {
            MAX_DATAGRAM_V4
        } else {
            MAX_DATAGRAM_V6
        }
    }

    fn family(&self) -> &'static str {
        if self.is_ipv4() { "IPv4" } else { "IPv6" }
    }

    /// True when the datagrams travel as IPv4, an IPv4-mapped IPv6 address
    /// included.
    fn is_ipv4(&self) -> bool {
        match self.addr {
            SocketAddr::V4(_) => true,
            SocketAddr::V6(a) => a.ip().to_ipv4_mapped().is_some(),
        }
    }
}

/// How many datagrams `k = 0, 1, ...` have `k < x`: `ceil(x)`, at least 1,
/// except that an `x` a rounding error away from a whole number counts as
/// that number (`-d 0.3 -r 1000` plans 300 datagrams, not 301).
fn due_before(x: f64) -> f64 {
    let nearest = x.round();
    let count = if (x - nearest).abs() < 1e-6 {
        nearest
    } else {
        x.ceil()
    };
    count.max(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The field a UDP configuration is rejected for, or `None` when it passes.
    fn udp_rejected(config: &UdpConfig) -> Option<&'static str> {
        match config.validate() {
            Ok(()) => None,
            Err(LoadError::InvalidConfig { field, .. }) => Some(field),
            Err(other) => panic!("not a configuration error: {other}"),
        }
    }

    #[test]
    fn udp_bounds_are_inclusive_and_one_past_them_names_the_field() {
        let base = UdpConfig::default;
        let v6 = || UdpConfig {
            addr: "[::1]:7".parse().expect("an IPv6 address"),
            ..base()
        };
        let mapped = || UdpConfig {
            addr: "[::ffff:127.0.0.1]:7".parse().expect("a mapped address"),
            ..base()
        };
        let secs = Duration::from_secs(MAX_SECS);
        let cases: Vec<(UdpConfig, UdpConfig, &str)> = vec![
            (
                UdpConfig { size: 24, ..base() },
                UdpConfig { size: 23, ..base() },
                "size",
            ),
            (
                UdpConfig {
                    size: 65_507,
                    ..base()
                },
                UdpConfig {
                    size: 65_508,
                    ..base()
                },
                "size",
            ),
            (
                UdpConfig {
                    size: 65_527,
                    ..v6()
                },
                UdpConfig {
                    size: 65_528,
                    ..v6()
                },
                "size",
            ),
            (
                UdpConfig {
                    size: 65_507,
                    ..mapped()
                },
                UdpConfig {
                    size: 65_508,
                    ..mapped()
                },
                "size",
            ),
            (
                UdpConfig {
                    flows: MAX_FLOWS,
                    ..base()
                },
                UdpConfig {
                    flows: MAX_FLOWS + 1,
                    ..base()
                },
                "flows",
            ),
            (
                UdpConfig {
                    rate: MAX_UDP_RATE,
                    ..base()
                },
                UdpConfig {
                    rate: MAX_UDP_RATE * 1.01,
                    ..base()
                },
                "rate",
            ),
            (
                UdpConfig {
                    stop: Stop::Messages(MAX_DATAGRAMS),
                    rate: 1e6,
                    ..base()
                },
                UdpConfig {
                    stop: Stop::Messages(MAX_DATAGRAMS + 1),
                    rate: 1e6,
                    ..base()
                },
                "messages",
            ),
            (
                UdpConfig {
                    stop: Stop::Duration(Duration::from_secs(1 << 20)),
                    rate: 1024.0,
                    ..base()
                },
                UdpConfig {
                    stop: Stop::Duration(Duration::from_secs((1 << 20) + 1)),
                    rate: 1024.0,
                    ..base()
                },
                "duration",
            ),
            (
                UdpConfig {
                    stop: Stop::Messages(2),
                    rate: 1.0 / MAX_SECS as f64,
                    ..base()
                },
                UdpConfig {
                    stop: Stop::Messages(3),
                    rate: 1.0 / MAX_SECS as f64,
                    ..base()
                },
                "rate",
            ),
            (
                UdpConfig {
                    reply_timeout: secs,
                    ..base()
                },
                UdpConfig {
                    reply_timeout: secs + Duration::from_nanos(1),
                    ..base()
                },
                "reply_timeout",
            ),
            (
                UdpConfig {
                    max_loss: 1.0,
                    ..base()
                },
                UdpConfig {
                    max_loss: 1.0 + f64::EPSILON,
                    ..base()
                },
                "max_loss",
            ),
        ];
        for (at, beyond, field) in cases {
            assert_eq!(udp_rejected(&at), None, "{field} at its bound: {at:?}");
            assert_eq!(
                udp_rejected(&beyond),
                Some(field),
                "{field} past its bound: {beyond:?}"
            );
        }
    }

    #[test]
    fn udp_zeros_and_extremes_are_rejected_not_wrapped() {
        let base = UdpConfig::default;
        for rate in [0.0, -1.0, f64::NAN, f64::INFINITY, 5e-324] {
            assert_eq!(
                udp_rejected(&UdpConfig { rate, ..base() }),
                Some("rate"),
                "{rate}"
            );
        }
        for max_loss in [-0.1, f64::NAN, f64::INFINITY] {
            let config = UdpConfig { max_loss, ..base() };
            assert_eq!(udp_rejected(&config), Some("max_loss"), "{max_loss}");
        }
        let cases = [
            (UdpConfig { flows: 0, ..base() }, "flows"),
            (
                UdpConfig {
                    flows: usize::MAX,
                    ..base()
                },
                "flows",
            ),
            (
                UdpConfig {
                    size: usize::MAX,
                    ..base()
                },
                "size",
            ),
            (
                UdpConfig {
                    stop: Stop::Messages(0),
                    ..base()
                },
                "messages",
            ),
            (
                UdpConfig {
                    stop: Stop::Messages(u64::MAX),
                    ..base()
                },
                "messages",
            ),
            (
                UdpConfig {
                    stop: Stop::Duration(Duration::ZERO),
                    ..base()
                },
                "duration",
            ),
            (
                UdpConfig {
                    stop: Stop::Duration(Duration::MAX),
                    ..base()
                },
                "duration",
            ),
            (
                UdpConfig {
                    reply_timeout: Duration::ZERO,
                    ..base()
                },
                "reply_timeout",
            ),
        ];
        for (config, field) in cases {
            assert_eq!(udp_rejected(&config), Some(field), "{config:?}");
        }
    }

    #[test]
    fn a_duration_plans_every_datagram_due_before_its_end() {
        let plan = |d: f64, rate: f64| {
            let config = UdpConfig {
                stop: Stop::Duration(Duration::from_secs_f64(d)),
                rate,
                ..UdpConfig::default()
            };
            config.planned().expect("a valid plan")
        };
        assert_eq!(plan(10.0, 1000.0), 10_000);
        assert_eq!(
            plan(0.0005, 1000.0),
            1,
            "the datagram due at 0 is always sent"
        );
        assert_eq!(plan(2.5, 1.0), 3, "due at 0, 1 and 2 s");
        for d in [0.1, 0.3, 0.7, 1.1, 3.3] {
            let want = (d * 1000.0_f64).round() as u64;
            assert_eq!(plan(d, 1000.0), want, "-d {d} -r 1000");
            assert_eq!(plan(d, 7.0 / 0.7), (d * 10.0_f64).round() as u64, "-d {d}");
        }
        let config = UdpConfig {
            stop: Stop::Messages(7),
            ..UdpConfig::default()
        };
        assert_eq!(config.planned().expect("a valid plan"), 7);
    }
}
