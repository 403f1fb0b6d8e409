#!/usr/bin/env python3
"""A scripted UDP reflector: an RFC 862 echo that misbehaves on purpose.

Used by echo-load's UDP tests (docs/protocol.md "UDP echo (RFC 862)") to
check that the loss, duplicate, reordering and jitter figures echo-load
reports match what the path really did. It owns nothing of echod and
applies none of echod's guards. Everything it does is decided by the
datagram's arrival index (1, 2, 3, ... counted over the whole run), never
by a clock or a random number, so a test can assert exact counts.

For each datagram i, in this order:

  --drop-every K       i % K == 0: no reply. Over n datagrams,
                       lost = n // K.
  --duplicate-every M  i % M == 0 and not dropped: two replies.
                       duplicates = #{i <= n : i % M == 0 and i % K != 0}.
  --hold-every H       i % H == 0 and not dropped: the reply is held back
  --hold-for N         and sent right after the replies to the next N
                       datagrams received (dropped ones count too, so the
                       distance stays N), i.e. datagram i arrives after
                       i+N. One datagram is held at a time (H > N). A
                       datagram still held when nothing has arrived for
                       --flush-after seconds is sent then, so the tail of a
                       run is not lost.
  --delay D[,D2,...]   the reply to datagram i leaves D[(i-1) % len]
                       seconds after it arrived (default 0). One value is a
                       fixed delay, which keeps the order; alternating
                       values give a known jitter (RFC 3550 J converges to
                       |D2 - D1| when datagrams are sent evenly and slower
                       than the difference, so nothing overtakes).

Replies with equal departure times leave in the order they were scheduled.

Prints "listening on IP:PORT" on stdout (the real port, flushed) once
ready; on SIGTERM or SIGINT it prints one summary line on stderr,
"reflector: received=.. replies=.. dropped=.. duplicated=.. held=.. send_errors=..",
and exits 0. Usage errors exit 2. Standard library only.

    python3 tests/support/reflector.py --drop-every 10 --duplicate-every 7
"""

import argparse
import heapq
import select
import signal
import socket
import sys
import time


def positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text}")
    return value


def delays(text):
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of seconds: {text}")
    if any(v < 0 or v != v for v in values):
        raise argparse.ArgumentTypeError(f"delays must be >= 0: {text}")
    return values


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bind", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="port (default 0: any free port)")
    p.add_argument("--drop-every", type=positive_int, metavar="K")
    p.add_argument("--duplicate-every", type=positive_int, metavar="M")
    p.add_argument("--hold-every", type=positive_int, metavar="H")
    p.add_argument("--hold-for", type=positive_int, metavar="N", default=1)
    p.add_argument("--flush-after", type=float, default=1.0, metavar="SECS")
    p.add_argument("--delay", type=delays, default=[0.0], metavar="D[,D2,...]")
    args = p.parse_args(argv)
    if args.hold_every is not None and args.hold_every <= args.hold_for:
        p.error("--hold-every must be greater than --hold-for (one datagram held at a time)")
    if not 0 <= args.port <= 65535:
        p.error(f"--port out of range: {args.port}")
    return args


class Reflector:
    def __init__(self, args):
        self.args = args
        family = socket.AF_INET6 if ":" in args.bind else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind((args.bind, args.port))
        self.sock.setblocking(False)
        self.queue = []  # (due, order, payload, addr)
        self.order = 0  # tie-break: equal due times leave in scheduling order
        self.held = None  # [payload, addr, copies, index, remaining]
        self.last_arrival = time.monotonic()
        self.counts = dict(received=0, replies=0, dropped=0, duplicated=0, held=0, send_errors=0)

    def announce(self):
        host, port = self.sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        print(f"listening on {shown}:{port}", flush=True)

    def schedule(self, payload, addr, copies, index, now):
        delay = self.args.delay[(index - 1) % len(self.args.delay)]
        for _ in range(copies):
            heapq.heappush(self.queue, (now + delay, self.order, payload, addr))
            self.order += 1

    def on_datagram(self, payload, addr, now):
        a = self.args
        self.counts["received"] += 1
        i = self.counts["received"]
        self.last_arrival = now
        if a.drop_every and i % a.drop_every == 0:
            self.counts["dropped"] += 1
        else:
            copies = 1
            if a.duplicate_every and i % a.duplicate_every == 0:
                copies = 2
                self.counts["duplicated"] += 1
            if a.hold_every and i % a.hold_every == 0 and self.held is None:
                self.counts["held"] += 1
                self.held = [payload, addr, copies, i, a.hold_for]
                return
            self.schedule(payload, addr, copies, i, now)
        # The held datagram waits for N more arrivals, dropped ones included.
        if self.held is not None and self.held[3] != i:
            self.held[4] -= 1
            if self.held[4] == 0:
                self.release(now)

    def release(self, now):
        payload, addr, copies, index, _ = self.held
        self.held = None
        self.schedule(payload, addr, copies, index, now)

    def send_due(self, now):
        while self.queue and self.queue[0][0] <= now:
            _, _, payload, addr = heapq.heappop(self.queue)
            try:
                self.sock.sendto(payload, addr)
                self.counts["replies"] += 1
            except OSError:
                self.counts["send_errors"] += 1

    def timeout(self, now):
        deadlines = []
        if self.queue:
            deadlines.append(self.queue[0][0])
        if self.held is not None:
            deadlines.append(self.last_arrival + self.args.flush_after)
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - now)

    def run(self):
        # select() is retried after a signal (PEP 475), so the handler alone
        # would not end a wait without a timeout: the signal also writes a
        # byte to a pipe that select() watches.
        stop = []
        wake_r, wake_w = socket.socketpair()
        wake_w.setblocking(False)
        signal.set_wakeup_fd(wake_w.fileno())
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.append(True))
        self.announce()
        while not stop:
            timeout = self.timeout(time.monotonic())
            readable, _, _ = select.select([self.sock, wake_r], [], [], timeout)
            now = time.monotonic()
            if self.sock in readable:
                while True:
                    try:
                        payload, addr = self.sock.recvfrom(65535)
                    except (BlockingIOError, InterruptedError):
                        break
                    self.on_datagram(payload, addr, now)
            if self.held is not None and now - self.last_arrival >= self.args.flush_after:
                self.release(now)
            self.send_due(now)
        summary = " ".join(f"{k}={v}" for k, v in self.counts.items())
        print(f"reflector: {summary}", file=sys.stderr, flush=True)


def main(argv):
    args = parse_args(argv)
    try:
        reflector = Reflector(args)
    except OSError as err:
        print(f"reflector: cannot bind {args.bind}:{args.port}: {err.strerror}", file=sys.stderr)
        return 1
    reflector.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
