//! The memory budget as an operator sees it (docs/protocol.md "Running", memory budget):
//! RSS stays within README's formula however many clients never read, a
//! client that reads is still served, memory goes back to the OS when the
//! clients leave, and a limit on the address space never aborts echod.
//! Regression tests for issue #8, item 5: 250 never-reading clients got
//! echod OOM-killed under a 64 MiB container limit, it aborted under a
//! 64 MiB `RLIMIT_AS`, and its RSS stayed at its peak after they left.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::thread;
use std::time::Instant;

use common::*;

/// README "Memory": the default `--max-pending-total`.
const BUDGET: u64 = 16 << 20;
/// What a connection with nothing pending may still read when the budget
/// is spent (`echod::memory::SMALL_READ`), the most it holds beyond it.
/// What a connection with nothing pending may still read when the budget is
/// spent (the library's `memory::SMALL_READ`).
const SMALL_READ: u64 = 2 * 1024;
/// Never-reading clients in each test.
const NEVER_READERS: usize = 300;

/// README's worst case: idle RSS + the read buffer and the spare (64 KiB
/// each) + the budget + per connection the small read, one notice and its
/// bookkeeping (slab slot, allocator header), rounded up to 128 bytes.
fn worst_case_rss(idle: u64, budget: u64, connections: u64) -> u64 {
    idle + 2 * 64 * 1024 + budget + connections * (SMALL_READ + 128)
}

/// Raises this test process's soft descriptor limit to its hard limit.
fn raise_own_nofile_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit on a valid, owned struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// A client that sends and never reads. Its small receive buffer (set
/// before connecting, so the window is small from the start) keeps the
/// kernels from absorbing megabytes first: the server's pending bytes grow
/// sooner, and the test moves less data.
fn never_reader(addr: SocketAddr) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    socket.connect(&addr.into()).expect("connect");
    let stream: TcpStream = socket.into();
    stream.set_nonblocking(true).expect("non-blocking");
    stream
}

/// Pushes from every never-reader until the server's pending bytes reach
/// `until` (its `stats:` line says so), sampling its RSS on the way;
/// returns the highest RSS seen.
#[track_caller]
fn push_until_pending(echod: &mut Echod, clients: &mut [TcpStream], until: u64) -> u64 {
    let chunk = random_bytes(64 * 1024, 3);
    let started = Instant::now();
    let mut peak = 0;
    loop {
        for conn in clients.iter_mut() {
            match conn.write(&chunk) {
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => echod.fail(&format!("a never-reader's write failed: {e}")),
            }
        }
        peak = peak.max(rss_bytes(echod.pid()));
        let line = echod.stats();
        if field(&line, "pending") >= until {
            return peak.max(rss_bytes(echod.pid()));
        }
        if started.elapsed() > LIMIT * 3 {
            echod.fail(&format!("pending bytes never reached {until}: {line}"));
        }
    }
}

/// Echoes `len` random bytes on a new connection, writing from another
/// thread; true when every byte came back in time.
fn reading_client_is_served(addr: SocketAddr, len: usize) -> Result<(), String> {
    let mut conn = connect(addr);
    let mut writer = conn.try_clone().map_err(|e| e.to_string())?;
    let data = random_bytes(len, 77);
    let mut back = vec![0; len];
    thread::scope(|scope| {
        let sent = scope.spawn(|| writer.write_all(&data));
        let read = conn.read_exact(&mut back);
        sent.join()
            .expect("writer")
            .map_err(|e| format!("write: {e}"))?;
        read.map_err(|e| format!("read echo: {e}"))
    })?;
    if back != data {
        return Err("echo differs".into());
    }
    Ok(())
}

/// The idle RSS, once a round trip has touched the read buffer.
fn idle_rss(echod: &Echod) -> u64 {
    let mut warm = echod.connect();
    assert_eq!(round_trip(&mut warm, b"warm"), b"warm");
    rss_bytes(echod.pid())
}

#[test]
fn never_reading_clients_stay_within_the_budget_and_their_memory_goes_back_when_they_leave() {
    raise_own_nofile_limit();
    let mut echod = Echod::spawn(&[]);
    let idle = idle_rss(&echod);
    let mut clients: Vec<TcpStream> = (0..NEVER_READERS)
        .map(|_| never_reader(echod.addr()))
        .collect();
    let peak = push_until_pending(&mut echod, &mut clients, BUDGET);
    let bound = worst_case_rss(idle, BUDGET, NEVER_READERS as u64 + 1);
    eprintln!("note: idle RSS {idle} B, peak {peak} B, README's bound {bound} B");
    assert!(
        peak <= bound,
        "RSS {peak} over README's worst case {bound} (idle {idle})\n{}",
        echod.stderr()
    );

    // A client that reads its echo is served while the never-readers hold
    // the budget: a megabyte, more than the budget leaves it.
    if let Err(e) = reading_client_is_served(echod.addr(), 1 << 20) {
        echod.fail(&format!("a reading client was starved: {e}"));
    }
    let pending = field(&echod.stats(), "pending");
    assert!(
        pending >= BUDGET,
        "the budget was freed meanwhile ({pending})"
    );

    // They leave: the memory is freed and goes back to the OS.
    drop(clients);
    let pid = echod.pid();
    wait_until(LIMIT, "every never-reader's connection to close", || {
        field(&echod.stats(), "connections") == 0
    });
    let line = echod.stats();
    assert_eq!(field(&line, "pending"), 0, "{line}");
    let after = rss_bytes(pid);
    eprintln!("note: RSS {after} B after they left (idle {idle} B)");
    assert!(
        after <= idle + (2 << 20),
        "RSS {after} B after the clients left, idle was {idle} B (peak {peak} B)"
    );
}

