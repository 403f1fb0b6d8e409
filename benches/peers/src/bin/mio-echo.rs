//! `mio-echo ADDR`: the canonical mio echo server, the reference for what a
//! user writes by following mio's own `examples/tcp_server.rs`.
//!
//! Kept in that example's shape on purpose: a `HashMap<Token, _>` of
//! connections with a counter for tokens, every connection registered once
//! for `READABLE | WRITABLE` (edge-triggered, never reregistered), accept
//! until `WouldBlock`, and on a readable event read until `WouldBlock` with
//! a 4 KiB buffer. That last read, the one that returns `WouldBlock`, is the
//! extra syscall per event that echod avoids; measuring it is the point of
//! this peer. The example's fixed greeting is replaced by echoing back what
//! was read, and unlike the example it keeps bytes a short write left over
//! and sends them on the next writable event, so the echo is exact.
//!
//! Like the example it never stops reading while echo bytes are pending, so
//! a peer that sends without reading grows that connection's buffer without
//! bound. Closed-loop benchmark clients never do that.
//!
//! Prints `listening on IP:PORT` once bound. Installs no signal handlers, so
//! SIGTERM and SIGINT end it with the default disposition.

use std::collections::HashMap;
use std::io::{self, Read, Write};

use mio::event::Event;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

const SERVER: Token = Token(0);

/// One accepted connection.
struct Connection {
    /// The socket, registered for `READABLE | WRITABLE` for its whole life.
    stream: TcpStream,
    /// Bytes read but not yet echoed; empty whenever the last write was full.
    pending: Vec<u8>,
    /// The peer sent FIN; close once `pending` is empty.
    is_read_closed: bool,
}

fn main() {
    let addr = echod_peers::addr_from_args("mio-echo");
    let mut poll = Poll::new().expect("create the mio Poll");
    let mut events = Events::with_capacity(128);
    let mut server = match TcpListener::bind(addr) {
        Ok(server) => server,
        Err(err) => {
            echod_peers::exit_with("mio-echo", format_args!("cannot listen on {addr}: {err}"))
        }
    };
    poll.registry()
        .register(&mut server, SERVER, Interest::READABLE)
        .expect("register the listener");
    echod_peers::announce(server.local_addr().expect("local address of the listener"));

    let mut connections: HashMap<Token, Connection> = HashMap::new();
    let mut unique_token = Token(SERVER.0 + 1);

    loop {
        if let Err(err) = poll.poll(&mut events, None) {
            if interrupted(&err) {
                continue;
            }
            echod_peers::exit_with("mio-echo", format_args!("poll failed: {err}"));
        }

        for event in events.iter() {
            match event.token() {
                SERVER => loop {
                    let mut stream = match server.accept() {
                        Ok((stream, _peer)) => stream,
                        Err(err) if would_block(&err) => break,
                        Err(err) if interrupted(&err) => continue,
                        // Belongs to one incoming connection (ECONNABORTED) or
                        // is transient (EMFILE); stop for this event and serve
                        // the rest. Edge-triggered, so the next connection
                        // attempt brings the listener back.
                        Err(err) => {
                            eprintln!("mio-echo: accept failed: {err}");
                            break;
                        }
                    };
                    let token = next(&mut unique_token);
                    if let Err(err) = poll.registry().register(
                        &mut stream,
                        token,
                        Interest::READABLE.add(Interest::WRITABLE),
                    ) {
                        eprintln!("mio-echo: register failed: {err}");
                        continue; // dropping the stream closes it
                    }
                    connections.insert(
                        token,
                        Connection {
                            stream,
                            pending: Vec::new(),
                            is_read_closed: false,
                        },
                    );
                },
                token => {
                    // A missing entry is a spurious event for a connection
                    // closed earlier in this batch: ignore it.
                    let done = match connections.get_mut(&token) {
                        Some(conn) => handle_connection_event(conn, event),
                        None => false,
                    };
                    if done {
                        if let Some(mut conn) = connections.remove(&token) {
                            // Closing the fd removes it from epoll anyway;
                            // this only mirrors the example.
                            let _ = poll.registry().deregister(&mut conn.stream);
                        }
                    }
                }
            }
        }
    }
}

fn next(current: &mut Token) -> Token {
    let next = current.0;
    current.0 += 1;
    Token(next)
}

/// Reads what arrived and echoes it back. Returns `true` when the connection
/// is finished: the peer closed and everything was echoed, or an I/O error
/// (reset, broken pipe), which closes just this connection.
fn handle_connection_event(conn: &mut Connection, event: &Event) -> bool {
    if event.is_readable() && !conn.is_read_closed {
        let mut received = [0u8; 4096];
        loop {
            match conn.stream.read(&mut received) {
                Ok(0) => {
                    conn.is_read_closed = true;
                    break;
                }
                Ok(n) => conn.pending.extend_from_slice(&received[..n]),
                // Edge-triggered: only a WouldBlock proves the socket is
                // drained and the next edge will come.
                Err(err) if would_block(&err) => break,
                Err(err) if interrupted(&err) => continue,
                Err(_) => return true,
            }
        }
    }

    // On a readable or a writable event alike: send what is pending.
    while !conn.pending.is_empty() {
        match conn.stream.write(&conn.pending) {
            Ok(0) => return true,
            Ok(n) => {
                conn.pending.drain(..n);
            }
            // The rest waits for the next writable edge.
            Err(err) if would_block(&err) => break,
            Err(err) if interrupted(&err) => continue,
            Err(_) => return true,
        }
    }

    conn.is_read_closed && conn.pending.is_empty()
}

fn would_block(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::WouldBlock
}

fn interrupted(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::Interrupted
}
