#!/usr/bin/env python3
"""The UDP echo benchmark (issue 12): `echod --udp` beside a plain C
recvfrom/sendto loop (benches/peers/c/udp_echo.c, the lower bound) and
xinetd's internal echo-dgram (tests/support/xinetd_echo.py), in one run on
one machine, as ratios. Not a test: it asserts nothing, it measures.

    python3 benches/udp/run.py [--quick] [--rounds N] [--only throughput,rss]

What it does (docs/benchmarks.md "UDP echo"):
- Builds `target/release/echod` (cargo) and, with gcc -O2, the C server and
  the C client (benches/udp/udp_load.c) into target/udp-bench/.
- Throughput: for 64 B and 1,400 B datagrams, 1 flow and 50 flows (each a
  connected client socket with one datagram in flight, closed loop), every
  server is started fresh, pinned to CPU 0, and driven by udp_load pinned
  to CPU 1 for a warm-up and a measured window. The client counts the
  replies that match byte for byte in the window and reads the server's
  CPU at the window's start and end: utime + stime from /proc/PID/stat
  (10 ms ticks) and its threads' run time from /proc/PID/task/*/schedstat
  (ns). Rates per CPU-second and the ratios use the exact one.
  Servers alternate (echod, c, xinetd, then the reverse, --rounds times)
  so drift cancels out of the ratios; a server's figures are the sums over
  its runs. echod runs with --udp-max-rate 4294967295: the limit is
  measured by the tests, not here.
- Idle RSS: VmRSS and RssAnon of echod without and with --udp, half a
  second after its readiness lines, alternating, five times each; the
  medians. RssAnon is the heap and stacks: VmRSS also counts the pages of
  the binary and libraries that start-up happened to touch.

Prints markdown tables and the raw client lines, and writes them to
target/udp-bench/latest.md. xinetd needs root and the xinetd package; when
it is missing the run goes on without it and says so.
"""

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "target", "udp-bench")
ECHOD = os.path.join(ROOT, "target", "release", "echod")
C_SERVER = os.path.join(OUT, "udp_echo")
CLIENT = os.path.join(OUT, "udp_load")
XINETD = os.path.join(ROOT, "tests", "support", "xinetd_echo.py")
SERVER_CPU, CLIENT_CPU = 0, 1


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="0.2 s warm-up, 1 s windows")
    p.add_argument("--rounds", type=int, default=1, help="alternation rounds (each runs every server twice)")
    p.add_argument("--warmup", type=float, default=None, metavar="SECS")
    p.add_argument("--measure", type=float, default=None, metavar="SECS")
    p.add_argument("--only", default="throughput,rss", help="phases: throughput, rss")
    p.add_argument("--servers", default="echod,c,xinetd")
    args = p.parse_args(argv)
    if args.warmup is None:
        args.warmup = 0.2 if args.quick else 0.5
    if args.measure is None:
        args.measure = 1.0 if args.quick else 3.0
    args.only = set(args.only.split(","))
    args.servers = args.servers.split(",")
    return args


def build():
    os.makedirs(OUT, exist_ok=True)
    subprocess.run(["cargo", "build", "--quiet", "--release", "--bin", "echod"], cwd=ROOT, check=True)
    for src, out in (("benches/peers/c/udp_echo.c", C_SERVER), ("benches/udp/udp_load.c", CLIENT)):
        subprocess.run(["gcc", "-O2", "-Wall", "-Wextra", "-o", out, os.path.join(ROOT, src)], check=True)


def pinned(cpu):
    return lambda: os.sched_setaffinity(0, {cpu})


class Server:
    """A server child pinned to SERVER_CPU: its process, the PID whose CPU
    is measured, and the UDP address it answers on."""

    def __init__(self, kind, udp=True):
        self.kind = kind
        if kind == "echod":
            args = [ECHOD, "--listen", "127.0.0.1:0", "--log-level", "warn"]
            if udp:
                args += ["--udp", "127.0.0.1:0", "--udp-max-rate", "4294967295"]
            self.proc = subprocess.Popen(args, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                         text=True, preexec_fn=pinned(SERVER_CPU))
            want = "proto=udp" if udp else "listening on"
            stream = self.proc.stderr
        elif kind == "c":
            self.proc = subprocess.Popen([C_SERVER, "127.0.0.1:0"], stdout=subprocess.PIPE, text=True,
                                         preexec_fn=pinned(SERVER_CPU))
            want, stream = "listening on", self.proc.stdout
        elif kind == "xinetd":
            self.proc = subprocess.Popen([sys.executable, XINETD, "--bind", "127.0.0.1"],
                                         stdout=subprocess.PIPE, text=True,
                                         preexec_fn=pinned(SERVER_CPU))
            want, stream = "listening on", self.proc.stdout
        else:
            raise ValueError(kind)
        line = ""
        while want not in line:
            line = stream.readline()
            if not line:
                raise RuntimeError(f"{kind} exited before its readiness line (status {self.proc.wait()})")
        words = line.split()
        self.addr = words[words.index("on") + 1]
        self.pid = self.proc.pid
        if kind == "xinetd":
            # xinetd itself serves (an internal service, no fork): the
            # script's child.
            with open(f"/proc/{self.pid}/task/{self.pid}/children") as f:
                self.pid = int(f.read().split()[0])

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def xinetd_available():
    return os.geteuid() == 0 and any(
        os.access(p, os.X_OK) for p in ("/usr/sbin/xinetd", "/sbin/xinetd", "/usr/bin/xinetd"))


