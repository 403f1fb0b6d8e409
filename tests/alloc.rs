//! Zero heap allocations per echoed message once connections are
//! established (docs/protocol.md "Running": "No allocation per message on the steady
//! path"), and per echoed UDP datagram (docs/protocol.md "UDP echo (RFC
//! 862)"). A counting global allocator counts only the server thread's
//! allocations; the clients run on other threads and are not counted.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

struct Counting;

static SERVER_ALLOCS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static IS_SERVER: Cell<bool> = const { Cell::new(false) };
}

// SAFETY: forwards to the system allocator; only adds a counter.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // try_with: the thread-local may already be gone while a thread exits.
        if IS_SERVER.try_with(Cell::get).unwrap_or(false) {
            SERVER_ALLOCS.fetch_add(1, Ordering::SeqCst);
        }
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if IS_SERVER.try_with(Cell::get).unwrap_or(false) {
            SERVER_ALLOCS.fetch_add(1, Ordering::SeqCst);
        }
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn round_trips(clients: &mut [std::net::TcpStream], rounds: usize) {
    let msg = [0x5au8; 64];
    let mut back = [0u8; 64];
    for _ in 0..rounds {
        for c in clients.iter_mut() {
            c.write_all(&msg).unwrap();
        }
        for c in clients.iter_mut() {
            c.read_exact(&mut back).unwrap();
            assert_eq!(back, msg);
        }
    }
}

/// Sends `rounds` datagrams of 64 bytes and waits for each echo.
fn datagram_round_trips(client: &std::net::UdpSocket, server: std::net::SocketAddr, rounds: usize) {
    let msg = [0xa5u8; 64];
    let mut back = [0u8; 128];
    for _ in 0..rounds {
        client.send_to(&msg, server).unwrap();
        let (len, from) = client.recv_from(&mut back).unwrap();
        assert_eq!((&back[..len], from), (&msg[..], server));
    }
}

// One test, TCP and UDP on the same server: the counter is global, so two
// servers in parallel tests would count each other's allocations.
#[test]
fn echoing_allocates_nothing_per_message_once_connections_are_established() {
    let config = echod::Config {
        listen: vec!["127.0.0.1:0".parse().unwrap()],
        udp: vec!["127.0.0.1:0".parse().unwrap()],
        drain_timeout: Duration::from_secs(10),
        ..echod::Config::default()
    };
    let server = echod::Server::bind(config).unwrap();
    let addr = server.local_addrs()[0];
    let udp = server.udp_addrs()[0];
    let handle = server.shutdown_handle();
    let loop_thread = std::thread::spawn(move || {
        IS_SERVER.with(|s| s.set(true));
        server.run()
    });
    let mut clients: Vec<_> = (0..16).map(|_| common::connect(addr)).collect();
    let datagrams = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    datagrams.set_read_timeout(Some(common::LIMIT)).unwrap();
    // Warm up: accepts, slab growth, first events.
    round_trips(&mut clients, 200);
    datagram_round_trips(&datagrams, udp, 200);
    let before = SERVER_ALLOCS.load(Ordering::SeqCst);
    // The counter works: start-up and accepting (slab growth) did allocate.
    assert!(
        before > 0,
        "the counting allocator saw no server allocation at all"
    );
    // At least 2,000 rounds and 1.2 s, so that timers come due meanwhile.
    let window = std::time::Instant::now();
    let mut rounds = 0;
    while rounds < 2_000 || window.elapsed() < Duration::from_millis(1_200) {
        round_trips(&mut clients, 100);
        datagram_round_trips(&datagrams, udp, 100);
        rounds += 100;
    }
    let after = SERVER_ALLOCS.load(Ordering::SeqCst);
    assert_eq!(
        after - before,
        0,
        "the server allocated {} times over {} echoed messages and 2000 datagrams",
        after - before,
        16 * 2_000
    );
    handle.drain();
    for c in &mut clients {
        assert_eq!(common::read_to_eof(c), b"SHUTDOWN");
    }
    drop(clients);
    loop_thread.join().unwrap().unwrap();
}
