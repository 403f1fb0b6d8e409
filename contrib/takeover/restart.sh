#!/bin/sh
# Replaces a running echod by take-over (docs/operations.md "Take-over"):
# a new echod receives the listening sockets from the one offering them at
# SOCKET, so no connect is refused and nobody waits; the old one drains its
# own connections and exits 0. No systemd, no sysctl.
#
#   contrib/takeover/restart.sh SOCKET PIDFILE ECHOD [ARGS...]
#
# The running echod must have been started with `--handover-socket SOCKET`
# (and, for this script, `--pid-file PIDFILE`), for example:
#
#   echod --listen 0.0.0.0:9999 --handover-socket /run/echod/echod.sock \
#         --pid-file /run/echod/echod.pid 2>>/var/log/echod.log &
#
# The script starts `ECHOD ARGS --take-over SOCKET --handover-socket SOCKET
# --pid-file PIDFILE` in a session of its own, and returns once it serves
# (its pid file names it: written after the old echod let go), printing its
# PID; exit 0. When the take-over fails, the new echod prints one line and
# exits 1, the running echod serves on untouched, and so does this script
# (exit 1). ECHOD_LOG, if set, is the file the new echod's log is appended
# to; otherwise it inherits this script's stderr.
#
# SOCKET's directory must be writable by the service's user only. POSIX sh.
set -eu

if [ $# -lt 3 ]; then
	echo "usage: restart.sh SOCKET PIDFILE ECHOD [ARGS...]" >&2
	exit 2
fi
sock=$1
pidfile=$2
shift 2

# Its own session: the terminal or script that ran this one may go away.
session=
if command -v setsid >/dev/null 2>&1; then
	session=setsid
fi
set -- "$@" --take-over "$sock" --handover-socket "$sock" --pid-file "$pidfile"
if [ -n "${ECHOD_LOG:-}" ]; then
	$session "$@" </dev/null >/dev/null 2>>"$ECHOD_LOG" &
else
	$session "$@" </dev/null >/dev/null &
fi
new=$!

# echod bounds the take-over itself (5 s for the sockets, 5 s for the old
# echod to let go); this bound only guards against a stuck process.
tries=0
while [ "$tries" -lt 300 ]; do
	if [ "$(cat "$pidfile" 2>/dev/null)" = "$new" ]; then
		echo "$new"
		exit 0
	fi
	if ! kill -0 "$new" 2>/dev/null; then
		status=0
		wait "$new" || status=$?
		echo "restart.sh: the take-over failed (exit $status); the running echod serves on" >&2
		exit 1
	fi
	sleep 0.1 2>/dev/null || sleep 1
	tries=$((tries + 1))
done
echo "restart.sh: pid $new neither serves nor exited after 30 s" >&2
exit 1
