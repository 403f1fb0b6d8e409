//! The outcome of a UDP run: loss, duplicates, reordering, jitter, round
//! trips and wrong replies, the verdict, the human summary and the JSON.
//!
//! Owns [`UdpReport`] and everything derived from it. It measures nothing
//! itself: `udp.rs` counts and `udp_flow.rs` accounts each flow
//! (docs/protocol.md "The load generator": round-trip percentiles, loss,
//! duplicates, reordering and RFC 3550 jitter; a summary, or JSON with
//! `--json`). The JSON goes through serde: its fields are README's table,
//! one for one.

use std::fmt;
use std::time::{Duration, Instant};

use serde::{Serialize, Serializer};

use crate::report::{finite, ratio};
use crate::udp_flow::FlowStats;
use crate::{Latency, UdpConfig};

/// What the UDP loop counts directly, over every flow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Tally {
    /// Datagrams sent: taken by the kernel, or failed for a reason that is
    /// the path's (they count as lost).
    pub sent: u64,
    /// Datagrams the local kernel had no room for (`EAGAIN`, `ENOBUFS`).
    pub not_sent: u64,
    /// Replies read, whatever they turned out to be.
    pub received: u64,
    /// Replies with a verified header and a correct but short payload.
    pub truncated: u64,
    /// Replies with a header that does not verify, or a wrong payload.
    pub corrupt: u64,
    /// `ECONNREFUSED` reports (ICMP port unreachable), on send or receive.
    pub refused: u64,
    /// Sends that failed for another reason than no room or refused.
    pub send_errors: u64,
    /// Receives that failed for another reason than refused.
    pub receive_errors: u64,
    /// Longest delay between a datagram's due time and its send, in ns.
    pub send_lag_max_ns: u64,
}

/// Everything a UDP run measured.
///
/// A datagram is *answered* by its first reply whose header verifies (even
/// when the payload was cut or damaged: those are counted as mismatches);
/// one unanswered when the reply timeout after the last send has passed is
/// *lost*. Round trips, reordering and jitter cover answered datagrams.
#[derive(Debug, Clone)]
pub struct UdpReport {
    /// When the load started.
    pub started: Instant,
    /// From the start of the load to the end of the reply window.
    pub elapsed: Duration,
    /// From the start of the load to the last send.
    pub sending: Duration,
    /// Flows (sockets).
    pub flows: u64,
    /// Bytes of each datagram, header included.
    pub size: u64,
    /// The rate asked for, datagrams a second in total.
    pub rate: f64,
    /// Datagrams the schedule held: `sent + not_sent`.
    pub planned: u64,
    /// Datagrams sent (handed to the kernel, or failed for a reason that is
    /// the path's, such as an unreachable network).
    pub sent: u64,
    /// Datagrams the local kernel had no room for (`EAGAIN`, `ENOBUFS`);
    /// not in `sent`, so not in the loss.
    pub not_sent: u64,
    /// Replies read, duplicates and wrong ones included.
    pub received: u64,
    /// Datagrams with at least one reply whose header verifies.
    pub answered: u64,
    /// Replies to datagrams already answered.
    pub duplicates: u64,
    /// Answered datagrams that arrived after a higher-numbered one of
    /// their flow (RFC 4737).
    pub reordered: u64,
    /// Largest distance, in sequence numbers, of a reordered datagram
    /// behind the highest one of its flow answered before it.
    pub reorder_max_distance: u64,
    /// RFC 3550 inter-arrival jitter, mean over the flows that answered at
    /// least two datagrams, in microseconds.
    pub jitter_mean_us: f64,
    /// RFC 3550 inter-arrival jitter of the worst flow, in microseconds.
    pub jitter_max_us: f64,
    /// Round trips of answered datagrams from their scheduled send time.
    pub rtt: Latency,
    /// Replies whose payload is a correct but short prefix.
    pub truncated: u64,
    /// Replies whose header does not verify, or whose payload is wrong or
    /// longer than sent.
    pub corrupt: u64,
    /// `ECONNREFUSED` reports (an ICMP port unreachable: nothing listens).
    pub refused: u64,
    /// Sends that failed for another reason.
    pub send_errors: u64,
    /// Receives that failed for another reason.
    pub receive_errors: u64,
    /// Longest delay between a datagram's due time and its send: how well
    /// the sender kept to the schedule.
    pub send_lag_max: Duration,
    /// Replies the kernel dropped at echo-load's own sockets because their
    /// receive buffers were full (echo-load fell behind); part of `lost`,
    /// but not the path's doing. `None` where `/proc/net/udp` cannot tell.
    pub local_drops: Option<u64>,
    /// The largest loss fraction a clean run accepts (`--max-loss`).
    pub max_loss: f64,
    /// User CPU time echo-load used over the run.
    pub cpu_user: Duration,
    /// System CPU time echo-load used over the run.
    pub cpu_sys: Duration,
}

