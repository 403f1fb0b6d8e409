#!/usr/bin/env bash
# Runs the procd init script (echod/files/echod.init) against a mock procd
# (mock-procd.sh) and checks:
#   1. the instance it builds from the shipped /etc/config/echod: the exact
#      command line (with --log-timestamps off: logd stamps lines),
#      term_timeout longer than the drain, the limits, and no reload_signal;
#   2. that the command line it builds from a test config really runs: the
#      host's echod is started with it, and one SIGTERM (what procd sends)
#      drains it within term_timeout, even with a connection that never
#      leaves (it is closed at the drain deadline).
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

# The init script under POSIX sh (busybox ash on OpenWrt; dash here).
run_init() {
    UCI_CONFIG_DIR="$1" sh -euc '. "$1"; . "$2"; start_service; service_triggers' \
        sh "$HERE/mock-procd.sh" "$HERE/echod/files/echod.init"
}
run_init "$work/shipped" >"$work/shipped.calls" || die "the init script failed on the shipped config"
run_init "$work/test" >"$work/test.calls" || die "the init script failed on the test config"

exec python3 - "$work/shipped.calls" "$work/test.calls" "$bin" <<'PY'
import signal, socket, subprocess, sys, time, re

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
    for name, args in calls:
        if name == "open_instance":
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
    return instances, triggers

# 1. The shipped config.
instances, triggers = parse(sys.argv[1])
if len(instances) != 1:
    fail(f"shipped config: {len(instances)} instances, expected 1")
inst = instances[0]
want = ["/usr/sbin/echod", "--listen", "0.0.0.0:9999", "--drain-timeout", "5",
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

# 2. The test config: one enabled instance; run its command line for real.
instances, _ = parse(sys.argv[2])
if [i["name"] for i in instances] != ["main"]:
    fail(f"test config: instances {[i['name'] for i in instances]}, expected only 'main'")
inst = instances[0]
cmd = inst["command"]
want = ["/usr/sbin/echod", "--listen", "127.0.0.1:0", "--drain-timeout", "1.5",
        "--max-connections", "100", "--log-level", "info", "--log-timestamps", "off"]
if cmd != want:
    fail(f"test config: command {cmd}, expected {want}")
term_timeout = int(inst["term_timeout"][0])
if term_timeout != 7:
    fail(f"test config: term_timeout {term_timeout}, expected 7 (1.5 s rounded up + 5)")

proc = subprocess.Popen([sys.argv[3]] + cmd[1:], stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
try:
    port = None
    deadline = time.monotonic() + 30
    while port is None:
        line = proc.stderr.readline().decode(errors="replace")
        if not line or time.monotonic() > deadline:
            fail("echod did not log 'listening on'")
        m = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        if m:
            port = int(m.group(1))
            # --log-timestamps off: the line begins with its level, logd adds the time.
            if not line.startswith("INFO "):
                fail(f"log line {line.strip()!r} does not begin with its level (--log-timestamps off)")
    payload = bytes(i % 251 for i in range(64 * 1024))
    leaving = socket.create_connection(("127.0.0.1", port), timeout=20)
    staying = socket.create_connection(("127.0.0.1", port), timeout=20)
    for s, data in ((leaving, payload), (staying, b"stay")):
        s.sendall(data)
        got = b""
        while len(got) < len(data):
            chunk = s.recv(65536)
            if not chunk:
                fail("EOF before the echo")
            got += chunk
        if got != data:
            fail("echo differs from what was sent")
    # procd stops an instance with one SIGTERM, then SIGKILL at term_timeout.
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    got = b""
    while True:
        chunk = leaving.recv(65536)
        if not chunk:
            break
        got += chunk
    if got != b"SHUTDOWN":
        fail(f"the leaving client got {got[:40]!r}, expected the notice then EOF")
    leaving.close()
    # `staying` reads nothing and never closes: echod closes it at the deadline.
    try:
        code = proc.wait(term_timeout)
    except subprocess.TimeoutExpired:
        fail(f"echod still running {term_timeout} s (term_timeout) after SIGTERM: procd would SIGKILL it")
    took = time.monotonic() - t0
    if code != 0:
        fail(f"echod exited {code} after SIGTERM, expected 0")
    rest = b""
    while True:
        chunk = staying.recv(65536)
        if not chunk:
            break
        rest += chunk
    if rest != b"SHUTDOWN":
        fail(f"the staying client got {rest[:40]!r}, expected the notice then EOF")
finally:
    if proc.poll() is None:
        proc.kill()
        proc.wait()
print(f"openwrt/test.sh: ok: command line and term_timeout as configured; one SIGTERM drained "
      f"echod in {took:.1f} s (drain timeout 1.5 s, term_timeout {term_timeout} s), exit 0")
PY
