//! `tokio-ct-echo ADDR`: the canonical tokio echo server on the
//! `current_thread` runtime.
//!
//! Written the way tokio's own `examples/echo.rs` and most users write it:
//! an accept loop, one spawned task per connection, a 4 KiB stack buffer,
//! `read` then `write_all`. The single-threaded runtime makes it the
//! like-for-like peer of echod (one thread, one epoll), so the difference
//! measures what tokio's task machinery costs over a hand-written mio loop.
//!
//! Prints `listening on IP:PORT` once bound. Installs no signal handlers, so
//! SIGTERM and SIGINT end it with the default disposition.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let addr = echod_peers::addr_from_args("tokio-ct-echo");
    let listener = match TcpListener::bind(addr).await {
        Ok(listener) => listener,
        Err(err) => echod_peers::exit_with(
            "tokio-ct-echo",
            format_args!("cannot listen on {addr}: {err}"),
        ),
    };
    echod_peers::announce(
        listener
            .local_addr()
            .expect("local address of the listener"),
    );

    loop {
        match listener.accept().await {
            Ok((stream, _peer)) => {
                tokio::spawn(echo(stream));
            }
            // Errors here belong to one incoming connection (ECONNABORTED) or
            // are transient (EMFILE); the peer keeps serving the others.
            Err(err) => eprintln!("tokio-ct-echo: accept failed: {err}"),
        }
    }
}

/// Echoes until the peer closes; any error closes just this connection.
async fn echo(mut stream: TcpStream) {
    let mut buf = [0u8; 4096];
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if stream.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
