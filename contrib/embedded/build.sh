#!/usr/bin/env bash
# Cross-builds the echod server binary with Debian bookworm's Rust 1.85.
#
#   contrib/embedded/build.sh TARGET...   ->  target/TARGET/release/echod
#
# Installs what it needs from Debian, pinned (idempotent: nothing is
# installed or downloaded twice). Two routes to a target's std:
#   - Debian's prebuilt std (libstd-rust-web-dev:ARCH), unpacked from its
#     .deb into a private sysroot (no dpkg multiarch on the host);
#   - -Zbuild-std from rust-web-src (RUSTC_BOOTSTRAP=1) for musl and for
#     targets Debian has no std for; musl targets link fully static.
# Only the echod binary is built, with the default `cli` feature it needs
# (echo-load is another workspace package and is not compiled). The build
# is size-tuned: opt-level z, no panic locations, and with build-std an
# immediately-aborting, size-optimised std. Extra cargo arguments go in
# ECHOD_CARGO_ARGS (--no-default-features cannot build the binary: it is
# the bare library for embedders). Log timestamps are a run-time choice
# (--log-timestamps on|off), not a build one. Downloads are cached in
# ECHOD_EMBEDDED_CACHE (default /var/cache/echod-embedded).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PROG=build.sh
# shellcheck source=contrib/embedded/common.sh
. "$ROOT/contrib/embedded/common.sh"

