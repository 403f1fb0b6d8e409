# shellcheck shell=bash disable=SC2034
# Shared by contrib/embedded/*.sh (sourced; the caller sets ROOT and PROG).
# The supported targets and the pinned Debian packages behind them.

CACHE=${ECHOD_EMBEDDED_CACHE:-/var/cache/echod-embedded}
RUST_DEB=1.85.0+dfsg3-1~deb12u3
MUSL_DEB=1.2.3-1
QEMU_DEB=1:7.2+dfsg-7+deb12u18+b3

die() { echo "$PROG: $*" >&2; exit 1; }

TARGETS="aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf mipsel-unknown-linux-gnu x86_64-unknown-linux-musl aarch64-unknown-linux-musl armv7-unknown-linux-musleabihf x86_64-unknown-linux-gnu i686-unknown-linux-gnu mips-unknown-linux-gnu armv5te-unknown-linux-gnueabi riscv64gc-unknown-linux-gnu"

# target -> Debian arch, GNU triplet of its C toolchain, C library, std
# route, and for musl the triplet of Debian's musl-dev paths ("-" otherwise).
target_info() {
    case "$1" in
    x86_64-unknown-linux-gnu) echo "amd64 x86_64-linux-gnu gnu debian -" ;;
    aarch64-unknown-linux-gnu) echo "arm64 aarch64-linux-gnu gnu debian -" ;;
    armv7-unknown-linux-gnueabihf) echo "armhf arm-linux-gnueabihf gnu debian -" ;;
    mipsel-unknown-linux-gnu) echo "mipsel mipsel-linux-gnu gnu build-std -" ;;
    x86_64-unknown-linux-musl) echo "amd64 x86_64-linux-gnu musl build-std x86_64-linux-musl" ;;
    aarch64-unknown-linux-musl) echo "arm64 aarch64-linux-gnu musl build-std aarch64-linux-musl" ;;
    armv7-unknown-linux-musleabihf) echo "armhf arm-linux-gnueabihf musl build-std arm-linux-musleabihf" ;;
    i686-unknown-linux-gnu) echo "i386 i686-linux-gnu gnu debian -" ;;
    mips-unknown-linux-gnu) echo "mips mips-linux-gnu gnu build-std -" ;;
    armv5te-unknown-linux-gnueabi) echo "armel arm-linux-gnueabi gnu build-std -" ;;
    riscv64gc-unknown-linux-gnu) echo "riscv64 riscv64-linux-gnu gnu build-std -" ;;
    *) return 1 ;;
    esac
}

# Debian packages (name=version) of the cross C toolchain for a GNU triplet.
cross_packages() {
    case "$1" in
    x86_64-linux-gnu) echo "gcc=4:12.2.0-3" ;;
    aarch64-linux-gnu) echo "gcc-aarch64-linux-gnu=4:12.2.0-3 libc6-dev-arm64-cross=2.36-8cross1" ;;
    arm-linux-gnueabihf) echo "gcc-arm-linux-gnueabihf=4:12.2.0-3 libc6-dev-armhf-cross=2.36-8cross1" ;;
    mipsel-linux-gnu) echo "gcc-mipsel-linux-gnu=4:12.2.0-4 libc6-dev-mipsel-cross=2.36-8cross2" ;;
    i686-linux-gnu) echo "gcc-i686-linux-gnu=4:12.2.0-3 libc6-dev-i386-cross=2.36-8cross1" ;;
    mips-linux-gnu) echo "gcc-mips-linux-gnu=4:12.2.0-4 libc6-dev-mips-cross=2.36-8cross2" ;;
    arm-linux-gnueabi) echo "gcc-arm-linux-gnueabi=4:12.2.0-3 libc6-dev-armel-cross=2.36-8cross1" ;;
    riscv64-linux-gnu) echo "gcc-riscv64-linux-gnu=4:12.2.0-5 libc6-dev-riscv64-cross=2.36-8cross1" ;;
    esac
}

APT_UPDATED=0
# apt-get update with the given options, tried three times: a mirror in the
# middle of a sync fails one index now and then. A last failure only warns;
# the install or download that follows says what is really missing.
apt_update() {
    local try
    for try in 1 2 3; do
        apt-get -q "$@" update >/dev/null 2>&1 && return 0
        sleep $((try * 5))
    done
    echo "$PROG: warning: apt-get update failed three times; going on with what it fetched" >&2
}
# Installs name=version packages on the host unless that version is there.
ensure_packages() {
    local missing=() spec name version have
    for spec in "$@"; do
        name=${spec%%=*}
        version=${spec#*=}
        have=$(dpkg-query -W -f='${db:Status-Abbrev}${Version}' "$name" 2>/dev/null || true)
        [ "$have" = "ii $version" ] || missing+=("$spec")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    command -v apt-get >/dev/null || die "apt-get not found: this script needs Debian 12"
    if [ "$APT_UPDATED" = 0 ]; then
        apt_update -o DPkg::Lock::Timeout=600
        APT_UPDATED=1
    fi
    echo "$PROG: installing ${missing[*]}" >&2
    local log
    log=$(mktemp)
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        -o DPkg::Lock::Timeout=600 "${missing[@]}" >"$log" 2>&1; then
        tail -n 20 "$log" >&2
        rm -f "$log"
        die "cannot install ${missing[*]}"
    fi
    rm -f "$log"
}


# Debian bookworm's Rust 1.85 (/usr/bin/rustc, /usr/bin/cargo) and its std source.
ensure_rust() {
    ensure_packages rustc-web="$RUST_DEB" cargo-web="$RUST_DEB" libstd-rust-web-dev="$RUST_DEB" \
        libstd-rust-web-1.85="$RUST_DEB" rust-web-src="$RUST_DEB"
}
