#!/usr/bin/env python3
"""check_echo.py: byte-exact smoke test for one peer echo server.

Usage: check_echo.py [--connections N] [--bytes B] -- SERVER [ARGS...]

Starts SERVER with `127.0.0.1:0` appended, waits (bounded) for its
`listening on IP:PORT` line, then opens N concurrent connections. Each one
sends B random bytes in random-sized chunks from a writer thread while a
reader thread collects the echo, so neither side can deadlock on full socket
buffers. Every echo must equal what was sent. Finally sends SIGTERM and
waits (bounded) for the server to exit. Exit status 0 means all echoes were
exact; 1 means a mismatch, a timeout or a server that did not start or stop.
"""

import argparse
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time

LIMIT = 30.0  # seconds for any single wait; generous for a loaded 2-core box


def run_connection(addr, payload, results, index):
    """Echo `payload` over one connection; store (ok, detail) in results."""
    try:
        sock = socket.create_connection(addr, timeout=LIMIT)
        received = bytearray()

        def write():
            rng = random.Random(index)
            off = 0
            while off < len(payload):
                n = rng.randint(1, 65536)
                sock.sendall(payload[off:off + n])
                off += n

        writer = threading.Thread(target=write)
        writer.start()
        while len(received) < len(payload):
            chunk = sock.recv(1 << 16)
            if not chunk:
                break
            received += chunk
        writer.join(LIMIT)
        # After our FIN the server must close too: proves it handles EOF.
        sock.shutdown(socket.SHUT_WR)
        tail = sock.recv(1)
        sock.close()
        if bytes(received) != payload:
            results[index] = (False, f"echo differs: got {len(received)} of {len(payload)} bytes")
        elif tail:
            results[index] = (False, "extra bytes after the echo")
        else:
            results[index] = (True, f"{len(payload)} bytes exact, EOF after FIN")
    except Exception as err:  # any failure is this connection's verdict
        results[index] = (False, f"{type(err).__name__}: {err}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--bytes", type=int, default=1 << 20)
    parser.add_argument("server", nargs="+")
    args = parser.parse_args()

    proc = subprocess.Popen(args.server + ["127.0.0.1:0"], stdout=subprocess.PIPE, text=True)
    try:
        line_box = []
        reader = threading.Thread(target=lambda: line_box.append(proc.stdout.readline()))
        reader.start()
        reader.join(LIMIT)
        line = line_box[0] if line_box else ""
        match = re.fullmatch(r"listening on (\S+):(\d+)\n", line)
        if not match:
            print(f"FAIL no listening line within {LIMIT}s, got {line!r}")
            return 1
        addr = (match.group(1), int(match.group(2)))
        print(f"server says: {line.strip()}")

        results = [None] * args.connections
        threads = []
        start = time.monotonic()
        for i in range(args.connections):
            payload = random.Random(1000 + i).randbytes(args.bytes)
            t = threading.Thread(target=run_connection, args=(addr, payload, results, i))
            t.start()
            threads.append(t)
        for t in threads:
            t.join(LIMIT)
        elapsed = time.monotonic() - start
        ok = True
        for i, result in enumerate(results):
            verdict = result or (False, "timed out")
            ok &= verdict[0]
            print(f"connection {i}: {'ok' if verdict[0] else 'FAIL'} {verdict[1]}")
        print(f"{args.connections} connections x {args.bytes} bytes in {elapsed:.2f}s")

        proc.send_signal(signal.SIGTERM)
        status = proc.wait(LIMIT)
        print(f"after SIGTERM: exit status {status}")
        return 0 if ok else 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    sys.exit(main())
