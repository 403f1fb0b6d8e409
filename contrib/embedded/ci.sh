#!/usr/bin/env bash
# The embedded CI jobs, for .ci/run:
#   1. the declared rust-version is true: the workspace builds and passes its
#      tests with Debian bookworm's rustc 1.85 (own target dir, target/msrv);
#   2. one foreign target: build aarch64-unknown-linux-gnu with build.sh and
#      drain it under qemu-user with smoke.sh.
# Installs what it needs from Debian (pinned), like build.sh.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PROG=ci.sh
# shellcheck source=contrib/embedded/common.sh
. "$ROOT/contrib/embedded/common.sh"

started=$SECONDS
ensure_rust

echo "== msrv: cargo test --locked with Debian's rustc 1.85"
(
    cd "$ROOT"
    unset RUSTFLAGS CARGO_ENCODED_RUSTFLAGS CARGO_BUILD_RUSTFLAGS RUSTC_BOOTSTRAP
    export PATH="/usr/bin:$PATH" RUSTC=/usr/bin/rustc CARGO_TARGET_DIR="$ROOT/target/msrv"
    /usr/bin/rustc --version
    # Some tests open many sockets; give them room where the hard limit allows.
    ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
    /usr/bin/cargo test --locked --workspace
) || die "the MSRV build or tests failed (Debian rustc 1.85)"
echo "== msrv: $((SECONDS - started)) s"

cross=aarch64-unknown-linux-gnu
step=$SECONDS
echo "== cross: $cross build and smoke under qemu-user"
"$ROOT/contrib/embedded/build.sh" "$cross"
"$ROOT/contrib/embedded/smoke.sh" "$cross"
echo "== cross: $((SECONDS - step)) s; embedded CI total $((SECONDS - started)) s"
