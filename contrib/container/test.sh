#!/usr/bin/env bash
# Builds the FROM scratch image (Containerfile) with podman and checks that
# `podman stop` drains echod: a client that sent 64 KiB gets all of it back,
# then the notice SHUTDOWN, then EOF, and the container exits 0. Also that
# echod's lines carry no time of their own (the image passes
# --log-timestamps off) while `podman logs -t` shows the runtime's.
#
#   contrib/container/test.sh
#
# Installs podman, buildah and runc from Debian (pinned) and builds the
# static binary with contrib/embedded/build.sh if it is not there. Runs with
# runc (crun refuses hybrid cgroup hierarchies) and explicit ulimits (podman
# otherwise raises them, which needs CAP_SYS_RESOURCE). The port is published
# on 127.0.0.1 only.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PROG=container/test.sh
# shellcheck source=contrib/embedded/common.sh
. "$ROOT/contrib/embedded/common.sh"

TARGET=x86_64-unknown-linux-musl
IMAGE=localhost/echod:test
NAME=echod-test-$$

ensure_packages podman=4.3.1+ds1-8+deb12u1+b3 buildah=1.28.2+ds1-3+deb12u1+b3 \
    runc=1.1.5+ds1-1+deb12u1 containernetworking-plugins=1.1.1+ds1-3+b5
bin="$ROOT/target/$TARGET/release/echod"
[ -x "$bin" ] || "$ROOT/contrib/embedded/build.sh" "$TARGET"

context="$ROOT/target/container"
mkdir -p "$context"
cp "$bin" "$context/echod"
podman build -q -f "$ROOT/contrib/container/Containerfile" -t "$IMAGE" "$context" >/dev/null ||
    die "podman build failed"

trap 'podman rm -f "$NAME" >/dev/null 2>&1 || true' EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
nofile=$(ulimit -Hn)
podman run -d --runtime runc --name "$NAME" --ulimit "nofile=$nofile:$nofile" \
    --ulimit nproc=4096:4096 -p "127.0.0.1:$port:9999" "$IMAGE" --drain-timeout 5 >/dev/null ||
    die "podman run failed"

python3 - "$NAME" "$port" <<'PY' || { podman logs "$NAME" >&2 || true; die "podman stop did not drain echod"; }
import socket, subprocess, sys, time

name, port = sys.argv[1], int(sys.argv[2])
payload = bytes((i * 131 + 7) % 251 for i in range(64 * 1024))

def fail(msg):
    sys.stderr.write(f"container/test.sh: {msg}\n")
    sys.exit(1)

deadline = time.monotonic() + 30
while b"listening on 0.0.0.0:9999" not in subprocess.run(
        ["podman", "logs", name], capture_output=True).stderr:
    if time.monotonic() > deadline:
        fail("no 'listening on 0.0.0.0:9999' in the container's log within 30 s")
    time.sleep(0.1)

s = socket.create_connection(("127.0.0.1", port), timeout=30)
s.sendall(payload)
got = bytearray()
while len(got) < len(payload):
    chunk = s.recv(65536)
    if not chunk:
        fail(f"EOF after {len(got)} of {len(payload)} echo bytes")
    got += chunk
stop = subprocess.Popen(["podman", "stop", "-t", "15", name], stdout=subprocess.DEVNULL)
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    got += chunk
s.close()
if stop.wait(30) != 0:
    fail("podman stop failed")
if bytes(got) != payload + b"SHUTDOWN":
    fail(f"client saw {len(got)} bytes, not its 65536 bytes + SHUTDOWN + EOF")
code = subprocess.run(["podman", "inspect", "-f", "{{.State.ExitCode}}", name],
                      capture_output=True, text=True).stdout.strip()
if code != "0":
    fail(f"container exited {code}, expected 0")
PY
log=$(podman logs "$NAME" 2>&1) || die "podman logs failed"
grep -q "drain started: reason=SIGTERM" <<<"$log" ||
    die "the container's log has no 'drain started: reason=SIGTERM'"
# The image runs echod with --log-timestamps off; the runtime stamps lines.
grep -q "^INFO  \[echod\] listening on 0.0.0.0:9999" <<<"$log" ||
    die "the readiness line does not begin with its level (--log-timestamps off)"
stamped=$(podman logs -t "$NAME" 2>&1) || die "podman logs -t failed"
grep -Eq "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]+[^ ]* INFO  \[echod\] listening on" <<<"$stamped" ||
    die "podman logs -t shows no runtime time stamp on the readiness line"
echo "container/test.sh: ok: podman stop drained echod (64 KiB echoed, SHUTDOWN, EOF, exit 0)"
