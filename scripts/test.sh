#!/usr/bin/env bash
# Install everything the test suite needs, then run it.
#
#   scripts/test.sh [pytest arguments...]
#
# 1. Debian packages: the real QEMU tools the tests compare against (apt-get,
#    skipped when they are all installed already).
# 2. pyqemu itself, editable, with the `test` extra (python3 -m pip).
# 3. python3 -m pytest with the given arguments; exits with pytest's code,
#    so "no tests collected" (5) fails too.
#
# Run as root or with sudo available. Without a virtualenv this installs into
# the python3 on PATH; on a system whose python3 refuses that (PEP 668),
# activate a virtualenv first.
set -euo pipefail

# Reference peers, one Debian package per line: add new ones here.
APT_PACKAGES=(
    qemu-utils # qemu-img, qemu-io, qemu-nbd
    libnbd-bin # nbdinfo, nbdcopy, nbdsh: NBD clients for the pyqemu-nbd tests
    python3-libnbd # libnbd for /usr/bin/python3: concurrent-writer tests
    nbdkit # NBD reference server
    fio # fio's nbd engine for benchmarks/bench_nbd.py
    openssl # test certificates for pyqemu-nbd's TLS tests
    libssl-dev # headers to build sslpsk3 (PSK TLS for pyqemu-nbd) from its sdist
    qemu-user # qemu-arm, qemu-aarch64: the peers of pyqemu-arm/pyqemu-aarch64
    gcc-arm-linux-gnueabihf # builds the ARMv7 guest programs of tests/guests/
    gcc-aarch64-linux-gnu # builds the AArch64 guest programs of tests/guests/
    libc6-dev-armhf-cross # ARMv7 glibc headers, static libs and the -L sysroot
    libc6-dev-arm64-cross # AArch64 glibc headers, static libs and the -L sysroot
    golang-go # builds the Go guest programs (GOARCH=arm, arm64)
    gdb-multiarch # gdb for ARM/AArch64 guests: the gdbstub's peer
    qemu-system-x86 # qemu-system-x86_64: the peer of pyqemu-system-x86_64
    seabios # bios-256k.bin, the PC BIOS pyqemu-system-x86_64 boots by default
    nasm # assembles the x86 boot sector and Multiboot entry of tests/guests/x86/
    gcc # host gcc -m32 -c (freestanding, no multilib) and ld -m elf_i386 for tests/guests/x86/mbkernel/
)

cd "$(dirname "${BASH_SOURCE[0]}")/.."

log=$(mktemp "${TMPDIR:-/tmp}/pyqemu-test-setup.XXXXXX")
trap 'rm -f "$log"' EXIT

# Run a setup step with its output in the log; show the log if it fails.
step() {
    local what=$1
    shift
    echo "test.sh: $what"
    if ! "$@" >>"$log" 2>&1; then
        echo "test.sh: $what failed; its output:" >&2
        tail -n 100 "$log" >&2
        exit 1
    fi
}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    else
        sudo "$@"
    fi
}

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done
if [ "${#missing[@]}" -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    step "apt-get update" as_root apt-get update
    step "apt-get install ${missing[*]}" \
        as_root apt-get install -y --no-install-recommends "${missing[@]}"
fi

step "pip install -e .[test]" \
    python3 -m pip install --disable-pip-version-check --no-input -e '.[test]'

set +e
python3 -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
    echo "test.sh: pytest collected no tests: failing" >&2
fi
exit "$rc"