impl UdpReport {
    /// The report of a run of `config` that planned `planned` datagrams,
    /// from the loop's tally and each flow's accounting. Times, round
    /// trips and CPU are left empty for the caller to fill.
    pub(crate) fn new<'a>(
        config: &UdpConfig,
        planned: u64,
        tally: &Tally,
        flows: impl Iterator<Item = &'a FlowStats>,
    ) -> UdpReport {
        let mut r = UdpReport {
            started: Instant::now(),
            elapsed: Duration::ZERO,
            sending: Duration::ZERO,
            flows: config.flows as u64,
            size: config.size as u64,
            rate: config.rate,
            planned,
            sent: tally.sent,
            not_sent: tally.not_sent,
            received: tally.received,
            answered: 0,
            duplicates: 0,
            reordered: 0,
            reorder_max_distance: 0,
            jitter_mean_us: 0.0,
            jitter_max_us: 0.0,
            rtt: Latency::default(),
            truncated: tally.truncated,
            corrupt: tally.corrupt,
            refused: tally.refused,
            send_errors: tally.send_errors,
            receive_errors: tally.receive_errors,
            send_lag_max: Duration::from_nanos(tally.send_lag_max_ns),
            local_drops: None,
            max_loss: config.max_loss,
            cpu_user: Duration::ZERO,
            cpu_sys: Duration::ZERO,
        };
        let (mut jitter_sum, mut jitter_flows) = (0.0, 0u64);
        for flow in flows {
            r.answered += flow.answered();
            r.duplicates += flow.duplicates();
            let (reordered, distance) = flow.reordering();
            r.reordered += reordered;
            r.reorder_max_distance = r.reorder_max_distance.max(distance);
            if let Some(ns) = flow.jitter_ns() {
                let us = ns / 1_000.0;
                jitter_sum += us;
                jitter_flows += 1;
                r.jitter_max_us = r.jitter_max_us.max(us);
            }
        }
        if jitter_flows > 0 {
            r.jitter_mean_us = jitter_sum / jitter_flows as f64;
        }
        r
    }

    /// Datagrams sent and never answered.
    pub fn lost(&self) -> u64 {
        self.sent.saturating_sub(self.answered)
    }

    /// `lost / sent`; 0 when nothing was sent.
    pub fn loss_fraction(&self) -> f64 {
        if self.sent == 0 {
            0.0
        } else {
            self.lost() as f64 / self.sent as f64
        }
    }

    /// Wrong replies: truncated and corrupt.
    pub fn mismatches(&self) -> u64 {
        self.truncated + self.corrupt
    }

    /// True when something was sent, no more than `max_loss` of it was
    /// lost, and no reply was duplicated, truncated or corrupt. Reordering
    /// alone is reported but does not make a run unclean, nor do datagrams
    /// the local kernel had no room for.
    pub fn is_clean(&self) -> bool {
        self.sent > 0
            && self.loss_fraction() <= self.max_loss
            && self.duplicates == 0
            && self.mismatches() == 0
    }

    /// Datagrams sent per second of the sending window; on schedule it is
    /// the rate asked for. 0 with fewer than two sends.
    pub fn sent_per_sec(&self) -> f64 {
        ratio(self.planned.saturating_sub(1) as f64, self.sending)
    }

    /// echo-load's own CPU use over the run, in percent of one core.
    pub fn cpu_percent(&self) -> f64 {
        ratio(
            (self.cpu_user + self.cpu_sys).as_secs_f64() * 100.0,
            self.elapsed,
        )
    }

    /// The report as one JSON object on one line (fields in the README).
    pub fn to_json(&self) -> String {
        // Numbers and booleans into a String: serializing cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Why the run is not clean, or `None` when it is.
    fn faults(&self) -> Option<String> {
        let mut faults = Vec::new();
        if self.sent == 0 {
            faults.push("nothing could be sent".to_string());
        }
        if self.loss_fraction() > self.max_loss {
            faults.push(format!(
                "{} lost ({} > --max-loss {})",
                self.lost(),
                percent(self.loss_fraction()),
                percent(self.max_loss)
            ));
        }
        if self.duplicates > 0 {
            faults.push(format!("{} duplicates", self.duplicates));
        }
        if self.truncated > 0 {
            faults.push(format!("{} truncated", self.truncated));
        }
        if self.corrupt > 0 {
            faults.push(format!("{} corrupt", self.corrupt));
        }
        (!faults.is_empty()).then(|| faults.join(", "))
    }
}

