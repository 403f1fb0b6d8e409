#!/usr/bin/env bash
# Checks the shipped systemd units (contrib/systemd/*.service, *.socket) with
# `systemd-analyze verify`. Called from .ci/run when systemd-analyze exists.
#
# `verify` insists that ExecStart= names an existing executable, and the
# units name /usr/local/bin/echod. So the units are copied to a temporary
# directory with ExecStart= pointing at target/release/echod or
# target/debug/echod when built, else /bin/true, and verified there.
# Warnings (an unknown key, a value that does not parse) count as failures:
# `verify` only prints them and still exits 0.
#
# It also checks the two settings whose mistakes lose clients on stop
# (docs/operations.md): no SendSIGHUP=yes, and TimeoutStopSec= longer than
# the --drain-timeout in ExecStart=.
#
# Exit status: 0 when the units are fine (or systemd-analyze cannot run
# here, which it says), 1 with the reasons otherwise.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)

if ! command -v systemd-analyze >/dev/null 2>&1; then
    echo "verify.sh: systemd-analyze not found; units not checked"
    exit 0
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Can verify run meaningfully here (a container without systemd may lack
# what it needs)? Try a unit that is certainly fine.
printf '[Service]\nExecStart=/bin/true\n' >"$tmp/selftest.service"
if ! out=$(systemd-analyze verify --man=no "$tmp/selftest.service" 2>&1) || [ -n "$out" ]; then
    echo "verify.sh: systemd-analyze verify does not work on this machine; units not checked:"
    echo "$out"
    exit 0
fi
rm "$tmp/selftest.service"

binary=/bin/true
for candidate in "$root/target/release/echod" "$root/target/debug/echod"; do
    if [ -x "$candidate" ]; then
        binary=$candidate
        break
    fi
done

status=0
units=()
for unit in "$here"/*.service "$here"/*.socket; do
    [ -e "$unit" ] || continue
    name=$(basename "$unit")
    sed "s|^ExecStart=/usr/local/bin/echod|ExecStart=$binary|" "$unit" >"$tmp/$name"
    units+=("$tmp/$name")

    if grep -Eq '^SendSIGHUP=(yes|true|on|1)' "$unit"; then
        echo "verify.sh: $name: SendSIGHUP=yes sends a second signal, which forces the drain"
        status=1
    fi
    if [[ $name == *.service ]]; then
        drain=$(sed -n 's/^ExecStart=.*--drain-timeout[ =]\([0-9.]*\).*/\1/p' "$unit")
        drain=${drain:-5}
        stop=$(sed -n 's/^TimeoutStopSec=\([0-9]*\)s\{0,1\}$/\1/p' "$unit")
        if [ -z "$stop" ]; then
            echo "verify.sh: $name: TimeoutStopSec= (whole seconds) is missing"
            status=1
        elif ! awk -v stop="$stop" -v drain="$drain" 'BEGIN { exit !(stop > drain) }'; then
            echo "verify.sh: $name: TimeoutStopSec=$stop is not longer than --drain-timeout $drain"
            status=1
        fi
    fi
done

if [ ${#units[@]} -eq 0 ]; then
    echo "verify.sh: no unit files in $here"
    exit 1
fi

if ! out=$(cd "$tmp" && systemd-analyze verify --man=no "${units[@]}" 2>&1); then
    echo "verify.sh: systemd-analyze verify failed:"
    echo "$out"
    status=1
elif [ -n "$out" ]; then
    echo "verify.sh: systemd-analyze verify warned:"
    echo "$out"
    status=1
fi

if [ "$status" -eq 0 ]; then
    echo "verify.sh: ${#units[@]} units verified (ExecStart=$binary)"
fi
exit "$status"