#[test]
fn a_connection_held_back_by_the_budget_is_read_again_when_others_leave() {
    raise_own_nofile_limit();
    let mut echod = Echod::spawn(&[]);
    let mut clients: Vec<TcpStream> = (0..NEVER_READERS)
        .map(|_| never_reader(echod.addr()))
        .collect();
    push_until_pending(&mut echod, &mut clients, BUDGET);
    // A client that writes and reads only once its write is done: held back
    // by the spent budget, it reads nothing, and once its buffers are full
    // it sends nothing either, so no event of its own will ever come.
    let mut held = never_reader(echod.addr());
    let data = random_bytes(8 << 20, 9);
    fill_until_blocked(&mut held, &data);
    drop(clients);
    wait_until(LIMIT, "the never-readers' connections to close", || {
        field(&echod.stats(), "connections") == 1
    });
    // The budget is free again: the server must come back to the held-back
    // connection by itself and read it up to its own bound (its echo then
    // waits in pending, as it reads nothing).
    wait_until(LIMIT, "the held-back connection to be read again", || {
        field(&echod.stats(), "pending") > 64 * 1024
    });
    drop(held);
}

/// Spawns echod with its address space limited to `bytes` (`RLIMIT_AS`,
/// what `prlimit --as=` sets).
fn spawn_with_address_space(bytes: u64, args: &[&str]) -> Echod {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_echod"));
    cmd.args(["--listen", "127.0.0.1:0", "--drain-timeout", "0.5"])
        .args(args);
    // SAFETY: setrlimit is async-signal-safe; the closure allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: bytes as libc::rlim_t,
                rlim_max: bytes as libc::rlim_t,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Echod::spawn_command(cmd, 1)
}

/// Ends the run with a drain and checks echod exited 0, not by a signal
/// (an allocation failure aborts with SIGABRT).
#[track_caller]
fn assert_drains_and_exits_zero(echod: &mut Echod) {
    echod.signal(libc::SIGTERM);
    let status = echod.wait_exit(LIMIT);
    assert!(status.success(), "{status:?}\n{}", echod.stderr());
}

#[test]
fn never_reading_clients_do_not_abort_echod_under_a_64_mib_address_space_limit() {
    raise_own_nofile_limit();
    let mut echod = spawn_with_address_space(64 << 20, &[]);
    let mut clients: Vec<TcpStream> = (0..NEVER_READERS)
        .map(|_| never_reader(echod.addr()))
        .collect();
    push_until_pending(&mut echod, &mut clients, BUDGET);
    if let Err(e) = reading_client_is_served(echod.addr(), 256 * 1024) {
        echod.fail(&format!("a reading client was starved: {e}"));
    }
    drop(clients);
    assert_drains_and_exits_zero(&mut echod);
}

#[test]
fn running_out_of_memory_before_the_budget_pauses_reading_instead_of_aborting() {
    raise_own_nofile_limit();
    // A budget far above what the address space allows: allocations fail first.
    let mut echod = spawn_with_address_space(
        32 << 20,
        &["--max-pending-total", "1G", "--max-pending", "4M"],
    );
    let mut clients: Vec<TcpStream> = (0..100).map(|_| never_reader(echod.addr())).collect();
    let chunk = random_bytes(64 * 1024, 5);
    let started = Instant::now();
    while !echod
        .seen
        .iter()
        .any(|l| l.contains("memory allocation failed"))
    {
        for conn in clients.iter_mut() {
            match conn.write(&chunk) {
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => echod.fail(&format!("a never-reader's write failed: {e}")),
            }
        }
        // The stats line is a barrier: any warning comes before it.
        let line = echod.stats();
        if started.elapsed() > LIMIT * 3 {
            echod.fail(&format!("no allocation failed: {line}"));
        }
    }
    let warning = echod.wait_for_line("memory allocation failed", LIMIT);
    assert!(warning.contains("WARN"), "{warning}");
    // Still running; once the memory is freed, reading goes on.
    drop(clients);
    wait_until(LIMIT, "the never-readers' connections to close", || {
        field(&echod.stats(), "connections") == 0
    });
    if let Err(e) = reading_client_is_served(echod.addr(), 256 * 1024) {
        echod.fail(&format!(
            "reading did not resume after memory was freed: {e}"
        ));
    }
    assert_drains_and_exits_zero(&mut echod);
}
