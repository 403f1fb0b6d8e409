#!/usr/bin/env bash
# Runs target/TARGET/release/echod (built by build.sh) natively or under
# qemu-user and checks one drain end to end over 127.0.0.1:
#
#   contrib/embedded/smoke.sh TARGET
#
# A host client sends 64 KiB and reads its echo; then echod gets SIGHUP (sent
# to the qemu process, which delivers it to the guest). The client must see
# exactly what it sent, then the notice `SHUTDOWN`, then EOF, and echod must
# exit 0. Exits non-zero with one line naming what went wrong otherwise.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PROG=smoke.sh
# shellcheck source=contrib/embedded/common.sh
. "$ROOT/contrib/embedded/common.sh"

[ $# -eq 1 ] || die "usage: contrib/embedded/smoke.sh TARGET (one of: $TARGETS)"
target=$1
info=$(target_info "$target") || die "unknown target: $target (known: $TARGETS)"
read -r arch gnu libc _route _musl <<<"$info"
bin="$ROOT/target/$target/release/echod"
[ -x "$bin" ] || die "no binary at $bin: run contrib/embedded/build.sh $target first"

runner=()
case "$arch" in
amd64) ;;
arm64) runner=(qemu-aarch64) ;;
armhf) runner=(qemu-arm) ;;
mipsel) runner=(qemu-mipsel) ;;
mips) runner=(qemu-mips) ;;
armel) runner=(qemu-arm) ;;
riscv64) runner=(qemu-riscv64) ;;
i386) runner=(qemu-i386) ;;
*) die "no qemu-user mapping for $arch" ;;
esac
if [ ${#runner[@]} -gt 0 ]; then
    ensure_packages "qemu-user=$QEMU_DEB"
    if [ "$libc" = gnu ]; then
        # The guest's dynamic loader and libc come from Debian's cross packages.
        # shellcheck disable=SC2046
        ensure_packages $(cross_packages "$gnu")
        runner+=(-L "/usr/$gnu")
    fi
fi

echo "$PROG: $target: ${runner[*]:+${runner[*]} }$bin" >&2
exec python3 - "$target" "${runner[@]}" "$bin" <<'PY'
import os, re, signal, socket, subprocess, sys, threading, time

target, cmd = sys.argv[1], sys.argv[2:]
NOTICE = b"SHUTDOWN"
payload = bytes((i * 131 + 7) % 251 for i in range(64 * 1024))

def fail(msg, log=""):
    sys.stderr.write(f"smoke.sh: {target}: {msg}\n")
    if log:
        sys.stderr.write("--- echod stderr ---\n" + log)
    sys.exit(1)

proc = subprocess.Popen(cmd + ["--listen", "127.0.0.1:0", "--drain-timeout", "5"],
                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                        stderr=subprocess.PIPE)
lines, ready = [], threading.Event()
port = []

def read_stderr():
    for raw in proc.stderr:
        line = raw.decode(errors="replace")
        lines.append(line)
        m = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        if m and not port:
            port.append(int(m.group(1)))
            ready.set()
    ready.set()

threading.Thread(target=read_stderr, daemon=True).start()
try:
    if not ready.wait(60) or not port:
        fail("no 'listening on' line within 60 s", "".join(lines))
    s = socket.create_connection(("127.0.0.1", port[0]), timeout=30)
    s.sendall(payload)
    got = bytearray()
    while len(got) < len(payload):
        chunk = s.recv(65536)
        if not chunk:
            fail(f"EOF after {len(got)} of {len(payload)} echo bytes", "".join(lines))
        got += chunk
    proc.send_signal(signal.SIGHUP)
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        got += chunk
    s.close()
    if bytes(got) != payload + NOTICE:
        fail(f"client saw {len(got)} bytes, not its 65536 bytes + SHUTDOWN + EOF", "".join(lines))
    try:
        code = proc.wait(30)
    except subprocess.TimeoutExpired:
        fail("echod did not exit within 30 s of SIGHUP", "".join(lines))
    if code != 0:
        fail(f"echod exited {code}, expected 0", "".join(lines))
except (OSError, socket.timeout) as err:
    fail(f"client error: {err}", "".join(lines))
finally:
    if proc.poll() is None:
        proc.kill()
        proc.wait()
print(f"smoke.sh: {target}: ok: 65536 bytes echoed, SHUTDOWN, EOF, exit 0")
PY
