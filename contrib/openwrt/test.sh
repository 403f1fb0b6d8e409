#!/usr/bin/env bash
# Runs the procd init script (echod/files/echod.init) against a mock procd
# (mock-procd.sh) and checks:
#   1. the instance it builds from the shipped /etc/config/echod: the exact
#      command line (with --log-timestamps off: logd stamps lines),
#      term_timeout longer than the drain, the limits, and no reload_signal;
#   2. that the command line it builds from a test config really runs: the
#      host's echod is started with it, through echod-procd as procd would;
#   3. `upgrade` (SIGUSR2 to echod-procd, what procd_send_signal delivers):
#      a new echod takes the listening socket over while a client connects
#      in a loop; no connect fails, the old echod drains its own connection
#      (the notice, then end-of-stream) and exits, echod-procd stays;
#   4. one SIGTERM (what procd sends) drains the echod that now serves
#      within term_timeout, even with a connection that never leaves (it
#      is closed at the drain deadline), and echod-procd exits 0.
#
#   contrib/openwrt/test.sh
#
# ECHOD_BIN names the host binary to run; by default target/release/echod,
# built with cargo if it is not there.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
HERE="$ROOT/contrib/openwrt"
die() { echo "openwrt/test.sh: $*" >&2; exit 1; }

bin=${ECHOD_BIN:-$ROOT/target/release/echod}
if [ ! -x "$bin" ]; then
    [ -z "${ECHOD_BIN:-}" ] || die "ECHOD_BIN=$bin is not an executable"
    (cd "$ROOT" && cargo build --quiet --locked --release --bin echod) ||
        die "cargo build --release --bin echod failed"
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/shipped" "$work/test"
cp "$HERE/echod/files/echod.config" "$work/shipped/echod"
cat >"$work/test/echod" <<'UCI'
config echod 'main'
	option enabled '1'
	list listen '127.0.0.1:0'
	option drain_timeout '1.5'
	option max_connections '100'
	option nofile '1024'
	option log_level 'info'

config echod 'off'
	option enabled '0'
	list listen '127.0.0.1:0'
UCI

# The init script under POSIX sh (busybox ash on OpenWrt; dash here), its
# run directory recorded rather than created.
run_init() {
    UCI_CONFIG_DIR="$1" sh -euc '. "$1"; . "$2"
        prepare_run_dir() { procd_print prepare_run_dir "$@"; }
        start_service; service_triggers; upgrade' \
        sh "$HERE/mock-procd.sh" "$HERE/echod/files/echod.init"
}
run_init "$work/shipped" >"$work/shipped.calls" || die "the init script failed on the shipped config"
run_init "$work/test" >"$work/test.calls" || die "the init script failed on the test config"

mkdir -p "$work/run"
exec python3 - "$work/shipped.calls" "$work/test.calls" "$bin" "$HERE/echod/files/echod-procd" "$work/run" <<'PY'
import os, signal, socket, subprocess, sys, threading, time, re

def fail(msg):
    sys.stderr.write(f"openwrt/test.sh: {msg}\n")
    sys.exit(1)

def parse(path):
    """procd calls -> list of instances: {param: [values]}, and triggers."""
    calls, cur = [], None
    for line in open(path):
        line = line.rstrip("\n")
        if line.startswith("\t"):
            cur[1].append(line[1:])
        else:
            cur = (line, [])
            calls.append(cur)
    instances, triggers, inst = [], [], None
    other = []
    for name, args in calls:
        if name in ("prepare_run_dir", "send_signal"):
            other.append([name] + args)
        elif name == "open_instance":
            inst = {"name": args[0] if args else ""}
        elif name == "set_param":
            inst[args[0]] = args[1:]
        elif name == "append_param":
            inst.setdefault(args[0], []).extend(args[1:])
        elif name == "close_instance":
            instances.append(inst)
            inst = None
        elif name == "add_reload_trigger":
            triggers.append(args)
    return instances, triggers, other

