#!/usr/bin/env python3
"""RSS per idle connection, and the idle sweep's cost, with many connections.

Usage: idle_connections.py ECHOD_BINARY CONNECTIONS SOURCES WAIT [ECHOD FLAGS...]

Starts ECHOD_BINARY on a free loopback port with the given flags (add
`--log-level trace` to see the idle sweep's `idle sweep: ... took=` lines),
measures its idle RSS after one round trip, opens CONNECTIONS connections
that never send, spread over SOURCES client addresses (127.0.1.1,
127.0.1.2, ...: several sources for --max-connections-per-ip), waits until
echod's SIGUSR1 stats line counts them all, and reads VmRSS again
(/proc/PID/status). Prints idle RSS, RSS with the connections, and the
bytes per connection. Then waits WAIT seconds and prints every `idle sweep`
line echod logged meanwhile. Loopback only; it stops echod (SIGTERM) by
itself. docs/benchmarks.md ("Protections") quotes its output.
"""
import re, resource, signal, socket, subprocess, sys, threading, time

binary, count, sources, wait = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
echod = subprocess.Popen([binary, '--listen', '127.0.0.1:0'] + sys.argv[5:],
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
    for line in open('/proc/%d/status' % echod.pid):
        if line.startswith('VmRSS'):
            return int(line.split()[1])
    return 0


def stop(message):
    echod.kill()
    sys.exit(message)


def open_connections():
    # Asked again each second: a busy echod drops log lines rather than wait
    # for stderr (a trace run logs every connection), the stats line too.
    for _ in range(20):
        seen = len(lines)
        echod.send_signal(signal.SIGUSR1)
        deadline = time.time() + 1
        while time.time() < deadline:
            for line in lines[seen:]:
                m = re.search(r'stats: .* connections=(\d+)', line)
                if m:
                    return int(m.group(1))
            time.sleep(0.01)
    stop('no stats line')


warm = socket.create_connection(('127.0.0.1', port))
warm.sendall(b'warm')
warm.recv(16)
warm.close()
time.sleep(0.3)
idle = rss_kib()
conns = []
for i in range(count):
    c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    c.bind(('127.0.1.%d' % (1 + i % sources), 0))
    c.connect(('127.0.0.1', port))
    conns.append(c)
    if i % 500 == 499:
        # Keep the backlog short: let echod catch up.
        while open_connections() < i + 1 - 100:
            time.sleep(0.01)
while open_connections() < count:
    time.sleep(0.05)
time.sleep(0.3)
loaded = rss_kib()
print('idle RSS KiB %d, with %d connections from %d sources KiB %d, %.0f B/connection'
      % (idle, count, sources, loaded, (loaded - idle) * 1024 / count))
seen = len(lines)
time.sleep(wait)
for line in lines[seen:]:
    if 'idle sweep' in line:
        print(line.rstrip())
echod.send_signal(signal.SIGTERM)
for c in conns:
    c.close()
echod.wait(20)
