//! `--take-over PATH` (docs/protocol.md "Operations", take-over): the new
//! instance's start, in the order that keeps the old instance serving
//! untouched until this one serves.
//!
//! This file owns the sequence: receive the sockets, build the server from
//! them, turn signals on, confirm, then offer `--handover-socket` for the
//! next take-over. The exchange itself is the library's
//! ([`echod::take_over`]); the pid file and the readiness lines stay with
//! `main`, after this returns.

use std::net::SocketAddr;
use std::path::Path;

use echod::{Config, Error, Server, SignalWatcher};

use crate::cli::Options;

/// How a take-over start ended without an error.
pub enum Started {
    /// This instance serves the sockets; the old one is draining.
    Serving(Box<Server>),
    /// A drain signal arrived before the confirmation: the old instance was
    /// told and serves on; this one exits 0 (it was asked to stop).
    Declined,
}

/// Takes the listening sockets over from the instance at `path` and
/// returns a server that serves them, signals on. Until the confirmation
/// every failure is one line and exit 1 for this process, and the old
/// instance serves on untouched; after it, nothing may stop this one from
/// serving (the old one is draining), so the handover socket for the next
/// take-over is offered on a best-effort basis.
pub fn start(path: &Path, options: &Options, watcher: SignalWatcher) -> Result<Started, Error> {
    let config = &options.config;
    let taken = echod::take_over(path, echod::TAKE_OVER_TIMEOUT)?;
    let confirmation = taken.confirmation;
    // Declines with the error's own line, so the old instance logs why.
    let decline = |confirmation: echod::Confirmation, err: Error| {
        confirmation.decline(&err.to_string());
        err
    };
    // docs/protocol.md "Operations": every socket received is served, and
    // none of this instance's own --listen, --udp or --health is bound.
    let mut server = match Server::from_sockets(config.clone(), taken.sockets) {
        Ok(server) => server,
        Err(err) => return Err(decline(confirmation, err)),
    };
    warn_if_addresses_differ(config, &server);
    // Signals before the confirmation: a drain signal from here on is
    // either seen now (and declined) or read by the loop.
    if watcher.has_pending_drain() {
        confirmation.decline("a drain signal arrived during the take-over");
        log::info!("take-over declined: a drain signal arrived before it was confirmed; exiting");
        return Ok(Started::Declined);
    }
    if let Err(err) = server.watch_signals(watcher) {
        return Err(decline(confirmation, err));
    }
    confirmation.confirm()?;
    log::info!(
        "take-over complete: path={} listeners={} udp={} health={}",
        path.display(),
        server.local_addrs().len(),
        server.udp_addrs().len(),
        usize::from(server.health_addr().is_some())
    );
    if let Some(next) = &options.handover_socket {
        // The old instance closed its handover socket before it let go, so
        // the path is free to replace.
        if let Err(err) = server.offer_take_over(next) {
            log::error!("{err}; serving on without offering take-over");
        }
    }
    Ok(Started::Serving(Box::new(server)))
}

/// The received sockets are served whatever `--listen`, `--udp` and
/// `--health` say; an operator whose command line names other addresses
/// (or a port 0, which a received socket never has) is told once per flag.
fn warn_if_addresses_differ(config: &Config, server: &Server) {
    let health = |addr: Option<SocketAddr>| addr.into_iter().collect::<Vec<_>>();
    warn_if_differs("--listen", &config.listen, server.local_addrs());
    warn_if_differs("--udp", &config.udp, server.udp_addrs());
    warn_if_differs(
        "--health",
        &health(config.health),
        &health(server.health_addr()),
    );
}

/// Warns when `wanted` (the command line's `flag`) and `got` (the
/// addresses received) are not the same set.
fn warn_if_differs(flag: &str, wanted: &[SocketAddr], got: &[SocketAddr]) {
    let mut wanted = wanted.to_vec();
    let mut got = got.to_vec();
    wanted.sort();
    got.sort();
    if wanted != got {
        let list = |addrs: &[SocketAddr]| {
            addrs
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        log::warn!(
            "take-over: serving the sockets received, not {flag}: received={} {}={}",
            list(&got),
            flag.trim_start_matches('-'),
            list(&wanted)
        );
    }
}
