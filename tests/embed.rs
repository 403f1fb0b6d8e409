//! echod embedded in another program (docs/protocol.md "Shape"): bind on port 0, learn
//! the address, run the loop on a thread, and drain it with
//! `ShutdownHandle::drain()` from another thread. No signals are involved.

mod common;

use std::time::Duration;

use common::{read_to_eof, round_trip};
use echod::{Config, DrainEnd, DrainReason, Server};

fn config() -> Config {
    Config {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        drain_timeout: Duration::from_secs(30),
        ..Config::default()
    }
}

#[test]
fn shutdown_handle_drains_connected_clients_like_a_signal() {
    let server = Server::bind(config()).unwrap();
    let addr = server.local_addrs()[0];
    let handle = server.shutdown_handle();
    let loop_thread = std::thread::spawn(move || server.run());

    let mut clients: Vec<_> = (0..5).map(|_| common::connect(addr)).collect();
    for c in &mut clients {
        assert_eq!(round_trip(c, b"embedded"), b"embedded");
    }
    // From yet another thread, as an embedder would.
    let remote = handle.clone();
    std::thread::spawn(move || remote.drain()).join().unwrap();
    assert!(handle.is_drain_requested());
    for c in &mut clients {
        assert_eq!(read_to_eof(c), b"SHUTDOWN");
    }
    drop(clients);
    let summary = loop_thread.join().unwrap().unwrap();
    assert_eq!(summary.reason, DrainReason::Handle);
    assert_eq!(summary.end, DrainEnd::Emptied);
    assert_eq!(summary.stats.accepted, 5);
    assert_eq!(summary.stats.left, 5);
    assert_eq!(summary.stats.bytes_echoed, 5 * 8);
    // The listener is closed: the port refuses connects.
    assert!(common::is_refused(addr));
}

#[test]
fn drain_twice_is_harmless() {
    let server = Server::bind(config()).unwrap();
    let handle = server.shutdown_handle();
    handle.drain();
    handle.drain();
    let summary = server.run().unwrap();
    assert_eq!(summary.end, DrainEnd::Emptied);
    handle.drain();
}

#[test]
fn bind_reports_an_address_in_use_as_an_error_not_a_panic() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut config = config();
    config.listen = vec![holder.local_addr().unwrap()];
    let err = Server::bind(config).unwrap_err();
    assert_eq!(err.exit_code(), 1);
    assert!(err.to_string().contains("address in use"), "{err}");
}
