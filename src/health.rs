//! The health listener: `GET /livez`, `/readyz` and `/metrics` over HTTP/1.x
//! on the server's one `Poll` (docs/protocol.md "Lame duck and health").
//!
//! So far only what `/metrics` says: `health/metrics.rs` renders a plain
//! [`MetricsSnapshot`] of the server's counters and the process figures in
//! the Prometheus text format 0.0.4. It does not know the server's
//! internals, and nothing here is wired into the server yet.

mod metrics;

pub use metrics::{CloseReason, MetricsSnapshot, ProcessStats, ServeState, UdpCounters};