def drive(server, flows, size, args):
    out = subprocess.run(
        [CLIENT, server.addr, str(flows), str(size), str(args.warmup), str(args.measure), str(server.pid)],
        capture_output=True, text=True, check=True, preexec_fn=pinned(CLIENT_CPU)).stdout.strip()
    fields = dict(kv.split("=") for kv in out.split())
    return out, {k: float(v) for k, v in fields.items()}


def throughput(args, servers, report):
    configs = [(64, 1), (64, 50), (1400, 1), (1400, 50)]
    order = servers + servers[::-1]
    rows = []
    for size, flows in configs:
        runs = {s: [] for s in servers}
        for _ in range(args.rounds):
            for kind in order:
                server = Server(kind)
                try:
                    raw, f = drive(server, flows, size, args)
                finally:
                    server.stop()
                runs[kind].append(f)
                report.raw(f"{kind:6} {raw}")
        for kind in servers:
            fs = runs[kind]
            dgrams = sum(f["in_window"] for f in fs)
            window = sum(f["window_s"] for f in fs)
            cpu = sum(f["server_ns"] for f in fs) / 1e9
            ticks = sum(f["server_ticks"] / f["clk_tck"] for f in fs)
            rows.append(dict(size=size, flows=flows, server=kind, dps=dgrams / window,
                             per_cpu=dgrams / cpu if cpu > 0 else float("inf"),
                             per_tick_cpu=dgrams / ticks if ticks > 0 else float("inf"),
                             util=cpu / window, timeouts=sum(f["timeouts"] for f in fs),
                             late=sum(f["late"] for f in fs),
                             mismatched=sum(f["mismatched"] for f in fs)))
    report.line("### Throughput and server CPU (closed loop, one datagram in flight per flow)")
    report.line("")
    report.line("| size | flows | server | datagrams/s | server CPU | datagrams per server-CPU-s "
                "(schedstat) | (utime+stime) | echod ÷ this (per CPU-s) | echod ÷ this (/s) | "
                "timeouts | late replies |")
    report.line("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        base = next((r for r in rows if r["size"] == row["size"] and r["flows"] == row["flows"]
                     and r["server"] == "echod"), row)
        report.line(f"| {row['size']} B | {row['flows']} | {row['server']} | {row['dps']:.0f} | "
                    f"{100 * row['util']:.0f} % | {row['per_cpu']:.0f} | {row['per_tick_cpu']:.0f} | "
                    f"{base['per_cpu'] / row['per_cpu']:.2f}× | {base['dps'] / row['dps']:.2f}× | "
                    f"{row['timeouts']:.0f} | {row['late']:.0f} |")
    report.line("")
    report.line("A timeout is a flow that heard nothing for 50 ms and sent a new datagram; a "
                "late reply answers a datagram already given up on. Timeouts without late "
                "replies are datagrams lost (xinetd discards those queued behind a reply); "
                "timeouts with as many late replies are stalls (the client descheduled).")
    report.line("")


def rss_kib(pid):
    """VmRSS and RssAnon (the heap and stacks, without the binary's and
    libraries' pages) of a process, in KiB."""
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon"):
                fields[key] = int(value.split()[0])
    return fields["VmRSS"], fields["RssAnon"]


def idle_rss(report):
    samples = {False: [], True: []}
    for _ in range(5):
        for udp in (False, True):
            server = Server("echod", udp=udp)
            try:
                time.sleep(0.5)  # settle: nothing is measured until start-up is over
                samples[udp].append(rss_kib(server.pid))
            finally:
                server.stop()
    report.line("### Idle RSS")
    report.line("")
    report.line("| echod | VmRSS KiB (median of 5) | RssAnon KiB (median) | VmRSS samples |")
    report.line("|---|---:|---:|---|")
    for udp, label in ((False, "`--listen 127.0.0.1:0`"), (True, "`--listen 127.0.0.1:0 --udp 127.0.0.1:0`")):
        rss = [r for r, _ in samples[udp]]
        anon = [a for _, a in samples[udp]]
        report.line(f"| {label} | {statistics.median(rss):.0f} | {statistics.median(anon):.0f} | {rss} |")
    report.line("")


class Report:
    def __init__(self):
        self.lines, self.raws = [], []

    def line(self, text):
        print(text, flush=True)
        self.lines.append(text)

    def raw(self, text):
        print(text, file=sys.stderr, flush=True)
        self.raws.append(text)

    def write(self, header):
        path = os.path.join(OUT, "latest.md")
        with open(path, "w") as f:
            f.write("\n".join([header, ""] + self.lines + ["#### Raw output", "", "```text"]
                              + self.raws + ["```", ""]))
        print(f"written: {path}")


def main(argv):
    args = parse_args(argv)
    if os.cpu_count() < 2:
        print("udp bench: needs 2 CPUs (server on CPU 0, client on CPU 1)", file=sys.stderr)
        return 1
    os.sched_setaffinity(0, {CLIENT_CPU})
    build()
    servers = list(args.servers)
    if "xinetd" in servers and not xinetd_available():
        print("udp bench: xinetd skipped (needs root and the xinetd package: apt-get install -y xinetd)",
              file=sys.stderr)
        servers.remove("xinetd")
    uname = os.uname()
    header = (f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: {os.cpu_count()} CPUs, "
              f"{uname.sysname} {uname.release}; servers pinned to CPU {SERVER_CPU}, udp_load to CPU "
              f"{CLIENT_CPU}; warm-up {args.warmup} s, window {args.measure} s, {args.rounds} round(s); "
              f"load average before: {os.getloadavg()[0]:.2f}")
    report = Report()
    report.line(header)
    report.line("")
    if "throughput" in args.only:
        throughput(args, servers, report)
    if "rss" in args.only:
        idle_rss(report)
    report.write(header)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
