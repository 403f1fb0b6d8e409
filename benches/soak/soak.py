#!/usr/bin/env python3
"""A bounded soak of echod on loopback, run by hand (not a test).

    python3 benches/soak/soak.py target/release/echod [SECONDS] [ECHO_LOAD]

Starts echod on 127.0.0.1 (port 0), then for SECONDS (default 300) runs at
once: connection churn with verified echoes, half-closing clients that read
to end-of-stream, clients that reset, clients that send and never read
(recycled), and, when ECHO_LOAD is given, a steady open-loop echo-load run
that verifies every byte. Every 5 s it samples echod's RSS and descriptor
count. At the end it drains under load: 40 streaming clients, SIGTERM, and
each must see an exact prefix of what it sent, then the notice, then
end-of-stream; echod must exit 0. Prints one summary and exits 1 on any
error. Everything targets 127.0.0.1 and stops by itself.
"""

import os
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

NOTICE = b"SHUTDOWN"


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def fd_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def payload(rng, n):
    # No byte of the notice, so an echo is never taken for it.
    alphabet = bytes(b for b in range(256) if b not in NOTICE)
    return bytes(rng.choice(alphabet) for _ in range(n))


class Counters:
    def __init__(self):
        self.lock = threading.Lock()
        self.values = {}
        self.errors = []

    def add(self, name, n=1):
        with self.lock:
            self.values[name] = self.values.get(name, 0) + n

    def error(self, what):
        with self.lock:
            self.errors.append(what)


def read_exact(sock, n):
    out = bytearray()
    while len(out) < n:
        chunk = sock.recv(min(65536, n - len(out)))
        if not chunk:
            raise IOError(f"end-of-stream after {len(out)} of {n} bytes")
        out += chunk
    return bytes(out)


def churner(addr, stop, c, seed):
    rng = random.Random(seed)
    while not stop.is_set():
        try:
            with socket.create_connection(addr, timeout=20) as s:
                for _ in range(rng.randint(1, 5)):
                    data = payload(rng, rng.randint(1, 16384))
                    s.sendall(data)
                    if read_exact(s, len(data)) != data:
                        c.error("churn: echo differs")
                    c.add("churn_bytes", len(data))
            c.add("churn_connections")
        except OSError as e:
            c.error(f"churn: {e}")


def half_closer(addr, stop, c, seed):
    rng = random.Random(seed)
    while not stop.is_set():
        try:
            with socket.create_connection(addr, timeout=20) as s:
                data = payload(rng, rng.randint(0, 262144))
                sender = threading.Thread(target=lambda: (s.sendall(data), s.shutdown(socket.SHUT_WR)))
                sender.start()
                got = bytearray()
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    got += chunk
                sender.join()
                if bytes(got) != data:
                    c.error(f"half-close: got {len(got)} of {len(data)} bytes or different")
                c.add("half_close_connections")
        except OSError as e:
            c.error(f"half-close: {e}")


def resetter(addr, stop, c, seed):
    rng = random.Random(seed)
    while not stop.is_set():
        try:
            s = socket.create_connection(addr, timeout=20)
            s.sendall(payload(rng, rng.randint(1, 100000)))
            # SO_LINGER 0: close sends RST.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()
            c.add("resets")
        except OSError as e:
            c.error(f"reset: {e}")
        time.sleep(0.01)


def never_readers(addr, stop, c, count=50, hold=30.0):
    rng = random.Random(7)
    while not stop.is_set():
        held = []
        for _ in range(count):
            try:
                s = socket.create_connection(addr, timeout=20)
                s.setblocking(False)
                held.append(s)
            except OSError as e:
                c.error(f"never-reader connect: {e}")
        block = payload(rng, 65536)
        until = time.monotonic() + hold
        while time.monotonic() < until and not stop.is_set():
            for s in held:
                try:
                    c.add("never_read_bytes", s.send(block))
                except BlockingIOError:
                    pass
                except OSError as e:
                    c.error(f"never-reader send: {e}")
            time.sleep(0.2)
        for s in held:
            s.close()
        c.add("never_reader_rounds")


