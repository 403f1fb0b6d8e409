#!/usr/bin/env python3
"""compare.py: interleaved blocking-client rounds against the peer servers.

Usage: compare.py [--rounds N] [--pinned] [-c CONNECTIONS] [-l LENGTH] [-t SECONDS] [SERVER ...]

Run from anywhere after building (see README.md). With no SERVER, it compares
the four peers in target/. Each round runs every server once, in turn, so
drift on a shared machine spreads across all of them instead of landing on
one. Before each run it waits (at most 90 s) for the machine to be idle. For
each run it prints the client's rps, the server's CPU time and "foreign" CPU:
busy time in /proc/stat that neither the server nor the client accounts for.
That covers other processes and softirq work; the client's CPU comes from
wait4, so it counts all its threads. A high figure marks a run
disturbed by something else. The summary gives medians, including server CPU
per request, which is less sensitive to sharing than rps.

--pinned runs the server under `taskset -c 1` and the client with `--pin 0`.
Every run is bounded: the client stops after SECONDS, and each server is
sent SIGTERM after its run.
"""

import argparse
import collections
import json
import os
import re
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_SERVERS = [
    "target/epoll_echo",
    "target/release/mio-echo",
    "target/release/tokio-ct-echo",
    "target/release/tokio-mt-echo",
]
HZ = os.sysconf("SC_CLK_TCK")


def busy_ticks():
    """Machine-wide busy ticks: everything but idle and iowait."""
    fields = list(map(int, open("/proc/stat").readline().split()[1:]))
    return sum(fields) - fields[3] - fields[4]


def process_ticks(pid):
    """User + system ticks of every live thread of pid (the servers' threads live until SIGTERM)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = open(f"/proc/{pid}/task/{tid}/stat").read().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += int(stat[11]) + int(stat[12])
    return total


def wait_idle(limit=90.0):
    """True once a 1 s sample shows under 15% of one core busy; False at the limit."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        before = busy_ticks()
        time.sleep(1)
        if (busy_ticks() - before) / HZ < 0.15:
            return True
    return False


def run_once(server, args):
    """One server, one client run; returns a dict of figures."""
    idle = wait_idle()
    cmd = (["taskset", "-c", "1"] if args.pinned else []) + [server, "127.0.0.1:0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        match = re.fullmatch(r"listening on (\S+)\n", line)
        if not match:
            raise RuntimeError(f"{server}: no listening line, got {line!r}")
        client = [os.path.join(HERE, "target/release/blocking-client"),
                  "-a", match.group(1), "-c", str(args.connections),
                  "-l", str(args.length), "-t", str(args.seconds)]
        if args.pinned:
            client += ["--pin", "0"]
        busy_before, server_before = busy_ticks(), process_ticks(proc.pid)
        child = subprocess.Popen(client, stdout=subprocess.PIPE, text=True)
        # wait4 gives the client's CPU time summed over all its threads, even
        # those that have already exited. Its one output line fits in the pipe.
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        client_ticks = (usage.ru_utime + usage.ru_stime) * HZ
        out = child.stdout.read().strip()
        server_ticks = process_ticks(proc.pid) - server_before
        busy = busy_ticks() - busy_before
        if child.returncode != 0:
            raise RuntimeError(f"blocking-client exited {child.returncode} against {server}")
        report = json.loads(out)
        return {
            "rps": report["rps"],
            "requests": report["requests"],
            "seconds": report["seconds"],
            "server_cpu": server_ticks / HZ,
            "client_cpu": client_ticks / HZ,
            "foreign_cpu": (busy - server_ticks - client_ticks) / HZ,
            "idle_before": idle,
        }
    finally:
        proc.terminate()
        proc.wait()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pinned", action="store_true")
    parser.add_argument("-c", "--connections", type=int, default=50)
    parser.add_argument("-l", "--length", type=int, default=64)
    parser.add_argument("-t", "--seconds", type=float, default=3)
    parser.add_argument("servers", nargs="*")
    args = parser.parse_args()
    servers = args.servers or [os.path.join(HERE, s) for s in DEFAULT_SERVERS]

    results = collections.defaultdict(list)
    for round_no in range(1, args.rounds + 1):
        for server in servers:
            r = run_once(server, args)
            results[server].append(r)
            print(f"round={round_no} {os.path.basename(server):14s} rps={r['rps']:>9.1f} "
                  f"requests={r['requests']} seconds={r['seconds']} server_cpu={r['server_cpu']:.2f}s "
                  f"client_cpu={r['client_cpu']:.2f}s foreign_cpu~{r['foreign_cpu']:.2f}s "
                  f"idle_before={r['idle_before']}", flush=True)
    print("summary (medians):")
    for server, runs in results.items():
        rps = statistics.median(r["rps"] for r in runs)
        per_request = statistics.median(r["server_cpu"] / max(r["requests"], 1) * 1e6 for r in runs)
        print(f"  {os.path.basename(server):14s} rps={rps:9.1f} server_cpu_per_request={per_request:.2f}us "
              f"runs={[round(r['rps']) for r in runs]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
