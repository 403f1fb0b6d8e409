#!/usr/bin/env python3
"""Runs xinetd's internal UDP echo on a loopback port for a test, without a
system service, and speaks the same readiness contract as echod and the
bench peers.

The configuration is tests/support/xinetd-echo.conf (read it for what
xinetd's echo-dgram does and does not do) with its `bind`, `port` and
`log_type` lines rewritten; it is written, with xinetd's logs and pid
file, to a fresh temporary directory. This script owns starting, readiness
and stopping; it does not judge the echoes (echo-load does, docs/protocol.md
"UDP echo (RFC 862)").

    python3 tests/support/xinetd_echo.py [--bind 127.0.0.1] [--port 0]

- Port 0 picks a free port (bound and released just before xinetd binds
  it; a lost race is reported as a failure to start).
- Ready means a probe datagram came back; then it prints
  "listening on IP:PORT" on stdout, flushed.
- SIGTERM or SIGINT stops xinetd and exits 0.
- Exit 1: xinetd failed to start, did not answer within --ready-timeout
  seconds, or died (its log is copied to stderr). Exit 3: xinetd is not
  installed (a test may skip then). Exit 2: usage error.

Needs root (xinetd's `user = root`). Standard library only.
"""

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
TEMPLATE = os.path.join(HERE, "xinetd-echo.conf")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bind", default="127.0.0.1", help="loopback address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="port (default 0: a free one)")
    p.add_argument("--ready-timeout", type=float, default=10.0, metavar="SECS")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = p.parse_args(argv)
    if not 0 <= args.port <= 65535:
        p.error(f"--port out of range: {args.port}")
    try:
        socket.inet_pton(family(args.bind), args.bind)
    except OSError:
        p.error(f"--bind is not a numeric IP address: {args.bind}")
    return args


def family(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def free_port(host):
    with socket.socket(family(host), socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def config(host, port, log):
    text = open(TEMPLATE).read()
    text = re.sub(r"(?m)^(\s*bind\s*=).*$", rf"\g<1> {host}", text)
    text = re.sub(r"(?m)^(\s*port\s*=).*$", rf"\g<1> {port}", text)
    text = re.sub(r"(?m)^(\s*log_type\s*=).*$", rf"\g<1> FILE {log}", text)
    if ":" in host:
        text = re.sub(r"(?m)^(\s*flags\s*=.*)$", r"\g<1> IPv6", text)
    return text


def answers(host, port, timeout):
    """True once a probe datagram comes back within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    with socket.socket(family(host), socket.SOCK_DGRAM) as s:
        s.settimeout(0.1)
        while time.monotonic() < deadline:
            try:
                s.sendto(b"xinetd_echo.py probe", (host, port))
                data, _ = s.recvfrom(64)
                if data == b"xinetd_echo.py probe":
                    return True
            except OSError:
                pass  # not bound yet (refused) or no reply yet (timeout)
    return False


def dump(path):
    try:
        sys.stderr.write(open(path).read())
    except OSError:
        pass


def main(argv):
    args = parse_args(argv)
    xinetd = shutil.which("xinetd") or next(
        (p for p in ("/usr/sbin/xinetd", "/sbin/xinetd") if os.access(p, os.X_OK)), None)
    if xinetd is None:
        print("xinetd_echo: xinetd is not installed (Debian: apt-get install xinetd)",
              file=sys.stderr)
        return 3
    work = tempfile.mkdtemp(prefix="xinetd-echo.")
    conf, pidfile = os.path.join(work, "echo.conf"), os.path.join(work, "xinetd.pid")
    main_log, svc_log = os.path.join(work, "main.log"), os.path.join(work, "service.log")
    port = args.port or free_port(args.bind)
    with open(conf, "w") as f:
        f.write(config(args.bind, port, svc_log))

    stop = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.append(True))
    child = subprocess.Popen(
        [xinetd, "-dontfork", "-f", conf, "-pidfile", pidfile, "-filelog", main_log],
        stdin=subprocess.DEVNULL)
    try:
        if not answers(args.bind, port, args.ready_timeout):
            print(f"xinetd_echo: xinetd did not answer on {args.bind}:{port} "
                  f"within {args.ready_timeout}s; its log:", file=sys.stderr)
            dump(main_log)
            return 1
        shown = f"[{args.bind}]" if ":" in args.bind else args.bind
        print(f"listening on {shown}:{port}", flush=True)
        while not stop and child.poll() is None:
            time.sleep(0.2)  # the handler only records; this notices it within 0.2 s
        if child.poll() is not None and not stop:
            print(f"xinetd_echo: xinetd exited with {child.returncode}; its log:", file=sys.stderr)
            dump(main_log)
            return 1
        return 0
    finally:
        if child.poll() is None:
            child.terminate()
            try:
                child.wait(timeout=5)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"xinetd_echo: kept {work}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
