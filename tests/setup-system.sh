#!/usr/bin/env bash
# System packages the redirgate test suite needs (Debian 12 / Ubuntu names).
#
#   bash tests/setup-system.sh
#
# Already installed (checked with dpkg-query): does nothing, never touches apt.
# As root with something missing: apt-get update + install of the missing
# packages (noninteractive, no recommends).  As another user with something
# missing: prints the missing packages and the command to run, exits 1.
#
# What each package is for:
#   qemu-system-x86 qemu-utils   the real guest (tests/support/qemu.py), usb-redir
#   linux-image-amd64 kmod       the guest kernel and its modules (modprobe resolves deps)
#   busybox-static cpio          the guest's userland; cpio checks our initramfs writer
#   dosfstools mtools            FAT disk images without root (mkfs.vfat -C, mcopy)
#   libusbredirparser-dev        reference usbredir parser (ctypes conformance tests)
#   libusbredirhost-dev usbredirect   reference usbredir host side
#   socat stunnel4 haproxy ser2net    real peers for serial/TLS/proxy tests
#   libvirt-clients libxml2-utils   virt-xml-validate (+ xmllint) and, through libvirt0, the RNG schemas in
#                                /usr/share/libvirt/schemas: `host xml` output is checked against libvirt's schema
#   systemd                      systemd-analyze verify on the shipped units (tests/cli/test_install_service.py)
#   linux-libc-dev               linux/ppdev.h + linux/lp.h: our parallel ioctl numbers are checked against them
#   udev                         systemd-udevd in the real-USB thin-client VM (libusb learns of new devices from it)
#   nftables                     `nft`: drop rules in the network namespaces the fault tests make (tests/support/netns.py)
#   iproute2                     `ip netns` / `ip link` veth pairs for the same (usually installed already)
#   pcscd libccid pcsc-tools     the real-USB VM side's smartcard stack (pcsc_scan, scriptor) for the usb-ccid reader
#   libnss3-tools                certutil: the NSS database of the thin client's emulated smartcard
#   alsa-utils                   aplay: the real-USB VM side plays a tone to the usb-audio device
#   redis-server                 a real Redis for the gateway cluster tests (tests/support/redis_server.py; the tests
#                                start their own on a free loopback port, never the system service)
#   python3-venv                 only when this python3 cannot create a venv (tests/run.sh)
set -euo pipefail

packages=(
    qemu-system-x86
    qemu-utils
    linux-image-amd64
    busybox-static
    kmod
    cpio
    dosfstools
    mtools
    libusbredirparser-dev
    libusbredirhost-dev
    usbredirect
    socat
    stunnel4
    haproxy
    ser2net
    linux-libc-dev
    libvirt-clients
    libxml2-utils
    udev
    systemd
    nftables
    iproute2
    pcscd
    libccid
    pcsc-tools
    libnss3-tools
    alsa-utils
    redis-server
)

if command -v python3 >/dev/null 2>&1 && ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
    packages+=(python3-venv)
fi

if ! command -v dpkg-query >/dev/null 2>&1; then
    echo "setup-system.sh: no dpkg-query; this script knows Debian/Ubuntu only." >&2
    echo "Install the equivalents of: ${packages[*]}" >&2
    exit 1
fi

missing=()
for pkg in "${packages[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Abbrev}' "$pkg" 2>/dev/null || true)
    if [ "${status:0:2}" != "ii" ]; then
        missing+=("$pkg")
    fi
done

if [ "${#missing[@]}" -eq 0 ]; then
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "setup-system.sh: missing system packages: ${missing[*]}" >&2
    echo "Install them as root with:" >&2
    echo "  apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${missing[*]}" >&2
    exit 1
fi

echo "setup-system.sh: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends "${missing[@]}"
