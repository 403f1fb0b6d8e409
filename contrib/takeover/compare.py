#!/usr/bin/env python3
"""Hand-run comparison of three ways to replace a running echod under a
connect loop (docs/operations.md "Replacing a running echod"):

  takeover    the new echod takes the sockets over (--take-over), the old
              one drains;
  reuse-port  the new echod binds the same port (--reuse-port), then the old
              one gets SIGHUP;
  activation  this script holds the listening socket, as systemd does, and
              passes it as fd 3 (LISTEN_FDS) to each new echod after the old
              one drained and exited.

Client threads connect, send one byte, read the echo (or the notice: an
instance accepted it while draining, not a failure) and close, in a loop.
Bounded: --rounds hand-overs per method, each after at least --between
connects; every wait has a limit. Loopback only.

  python3 contrib/takeover/compare.py --echod target/release/echod --rounds 200
"""

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

LIMIT = 20.0


class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.counts = dict(attempts=0, echoed=0, drained=0, refused=0, reset=0,
                           eof=0, timeout=0, other=0)
        self.worst = 0.0

    def add(self, key, took):
        with self.lock:
            self.counts["attempts"] += 1
            self.counts[key] += 1
            self.worst = max(self.worst, took)

    def attempts(self):
        with self.lock:
            return self.counts["attempts"]

    def failures(self):
        c = self.counts
        return c["refused"] + c["reset"] + c["eof"] + c["timeout"] + c["other"]


def attempt(port, tally):
    t0 = time.monotonic()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.sendall(b"x")
            got = s.recv(16)
    except ConnectionRefusedError:
        return tally.add("refused", time.monotonic() - t0)
    except (ConnectionResetError, BrokenPipeError, ConnectionAbortedError):
        return tally.add("reset", time.monotonic() - t0)
    except (socket.timeout, TimeoutError):
        return tally.add("timeout", time.monotonic() - t0)
    except OSError:
        return tally.add("other", time.monotonic() - t0)
    took = time.monotonic() - t0
    if not got:
        tally.add("eof", took)
    elif got.startswith(b"S") or got.endswith(b"SHUTDOWN"):
        tally.add("drained", took)
    elif got.startswith(b"x"):
        tally.add("echoed", took)
    else:
        tally.add("other", took)


class Instance:
    """One echod child; its stderr lines are collected by a thread."""

    def __init__(self, cmd, pass_fd=None, env=None):
        kwargs = {}
        if pass_fd is not None:
            def to_fd3():
                if pass_fd == 3:
                    os.set_inheritable(3, True)
                else:
                    os.dup2(pass_fd, 3)  # the copy has no FD_CLOEXEC
            # close_fds would close fd 3 after preexec_fn; every other
            # descriptor of this script is close-on-exec anyway (PEP 446).
            kwargs.update(preexec_fn=to_fd3, close_fds=False)
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, env=env, **kwargs)
        self.lines = []
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for raw in self.proc.stderr:
            with self.cond:
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))
                self.cond.notify_all()
        with self.cond:
            self.lines.append(None)
            self.cond.notify_all()

    def wait_line(self, pattern):
        deadline = time.monotonic() + LIMIT
        with self.cond:
            while True:
                for line in self.lines:
                    if line is None:
                        sys.exit(f"echod exited before {pattern!r}:\n" + self.log())
                    if pattern in line:
                        return line
                left = deadline - time.monotonic()
                if left <= 0:
                    sys.exit(f"no {pattern!r} within {LIMIT} s:\n" + self.log())
                self.cond.wait(left)

    def log(self):
        return "\n".join(l for l in self.lines if l is not None)

    def wait_exit(self):
        code = self.proc.wait(LIMIT)
        if code != 0:
            sys.exit(f"echod exited {code}:\n" + self.log())

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(LIMIT)


def port_of(line):
    return int(line.split("listening on ")[1].split()[0].rsplit(":", 1)[1])


def run(method, args):
    echod = args.echod
    common = ["--drain-timeout", "1", "--log-level", "info"]
    tmp = tempfile.mkdtemp(prefix="echod-cmp-", dir="/tmp")
    sock = os.path.join(tmp, "h.sock")
    holder = None
    if method == "takeover":
        first = Instance([echod, "--listen", "127.0.0.1:0", "--handover-socket", sock] + common)
    elif method == "reuse-port":
        first = Instance([echod, "--listen", "127.0.0.1:0", "--reuse-port"] + common)
    else:
        holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        holder.bind(("127.0.0.1", 0))
        holder.listen(1024)

    def activated():
        env = dict(os.environ, LISTEN_FDS="1")
        env.pop("LISTEN_FDNAMES", None)
        cmd = ["sh", "-c", 'export LISTEN_PID=$$; exec "$0" "$@"', echod,
               "--listen", "127.0.0.1:1"] + common
        return Instance(cmd, pass_fd=holder.fileno(), env=env)

    if holder is not None:
        first = activated()
    port = port_of(first.wait_line("listening on"))
    tally = Tally()
    stop = threading.Event()

    def client():
        while not stop.is_set():
            attempt(port, tally)

    threads = [threading.Thread(target=client) for _ in range(args.clients)]
    for t in threads:
        t.start()
    current = first
    started = time.monotonic()
    try:
        for _ in range(args.rounds):
            mark = tally.attempts()
            deadline = time.monotonic() + LIMIT
            while tally.attempts() < mark + args.between:
                if time.monotonic() > deadline:
                    sys.exit("the clients stalled")
                time.sleep(0.002)
            if method == "takeover":
                new = Instance([echod, "--listen", f"127.0.0.1:{port}", "--take-over", sock,
                                "--handover-socket", sock] + common)
                new.wait_line("listening on")
                current.wait_exit()
            elif method == "reuse-port":
                new = Instance([echod, "--listen", f"127.0.0.1:{port}", "--reuse-port"] + common)
                new.wait_line("listening on")
                current.proc.send_signal(signal.SIGHUP)
                current.wait_exit()
            else:
                current.proc.send_signal(signal.SIGTERM)
                current.wait_exit()
                new = activated()
                new.wait_line("listening on")
            current = new
        mark = tally.attempts()
        while tally.attempts() < mark + args.between:
            time.sleep(0.002)
    finally:
        stop.set()
        for t in threads:
            t.join()
        current.stop()
        if holder is not None:
            holder.close()
        shutil.rmtree(tmp, ignore_errors=True)
    c = tally.counts
    took = time.monotonic() - started
    print(f"| {method} | {args.rounds} | {c['attempts']} | {tally.failures()} | "
          f"{c['refused']} | {c['reset']} | {c['eof'] + c['timeout'] + c['other']} | "
          f"{c['drained']} | {tally.worst * 1000:.1f} | {took:.0f} |", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--echod", default="target/release/echod")
    p.add_argument("--rounds", type=int, default=200, help="hand-overs per method")
    p.add_argument("--between", type=int, default=200,
                   help="connects before each hand-over (and after the last)")
    p.add_argument("--clients", type=int, default=4, help="client threads")
    p.add_argument("--methods", default="takeover,reuse-port,activation")
    args = p.parse_args()
    print("| method | hand-overs | connects | failed | refused | reset | other | "
          "drained (notice, not a failure) | slowest connect+echo (ms) | seconds |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for method in args.methods.split(","):
        run(method, args)


if __name__ == "__main__":
    main()