# 1. The shipped config.
instances, triggers, other = parse(sys.argv[1])
if len(instances) != 1:
    fail(f"shipped config: {len(instances)} instances, expected 1")
inst = instances[0]
want = ["/usr/libexec/echod-procd", "/var/run/echod/main/handover.sock",
        "/var/run/echod/main/echod.pid",
        "/usr/sbin/echod", "--listen", "0.0.0.0:9999", "--drain-timeout", "5",
        "--max-connections", "1000", "--max-pending", "65536", "--backlog", "128",
        "--log-level", "info", "--log-timestamps", "off"]
if inst.get("command") != want:
    fail(f"shipped config: command {inst.get('command')}, expected {want}")
checks = {"term_timeout": ["10"], "limits": ["nofile=2048 2048"], "user": ["nobody"],
          "stdout": ["1"], "stderr": ["1"]}
for key, value in checks.items():
    if inst.get(key) != value:
        fail(f"shipped config: {key} {inst.get(key)}, expected {value}")
if "reload_signal" in inst:
    fail("shipped config: reload_signal is set; a SIGHUP would drain echod")
if ["echod"] not in triggers:
    fail("no reload trigger on the echod config")
want = [["prepare_run_dir", "/var/run/echod/main", "nobody"],
        ["send_signal", "echod", "main", "USR2"]]
if other != want:
    fail(f"shipped config: run directory and upgrade calls {other}, expected {want}")

# 2. The test config: one enabled instance; run its command line for real.
instances, _, other = parse(sys.argv[2])
if other != [["prepare_run_dir", "/var/run/echod/main", ""],
             ["send_signal", "echod", "main", "USR2"]]:
    fail(f"test config: run directory and upgrade calls {other}: the disabled instance is left alone")
if [i["name"] for i in instances] != ["main"]:
    fail(f"test config: instances {[i['name'] for i in instances]}, expected only 'main'")
inst = instances[0]
cmd = inst["command"]
want = ["/usr/libexec/echod-procd", "/var/run/echod/main/handover.sock",
        "/var/run/echod/main/echod.pid", "/usr/sbin/echod", "--listen", "127.0.0.1:0",
        "--drain-timeout", "1.5", "--max-connections", "100", "--log-level", "info", "--log-timestamps", "off"]
if cmd != want:
    fail(f"test config: command {cmd}, expected {want}")
term_timeout = int(inst["term_timeout"][0])
if term_timeout != 7:
    fail(f"test config: term_timeout {term_timeout}, expected 7 (1.5 s rounded up + 5)")

# procd runs the command; here the helper and the binary are the
# repository's and the host's, and the run directory is a temporary one.
run_dir = sys.argv[5]
sock, pidfile = f"{run_dir}/handover.sock", f"{run_dir}/echod.pid"
proc = subprocess.Popen(["sh", sys.argv[4], sock, pidfile, sys.argv[3]] + cmd[4:],
                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                        stderr=subprocess.PIPE)
lines, lines_lock = [], threading.Lock()
def read_stderr():
    for raw in proc.stderr:
        with lines_lock:
            lines.append(raw.decode(errors="replace").rstrip("\n"))
threading.Thread(target=read_stderr, daemon=True).start()

def log():
    with lines_lock:
        return "\n".join(lines)

def wait_for(what, cond, limit=30):
    deadline = time.monotonic() + limit
    while not cond():
        if time.monotonic() > deadline:
            fail(f"no {what} within {limit} s; log:\n{log()}")
        time.sleep(0.02)

def read_pid():
    try:
        return int(open(pidfile).read())
    except (OSError, ValueError):
        return None

def gone(pid):
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state == "Z"

def echo(s, data):
    s.sendall(data)
    got = b""
    while len(got) < len(data):
        chunk = s.recv(65536)
        if not chunk:
            fail("EOF before the echo")
        got += chunk
    if got != data:
        fail("echo differs from what was sent")

def read_to_eof(s):
    got = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            return got
        got += chunk

