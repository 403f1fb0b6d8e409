#!/usr/bin/env python3
"""RSS of echod while clients send and never read, and after they leave.

Usage: never_readers.py ECHOD_BINARY CLIENTS ROUNDS [ECHOD FLAGS...]

Starts ECHOD_BINARY on a free port with the given flags, measures its idle
RSS (after one round trip), then per round opens CLIENTS connections that
send 64 KiB chunks without ever reading until no write has progressed for a
second, samples echod's VmRSS (/proc/PID/status) all along (peak), closes
them, waits until echod's SIGUSR1 stats line says connections=0, and reads
VmRSS again (after leave). Prints one line per round. Loopback only; it
stops by itself. docs/benchmarks.md ("Memory budget") quotes its output.
"""
import re, select, signal, socket, subprocess, sys, threading, time

binary, clients, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
echod = subprocess.Popen([binary, '--listen', '127.0.0.1:0'] + sys.argv[4:],
                         stderr=subprocess.PIPE, text=True)
lines, port = [], None
while port is None:
    line = echod.stderr.readline()
    if not line:
        sys.exit('echod exited: %s' % echod.poll())
    m = re.search(r'listening on [\d.]+:(\d+)', line)
    port = int(m.group(1)) if m else None
threading.Thread(target=lambda: lines.extend(echod.stderr), daemon=True).start()

def rss_kib():
    try:
        for line in open('/proc/%d/status' % echod.pid):
            if line.startswith('VmRSS'):
                return int(line.split()[1])
    except OSError:
        pass
    return 0  # exited (a zombie has no VmRSS)

def open_connections():
    seen = len(lines)
    echod.send_signal(signal.SIGUSR1)
    while True:
        for line in lines[seen:]:
            m = re.search(r'stats: .*connections=(\d+)', line)
            if m:
                return int(m.group(1))
        time.sleep(0.01)

warm = socket.create_connection(('127.0.0.1', port))
warm.sendall(b'warm'); warm.recv(16); warm.close()
time.sleep(0.2)
print('idle RSS KiB', rss_kib())
chunk = b'x' * 65536
for r in range(rounds):
    conns = [socket.create_connection(('127.0.0.1', port)) for _ in range(clients)]
    for c in conns:
        c.setblocking(False)
    peak, sent, last = 0, 0, time.time()
    while time.time() - last < 1.0:
        _, writable, _ = select.select([], conns, [], 0.05)
        for c in writable:
            try:
                sent += c.send(chunk)
                last = time.time()
            except BlockingIOError:
                pass
            except OSError:  # reset: echod is gone
                last = 0
        if echod.poll() is not None:
            break
        peak = max(peak, rss_kib())
    for c in conns:
        c.close()
    while echod.poll() is None and open_connections() != 0:
        time.sleep(0.05)
    time.sleep(0.3)
    after = rss_kib() if echod.poll() is None else 'DEAD (status %s)' % echod.returncode
    print('round %d: pushed %.1f MiB, peak RSS KiB %d, after leave %s'
          % (r, sent / 2**20, peak, after))
    if echod.poll() is not None:
        print(''.join(lines[-3:]), end='')
        break
echod.send_signal(signal.SIGTERM)
echod.wait()