fn percent(fraction: f64) -> String {
    format!("{:.3}%", fraction * 100.0)
}

/// The JSON report: README's fields, names and nesting, one for one.
/// JSON has no NaN or infinity, so a rate over an empty window is 0.
#[derive(Serialize)]
struct JsonUdpReport {
    clean: bool,
    elapsed_secs: f64,
    sending_secs: f64,
    flows: u64,
    size: u64,
    rate: f64,
    sent_per_sec: f64,
    planned: u64,
    sent: u64,
    not_sent: u64,
    received: u64,
    answered: u64,
    lost: u64,
    loss_fraction: f64,
    max_loss: f64,
    duplicates: u64,
    reordered: u64,
    reorder_max_distance: u64,
    jitter_us: JsonJitter,
    rtt_us: Latency,
    mismatches: JsonMismatches,
    refused: u64,
    send_errors: u64,
    receive_errors: u64,
    send_lag_max_us: u64,
    local_drops: Option<u64>,
    cpu_user_secs: f64,
    cpu_sys_secs: f64,
    cpu_percent: f64,
}

/// The `jitter_us` object.
#[derive(Serialize)]
struct JsonJitter {
    mean: f64,
    max: f64,
}

/// The `mismatches` object: the total, then each kind.
#[derive(Serialize)]
struct JsonMismatches {
    total: u64,
    truncated: u64,
    corrupt: u64,
}

impl From<&UdpReport> for JsonUdpReport {
    fn from(r: &UdpReport) -> JsonUdpReport {
        JsonUdpReport {
            clean: r.is_clean(),
            elapsed_secs: r.elapsed.as_secs_f64(),
            sending_secs: r.sending.as_secs_f64(),
            flows: r.flows,
            size: r.size,
            rate: finite(r.rate),
            sent_per_sec: finite(r.sent_per_sec()),
            planned: r.planned,
            sent: r.sent,
            not_sent: r.not_sent,
            received: r.received,
            answered: r.answered,
            lost: r.lost(),
            loss_fraction: finite(r.loss_fraction()),
            max_loss: finite(r.max_loss),
            duplicates: r.duplicates,
            reordered: r.reordered,
            reorder_max_distance: r.reorder_max_distance,
            jitter_us: JsonJitter {
                mean: finite(r.jitter_mean_us),
                max: finite(r.jitter_max_us),
            },
            rtt_us: r.rtt,
            mismatches: JsonMismatches {
                total: r.mismatches(),
                truncated: r.truncated,
                corrupt: r.corrupt,
            },
            refused: r.refused,
            send_errors: r.send_errors,
            receive_errors: r.receive_errors,
            send_lag_max_us: u64::try_from(r.send_lag_max.as_micros()).unwrap_or(u64::MAX),
            local_drops: r.local_drops,
            cpu_user_secs: r.cpu_user.as_secs_f64(),
            cpu_sys_secs: r.cpu_sys.as_secs_f64(),
            cpu_percent: finite(r.cpu_percent()),
        }
    }
}

/// Serializes as the JSON report README documents (see [`UdpReport::to_json`]).
impl Serialize for UdpReport {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        JsonUdpReport::from(self).serialize(serializer)
    }
}