def drain_under_load(addr, pid, c):
    clients = []
    rng = random.Random(11)
    for _ in range(40):
        s = socket.create_connection(addr, timeout=30)
        clients.append((s, payload(rng, 200000)))
    results = [None] * len(clients)

    def run(i, s, data):
        got = bytearray()

        def send():
            try:
                s.sendall(data)
            except OSError:
                pass  # the drain may end before everything is sent

        t = threading.Thread(target=send)
        t.start()
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += chunk
        except OSError as e:
            results[i] = f"read failed: {e}"
            return
        t.join()
        got = bytes(got)
        if not got.endswith(NOTICE):
            results[i] = "no notice before end-of-stream"
        elif data[: len(got) - len(NOTICE)] != got[: -len(NOTICE)]:
            results[i] = "echo is not a prefix of what was sent"
        else:
            results[i] = "ok"

    threads = [threading.Thread(target=run, args=(i, s, d)) for i, (s, d) in enumerate(clients)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    os.kill(pid, signal.SIGTERM)
    for t in threads:
        t.join(60)
    for r in results:
        if r != "ok":
            c.error(f"drain: {r}")
        else:
            c.add("drained_clients")


def main():
    echod = sys.argv[1]
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 300.0
    echo_load = sys.argv[3] if len(sys.argv) > 3 else None
    proc = subprocess.Popen(
        [echod, "--listen", "127.0.0.1:0", "--drain-timeout", "10"],
        stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    port = None
    log_tail = []
    for line in proc.stderr:
        m = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        if m:
            port = int(m.group(1))
            break
    if port is None:
        print("echod did not start", file=sys.stderr)
        return 1

    def drain_log():
        for line in proc.stderr:
            log_tail.append(line.rstrip())
            del log_tail[:-20]

    threading.Thread(target=drain_log, daemon=True).start()
    addr = ("127.0.0.1", port)
    c = Counters()
    stop = threading.Event()
    workers = [threading.Thread(target=churner, args=(addr, stop, c, i)) for i in range(4)]
    workers += [threading.Thread(target=half_closer, args=(addr, stop, c, 100 + i)) for i in range(2)]
    workers += [threading.Thread(target=resetter, args=(addr, stop, c, 200 + i)) for i in range(2)]
    workers += [threading.Thread(target=never_readers, args=(addr, stop, c))]
    load = None
    if echo_load:
        load = subprocess.Popen(
            [echo_load, "-c", "20", "-r", "2000", "-d", str(seconds), "-t", "1", "--json", f"127.0.0.1:{port}"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for w in workers:
        w.start()
    samples = []
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        samples.append((round(time.monotonic() - start), rss_kib(proc.pid), fd_count(proc.pid)))
        time.sleep(5)
    stop.set()
    for w in workers:
        w.join(120)
    load_report = None
    if load:
        out, _ = load.communicate(timeout=120)
        load_report = out.strip()
        if load.returncode != 0:
            c.error(f"echo-load exit {load.returncode}")
    samples.append((round(time.monotonic() - start), rss_kib(proc.pid), fd_count(proc.pid)))
    drain_under_load(addr, proc.pid, c)
    try:
        code = proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        code = "killed"
    if code != 0:
        c.error(f"echod exit status {code}")
    rss = [s[1] for s in samples]
    fds = [s[2] for s in samples]
    print(f"soak: {seconds:.0f} s against 127.0.0.1:{port}")
    for k in sorted(c.values):
        print(f"  {k}: {c.values[k]}")
    print(f"  rss_kib: min {min(rss)} max {max(rss)} last {rss[-1]}")
    print(f"  fds: min {min(fds)} max {max(fds)} last {fds[-1]}")
    print("  samples (s, rss KiB, fds): " + " ".join(f"{t}:{r}:{f}" for t, r, f in samples))
    if load_report:
        print(f"  echo-load: {load_report}")
    print(f"  echod exit: {code}; last log lines:")
    for line in log_tail[-4:]:
        print(f"    {line}")
    print(f"  errors: {len(c.errors)}")
    for e in c.errors[:20]:
        print(f"    {e}")
    return 1 if c.errors else 0


if __name__ == "__main__":
    sys.exit(main())