first = second = None
try:
    port = None
    def listening():
        global port
        with lines_lock:
            for line in lines:
                m = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
                if m:
                    port = int(m.group(1))
                    # --log-timestamps off: the line begins with its level, logd adds the time.
                    if not line.startswith("INFO "):
                        fail(f"log line {line.strip()!r} does not begin with its level (--log-timestamps off)")
        return port is not None
    wait_for("'listening on' line", listening)
    first = read_pid()
    if first is None or gone(first):
        fail(f"no pid file naming a running echod at {pidfile}")

    # 3. upgrade, under a connect loop.
    held = socket.create_connection(("127.0.0.1", port), timeout=20)
    echo(held, b"held")
    stop, tally = threading.Event(), {"attempts": 0, "failed": []}
    def connect_loop():
        while not stop.is_set():
            tally["attempts"] += 1
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
                    c.sendall(b"x")
                    got = c.recv(16)
                    if not (got.startswith(b"x") or got.endswith(b"SHUTDOWN") or got.startswith(b"S")):
                        tally["failed"].append(repr(got))
            except OSError as e:
                tally["failed"].append(repr(e))
    loop = threading.Thread(target=connect_loop)
    loop.start()
    wait_for("connects before the upgrade", lambda: tally["attempts"] >= 100)
    proc.send_signal(signal.SIGUSR2)  # what procd_send_signal echod main USR2 delivers
    wait_for("pid file naming the new echod", lambda: read_pid() not in (None, first))
    second = read_pid()
    if read_to_eof(held) != b"SHUTDOWN":
        fail("the old echod's connection did not get the notice then EOF")
    held.close()
    wait_for("the old echod to exit", lambda: gone(first))
    at_exit = tally["attempts"]
    wait_for("connects after the upgrade", lambda: tally["attempts"] >= at_exit + 100)
    stop.set()
    loop.join()
    if tally["failed"]:
        fail(f"{len(tally['failed'])} of {tally['attempts']} connects failed during the upgrade: {tally['failed'][:5]}")
    if proc.poll() is not None or gone(second):
        fail(f"echod-procd or the new echod exited after the upgrade; log:\n{log()}")
    upgraded = tally["attempts"]

    # 4. Stop: one SIGTERM to echod-procd, passed on to the new echod.
    payload = bytes(i % 251 for i in range(64 * 1024))
    leaving = socket.create_connection(("127.0.0.1", port), timeout=20)
    staying = socket.create_connection(("127.0.0.1", port), timeout=20)
    echo(leaving, payload)
    echo(staying, b"stay")
    # procd stops an instance with one SIGTERM, then SIGKILL at term_timeout.
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    got = read_to_eof(leaving)
    if got != b"SHUTDOWN":
        fail(f"the leaving client got {got[:40]!r}, expected the notice then EOF")
    leaving.close()
    # `staying` reads nothing and never closes: echod closes it at the deadline.
    try:
        code = proc.wait(term_timeout)
    except subprocess.TimeoutExpired:
        fail(f"echod-procd still running {term_timeout} s (term_timeout) after SIGTERM: procd would SIGKILL it")
    took = time.monotonic() - t0
    if code != 0:
        fail(f"echod-procd exited {code} after SIGTERM, expected 0; log:\n{log()}")
    rest = read_to_eof(staying)
    if rest != b"SHUTDOWN":
        fail(f"the staying client got {rest[:40]!r}, expected the notice then EOF")
finally:
    if proc.poll() is None:
        proc.kill()
        proc.wait()
        # echod-procd's children outlive it: stop whichever echod is left.
        for pid in {first, second, read_pid()} - {None}:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
print(f"openwrt/test.sh: ok: command line and term_timeout as configured; upgrade by take-over "
      f"with {upgraded} connects and none failed; one SIGTERM drained echod in {took:.1f} s "
      f"(drain timeout 1.5 s, term_timeout {term_timeout} s), exit 0")
PY