impl fmt::Display for UdpReport {
    /// The human summary table.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let l = &self.rtt;
        writeln!(
            f,
            "elapsed      {:.3} s ({:.3} s sending, then the reply timeout)",
            self.elapsed.as_secs_f64(),
            self.sending.as_secs_f64()
        )?;
        writeln!(
            f,
            "datagrams    {} sent of {} planned ({} not sent: no room locally), {:.0}/s",
            self.sent,
            self.planned,
            self.not_sent,
            self.sent_per_sec()
        )?;
        writeln!(
            f,
            "replies      {} received, {} datagrams answered",
            self.received, self.answered
        )?;
        let local = match self.local_drops {
            Some(0) => String::new(),
            Some(n) => format!("; {n} of them dropped by echo-load's own receive buffers"),
            None => "; local drops unknown".to_string(),
        };
        writeln!(
            f,
            "loss         {} lost ({}; accepted up to {}{local})",
            self.lost(),
            percent(self.loss_fraction()),
            percent(self.max_loss)
        )?;
        writeln!(f, "duplicates   {}", self.duplicates)?;
        writeln!(
            f,
            "reordering   {} reordered, max distance {}",
            self.reordered, self.reorder_max_distance
        )?;
        writeln!(
            f,
            "jitter µs    mean {:.1}  max {:.1}  (RFC 3550, over flows)",
            self.jitter_mean_us, self.jitter_max_us
        )?;
        writeln!(
            f,
            "rtt µs       min {}  p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  ({} samples, from \
             the scheduled send)",
            l.min, l.p50, l.p90, l.p99, l.p999, l.max, l.samples
        )?;
        writeln!(
            f,
            "mismatches   {} (truncated {}, corrupt {})",
            self.mismatches(),
            self.truncated,
            self.corrupt
        )?;
        writeln!(
            f,
            "errors       refused {}, send {}, receive {}",
            self.refused, self.send_errors, self.receive_errors
        )?;
        writeln!(
            f,
            "send lag     max {} µs behind the schedule",
            self.send_lag_max.as_micros()
        )?;
        writeln!(
            f,
            "cpu          user {:.2} s, sys {:.2} s ({:.0}% of one core)",
            self.cpu_user.as_secs_f64(),
            self.cpu_sys.as_secs_f64(),
            self.cpu_percent()
        )?;
        match self.faults() {
            None if self.lost() > 0 => write!(
                f,
                "result       clean: loss within --max-loss, nothing duplicated or wrong"
            ),
            None => write!(f, "result       clean: nothing lost, duplicated or wrong"),
            Some(faults) => write!(f, "result       NOT CLEAN: {faults}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run of 1000 datagrams on one flow with the tally given.
    fn report(tally: Tally, answered: u64) -> UdpReport {
        let mut flow = FlowStats::new(1000).expect("reserve");
        for seq in 0..1000 {
            flow.number_next();
            if seq < answered {
                flow.arrive(seq, seq * 1_000_000, seq * 1_000_000 + 50_000);
            }
        }
        let config = UdpConfig::default();
        UdpReport::new(&config, 1000, &tally, std::iter::once(&flow))
    }

    fn sent(n: u64) -> Tally {
        Tally {
            sent: n,
            ..Tally::default()
        }
    }

    #[test]
    fn loss_is_sent_minus_answered_and_fails_without_max_loss() {
        let r = report(sent(1000), 900);
        assert_eq!(r.lost(), 100);
        assert_eq!(r.loss_fraction(), 0.1);
        assert!(!r.is_clean());
        let r = UdpReport { max_loss: 0.1, ..r };
        assert!(r.is_clean(), "a loss equal to --max-loss is accepted");
    }

    #[test]
    fn not_sent_datagrams_stay_out_of_the_loss() {
        let tally = Tally {
            sent: 900,
            not_sent: 100,
            ..Tally::default()
        };
        let r = report(tally, 900);
        assert_eq!(r.lost(), 0);
        assert!(r.is_clean());
    }

    #[test]
    fn reordering_alone_stays_clean_but_wrong_replies_do_not() {
        let mut r = report(sent(1000), 1000);
        r.reordered = 5;
        assert!(r.is_clean());
        for wrong in [
            UdpReport {
                duplicates: 1,
                ..r.clone()
            },
            UdpReport {
                truncated: 1,
                ..r.clone()
            },
            UdpReport {
                corrupt: 1,
                ..r.clone()
            },
        ] {
            assert!(!wrong.is_clean(), "{wrong}");
        }
        assert!(!report(sent(0), 0).is_clean(), "nothing sent is not clean");
    }

    #[test]
    fn json_is_one_line_with_nested_figures() {
        let tally = Tally {
            sent: 1000,
            truncated: 3,
            ..Tally::default()
        };
        let r = report(tally, 990);
        let json = r.to_json();
        assert!(!json.contains('\n'), "{json}");
        let v: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
        assert_eq!(v["lost"], 10);
        assert_eq!(v["loss_fraction"], 0.01);
        assert_eq!(v["mismatches"]["total"], 3);
        assert_eq!(v["mismatches"]["truncated"], 3);
        assert_eq!(v["jitter_us"]["mean"], 0.0);
        assert_eq!(v["clean"], false);
    }
}
