#!/usr/bin/env python3
"""Size, idle RSS and exec-to-listening of an echod binary, against the C
epoll peer (benches/peers/c/epoll_echo.c, built here with gcc -O2 as the
bench does).

    contrib/embedded/measure.py [--runs N] BINARY

Starts the two servers alternately N times each (default 15) on
127.0.0.1:0. Exec-to-listening is the time from just before the spawn to
the moment the `listening on` line is read from the child (the same pipe
path for both, so the spawn and pipe costs cancel in the comparison). Idle
RSS is VmRSS from /proc once the line is read. Prints medians and the
verdict against the targets in docs/embedded.md (600,000 bytes, 640 KiB, no
slower than the peer). Exits 1 if the binary misses one of them.
"""
import argparse
import os
import pathlib
import re
import signal
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
LISTENING = re.compile(rb"listening on \S+:\d+")


def fail(msg):
    sys.stderr.write(f"measure.py: {msg}\n")
    sys.exit(1)


def build_peer():
    src = ROOT / "benches/peers/c/epoll_echo.c"
    out = ROOT / "target/embedded/epoll_echo"
    out.parent.mkdir(parents=True, exist_ok=True)
    if not out.exists() or out.stat().st_mtime < src.stat().st_mtime:
        r = subprocess.run(["gcc", "-O2", "-Wall", "-Wextra", "-o", str(out), str(src)])
        if r.returncode != 0:
            fail("gcc could not build the C epoll peer")
    return out


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    fail(f"no VmRSS for pid {pid}")


def start_once(cmd, stream):
    """Spawns cmd, waits for its readiness line, returns (seconds, rss KiB)."""
    kw = {"stdin": subprocess.DEVNULL, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    kw[stream] = subprocess.PIPE
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, **kw)
    pipe = proc.stdout if stream == "stdout" else proc.stderr
    try:
        while True:
            line = pipe.readline()
            if not line:
                fail(f"{cmd[0]} exited before listening")
            if LISTENING.search(line):
                elapsed = time.perf_counter() - t0
                break
        rss = rss_kib(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return elapsed, rss


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("binary")
    args = ap.parse_args()
    binary = pathlib.Path(args.binary)
    if not os.access(binary, os.X_OK):
        fail(f"no executable at {binary}")
    peer = build_peer()
    echod_cmd = [str(binary), "--listen", "127.0.0.1:0"]
    peer_cmd = [str(peer), "127.0.0.1:0"]
    e_t, e_rss, p_t, p_rss = [], [], [], []
    for _ in range(args.runs):
        t, r = start_once(echod_cmd, "stderr")
        e_t.append(t)
        e_rss.append(r)
        t, r = start_once(peer_cmd, "stdout")
        p_t.append(t)
        p_rss.append(r)
    size = binary.stat().st_size
    et, pt = statistics.median(e_t) * 1e3, statistics.median(p_t) * 1e3
    er, pr = statistics.median(e_rss), statistics.median(p_rss)
    print(f"binary: {binary}")
    print(f"size: {size} bytes (target <= 600000)")
    print(f"idle RSS: echod {er} KiB, C epoll peer {pr} KiB (target <= 640 KiB)")
    print(f"exec-to-listening, median of {args.runs} alternating starts: "
          f"echod {et:.2f} ms, C epoll peer {pt:.2f} ms (target: echod <= peer)")
    misses = []
    if size > 600_000:
        misses.append("size")
    if er > 640:
        misses.append("idle RSS")
    if et > pt:
        misses.append("start-up")
    print("verdict: " + ("meets all three" if not misses else "misses " + ", ".join(misses)))
    sys.exit(1 if misses else 0)


if __name__ == "__main__":
    main()