[ $# -ge 1 ] || die "usage: contrib/embedded/build.sh TARGET... (one of: $TARGETS)"

# Unpacks a foreign-architecture .deb (name, arch, version) into
# $CACHE/root-ARCH, through a private apt index for that architecture: the
# host's sources, its own lists, no dpkg multiarch.
unpack_deb() {
    local name=$1 arch=$2 version=$3 root="$CACHE/root-$2" stamp
    stamp="$root/.unpacked-$name-$version"
    [ -e "$stamp" ] && return 0
    local state="$CACHE/apt-$arch"
    local opts=(-o "APT::Architecture=$arch" -o "APT::Architectures::=$arch"
        -o "Dir::State::Lists=$state/lists" -o "Dir::State::status=$state/status"
        -o "Dir::Cache=$state/cache" -o Debug::NoLocking=1
        -o APT::Sandbox::User=root)
    mkdir -p "$state/lists/partial" "$state/cache/archives/partial" "$state/debs" "$root"
    touch "$state/status"
    if [ ! -e "$state/.updated" ]; then
        apt_update "${opts[@]}"
        touch "$state/.updated"
    fi
    (cd "$state/debs" && apt-get -q "${opts[@]}" download "$name:$arch=$version" >/dev/null) ||
        die "cannot download $name:$arch=$version"
    local deb
    deb=$(find "$state/debs" -name "${name}_*_$arch.deb" | head -n1)
    [ -n "$deb" ] || die "downloaded $name:$arch but found no .deb"
    dpkg-deb -x "$deb" "$root" || die "cannot unpack $deb"
    touch "$stamp"
}

# A static libunwind.a for a musl target: GCC's libgcc_eh.a plus the
# _dl_find_object shim (dl_find_object.c) it needs without glibc.
make_unwind_lib() {
    local gcc=$1 specs=$2 dir=$3
    mkdir -p "$dir"
    [ "$dir/libunwind.a" -nt "$ROOT/contrib/embedded/dl_find_object.c" ] && return 0
    local eh
    eh=$("$gcc" -print-file-name=libgcc_eh.a)
    [ -f "$eh" ] || die "$gcc has no libgcc_eh.a"
    "$gcc" -specs "$specs" -Os -fPIC -c "$ROOT/contrib/embedded/dl_find_object.c" \
        -o "$dir/dl_find_object.o" || die "cannot compile the _dl_find_object shim"
    cp "$eh" "$dir/libunwind.a.tmp"
    chmod u+w "$dir/libunwind.a.tmp"
    "${gcc%gcc}ar" rcs "$dir/libunwind.a.tmp" "$dir/dl_find_object.o"
    mv "$dir/libunwind.a.tmp" "$dir/libunwind.a"
}

build_target() {
    local target=$1 info arch gnu libc route musl
    info=$(target_info "$target") || die "unknown target: $target (known: $TARGETS)"
    read -r arch gnu libc route musl <<<"$info"
    local gcc="$gnu-gcc"
    [ "$arch" = amd64 ] && gcc=gcc
    # shellcheck disable=SC2046
    ensure_packages $(cross_packages "$gnu")

    local env_name=${target//-/_}
    env_name=${env_name^^}
    local rustflags=(-Zlocation-detail=none)
    local cargo_args=()
    if [ "$route" = debian ] && [ "$arch" != amd64 ]; then
        unpack_deb libstd-rust-web-dev "$arch" "$RUST_DEB"
        [ -d "$CACHE/root-$arch/usr/lib/rustlib/$target/lib" ] ||
            die "libstd-rust-web-dev:$arch has no std for $target"
        rustflags+=(--sysroot "$CACHE/root-$arch/usr")
    elif [ "$route" = build-std ]; then
        # shellcheck disable=SC2054 # commas belong to the flags
        cargo_args+=(-Zbuild-std=std,panic_abort
            -Zbuild-std-features=optimize_for_size,panic_immediate_abort)
    fi
    if [ "$libc" = musl ]; then
        local musl_root="" specs="$ROOT/target/embedded/$target/musl-gcc.specs"
        if [ "$arch" = amd64 ]; then
            ensure_packages "musl-dev=$MUSL_DEB"
        else
            unpack_deb musl-dev "$arch" "$MUSL_DEB"
            musl_root="$CACHE/root-$arch"
        fi
        local musl_lib="$musl_root/usr/lib/$musl" musl_inc="$musl_root/usr/include/$musl"
        [ -f "$musl_lib/musl-gcc.specs" ] || die "no musl-gcc.specs in $musl_lib"
        mkdir -p "$(dirname "$specs")"
        # Debian's specs name /usr paths; point them at where musl really is.
        sed -e "s|/usr/lib/$musl|$musl_lib|g" -e "s|/usr/include/$musl|$musl_inc|g" \
            "$musl_lib/musl-gcc.specs" >"$specs"
        make_unwind_lib "$gcc" "$specs" "$ROOT/target/embedded/$target/lib"
        # Non-PIE static: Debian's musl specs have no static-pie start file.
        rustflags+=(-Clink-self-contained=no -Crelocation-model=static
            -Clink-arg=-specs="$specs" -L "native=$ROOT/target/embedded/$target/lib")
    fi

    echo "build.sh: building $target ($route std, $libc)" >&2
    (
        cd "$ROOT"
        unset RUSTFLAGS CARGO_ENCODED_RUSTFLAGS CARGO_BUILD_RUSTFLAGS
        export PATH="/usr/bin:$PATH" RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1
        export CARGO_TARGET_DIR="$ROOT/target" CARGO_PROFILE_RELEASE_OPT_LEVEL=z
        export "CARGO_TARGET_${env_name}_LINKER=$gcc"
        export "CARGO_TARGET_${env_name}_RUSTFLAGS=${rustflags[*]}"
        # shellcheck disable=SC2086
        /usr/bin/cargo build --locked --release --target "$target" --bin echod \
            "${cargo_args[@]}" ${ECHOD_CARGO_ARGS:-}
    ) || die "cargo build for $target failed"
    local bin="$ROOT/target/$target/release/echod"
    [ -x "$bin" ] || die "no binary at $bin"
    echo "build.sh: $bin $(stat -c %s "$bin") bytes" >&2
}

mkdir -p "$CACHE" || die "cannot create $CACHE"
ensure_rust
for target in "$@"; do
    target_info "$target" >/dev/null || die "unknown target: $target (known: $TARGETS)"
done
for target in "$@"; do
    build_target "$target"
done
