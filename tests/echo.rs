//! Echo as clients see it (docs/protocol.md "Running"): every byte back, in order,
//! binary-safe, from one byte to several MiB, over many connections at once;
//! half-close; resets do not disturb anyone else.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::thread;

use common::*;

/// Sends `data` from one thread while reading the echo on another, so
/// payloads larger than the socket buffers cannot deadlock.
fn echo_concurrently(stream: TcpStream, data: Vec<u8>) -> Vec<u8> {
    let mut writer = stream.try_clone().unwrap();
    let len = data.len();
    let sender = thread::spawn(move || writer.write_all(&data).unwrap());
    let mut reader = stream;
    let mut back = vec![0; len];
    reader.read_exact(&mut back).unwrap();
    sender.join().unwrap();
    back
}

#[test]
fn random_binary_payloads_from_one_byte_to_several_mib_echo_exactly() {
    let echod = Echod::spawn(&[]);
    let sizes = [
        1,
        2,
        7,
        100,
        4095,
        4096,
        65535,
        65536,
        65537,
        1 << 20,
        3 << 20,
        8 << 20,
    ];
    let handles: Vec<_> = sizes
        .iter()
        .enumerate()
        .map(|(i, &size)| {
            let stream = echod.connect();
            thread::spawn(move || {
                let data = random_bytes(size, i as u64 + 1);
                let back = echo_concurrently(stream, data.clone());
                assert!(back == data, "payload of {size} bytes came back different");
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

#[test]
fn many_concurrent_connections_each_get_their_own_bytes() {
    let echod = Echod::spawn(&[]);
    let handles: Vec<_> = (0..64)
        .map(|i| {
            let stream = echod.connect();
            thread::spawn(move || {
                let data = random_bytes(64 * 1024 + i * 997, i as u64 + 100);
                let back = echo_concurrently(stream, data.clone());
                assert!(back == data, "connection {i} got someone else's bytes");
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

#[test]
fn every_byte_value_survives() {
    let echod = Echod::spawn(&[]);
    let mut stream = echod.connect();
    let all: Vec<u8> = (0..=255u8).cycle().take(256 * 16).collect();
    assert_eq!(round_trip(&mut stream, &all), all);
}

#[test]
fn pipelined_small_messages_come_back_in_order() {
    let echod = Echod::spawn(&[]);
    let stream = echod.connect();
    let mut data = Vec::new();
    for i in 0..10_000u32 {
        data.extend_from_slice(format!("msg{i};").as_bytes());
    }
    // Written in many small writes, read back as one stream.
    let mut writer = stream.try_clone().unwrap();
    let chunks: Vec<Vec<u8>> = data.chunks(9).map(<[u8]>::to_vec).collect();
    let sender = thread::spawn(move || {
        for c in chunks {
            writer.write_all(&c).unwrap();
        }
    });
    let mut reader = stream;
    let mut back = vec![0; data.len()];
    reader.read_exact(&mut back).unwrap();
    sender.join().unwrap();
    assert!(back == data);
}

#[test]
fn half_closed_client_still_gets_its_echo_then_eof() {
    let echod = Echod::spawn(&[]);
    let stream = echod.connect();
    let data = random_bytes(4 << 20, 42);
    let mut writer = stream.try_clone().unwrap();
    let sent = data.clone();
    let sender = thread::spawn(move || {
        writer.write_all(&sent).unwrap();
        writer.shutdown(Shutdown::Write).unwrap();
    });
    let mut reader = stream;
    let back = read_to_eof(&mut reader);
    sender.join().unwrap();
    assert_eq!(back.len(), data.len());
    assert!(back == data);
}

#[test]
fn data_and_eof_in_one_segment_are_both_handled() {
    // The peer's end-of-stream can arrive with the last bytes; the echo must
    // still be complete and the connection closed.
    let echod = Echod::spawn(&[]);
    for i in 0..50 {
        let mut stream = echod.connect();
        let msg = format!("last words {i}");
        stream.write_all(msg.as_bytes()).unwrap();
        stream.shutdown(Shutdown::Write).unwrap();
        assert_eq!(read_to_eof(&mut stream), msg.as_bytes());
    }
}

#[test]
fn a_peer_reset_does_not_disturb_other_connections() {
    let echod = Echod::spawn(&[]);
    let mut steady = echod.connect();
    assert_eq!(round_trip(&mut steady, b"before"), b"before");
    for _ in 0..20 {
        let mut rude = echod.connect();
        rude.write_all(&random_bytes(100_000, 9)).unwrap();
        // SO_LINGER 0 makes close send RST instead of FIN.
        socket2::SockRef::from(&rude)
            .set_linger(Some(std::time::Duration::ZERO))
            .unwrap();
        drop(rude);
    }
    assert_eq!(round_trip(&mut steady, b"after"), b"after");
    let mut fresh = echod.connect();
    assert_eq!(round_trip(&mut fresh, b"new"), b"new");
}
