#!/usr/bin/env bash
# Build (once) and cache the VM lab's base disk: Debian 12 shaped like Debian's
# official AMI — user `admin` with passwordless sudo made by cloud-init, sshd
# taking its key from instance metadata, first-boot state cleared — but reading
# its metadata from a NoCloud seed instead of EC2's metadata service.
#
#   scripts/vm-base.sh          build if missing, print the cache directory
#   scripts/vm-base.sh --path   print the cache directory only (it may not exist yet)
#
# Two cache levels under ${KILN_VM_CACHE:-~/.cache/kiln-vm}: the Debian tree
# (rootfs-<hash>/, keyed by suite and package list; ~6 min from the mirror)
# and the disk (<hash>/, keyed by that and the customisation below; seconds).
# The disk directory holds disk.qcow2, vmlinuz, initrd.img and packages.txt;
# the lab boots the kernel directly (no bootloader), root on /dev/vda.
set -euo pipefail

suite=bookworm
# dbus lets systemd-logind run, and logind turns the ACPI power button (EC2's
# StopInstances) into a clean shutdown, as on Debian's AMI.
packages=(linux-image-cloud-amd64 systemd-sysv dbus openssh-server cloud-init python3 sudo
    ifupdown isc-dhcp-client netbase iproute2 curl ca-certificates)
cache=${KILN_VM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kiln-vm}

# What turns the Debian tree into an AMI-like disk; its text is part of the disk's key.
customize() {
    local root=$1
    # cloud-init: NoCloud only (no probing of 169.254.169.254), the AMI's default user.
    cat >"$root/etc/cloud/cloud.cfg.d/01_kiln_lab.cfg" <<'EOF'
# kiln VM lab: metadata from the NoCloud seed only, like Debian's AMI otherwise
datasource_list: [NoCloud]
system_info:
  default_user:
    name: admin
    lock_passwd: true
    gecos: Debian
    groups: [adm, sudo]
    sudo: ["ALL=(ALL) NOPASSWD:ALL"]
    shell: /bin/bash
ntp:
  enabled: false
apt_preserve_sources_list: true
# the hostname resolves without DNS (the lab has none; neither does sudo need it)
manage_etc_hosts: true
# Under TCG every module costs seconds of Python and every host key type a
# key generation on each first boot (RSA: about a minute on a loaded machine).
# The lab keeps the modules a launch uses (users, keys, hostname, bootcmd,
# runcmd, user scripts, the host keys on the console) and leaves out those
# with nothing to do here: GRUB (the kernel boots directly), locale, keyboard,
# apt (no sources), NTP, snap, config managers. Host keys: ed25519 and ecdsa.
ssh_genkeytypes: [ed25519, ecdsa]
cloud_config_modules: [set-passwords, runcmd]
cloud_final_modules: [write-files-deferred, scripts-vendor, scripts-per-once, scripts-per-boot,
  scripts-per-instance, scripts-user, ssh-authkey-fingerprints, keys-to-console,
  final-message, power-state-change]
EOF
    # No package or time sources pointing outside the lab.
    : >"$root/etc/apt/sources.list"
    rm -f "$root"/etc/apt/sources.list.d/*
    printf '/dev/vda / ext4 defaults,errors=remount-ro 0 1\n' >"$root/etc/fstab"
    printf 'auto lo\niface lo inet loopback\nsource /etc/network/interfaces.d/*\n' \
        >"$root/etc/network/interfaces"
    # First-boot state cleared, as on a published AMI.
    rm -f "$root"/etc/ssh/ssh_host_*
    : >"$root/etc/machine-id"
    rm -f "$root/var/lib/dbus/machine-id"
    rm -rf "$root/var/lib/cloud"
    echo localhost >"$root/etc/hostname"
    # Timers that would wake apt on a booted lab VM.
    rm -f "$root"/etc/systemd/system/timers.target.wants/apt-daily*.timer
    # The kernel and initrd the lab boots directly.
    cp -L "$root/vmlinuz" "$root/initrd.img" "$out.partial/"
}

key_of() { printf '%s\n' "$@" | sha256sum | cut -c1-16; }
tree_key=$(key_of "$suite" "${packages[@]}")
disk_key=$(key_of "$tree_key" "$(declare -f customize)")
out="$cache/$disk_key"

if [[ ${1:-} == --path ]]; then
    echo "$out"
    exit 0
fi
if [[ -f $out/disk.qcow2 ]]; then
    echo "$out"
    exit 0
fi

for tool in mmdebstrap mkfs.ext4 qemu-img qemu-system-x86_64 genisoimage; do
    command -v "$tool" >/dev/null 2>&1 || {
        echo "vm-base: $tool is missing; run scripts/vm-deps.sh" >&2
        exit 1
    }
done
[[ $(id -u) -eq 0 ]] || {
    echo "vm-base: building the base disk needs root (mmdebstrap, mkfs.ext4 -d with root-owned files)" >&2
    exit 1
}

mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9 # one build at a time; a second caller waits and reuses it
if [[ -f $out/disk.qcow2 ]]; then
    echo "$out"
    exit 0
fi

started=$SECONDS
tree="$cache/rootfs-$tree_key"
if [[ ! -d $tree ]]; then
    echo "vm-base: building the Debian $suite tree (mmdebstrap, several minutes)" >&2
    rm -rf "$tree.partial"
    mmdebstrap --variant=minbase --format=directory --include="$(
        IFS=,
        echo "${packages[*]}"
    )" "$suite" "$tree.partial" >&2
    mv "$tree.partial" "$tree"
fi
echo "vm-base: tree ready after $((SECONDS - started))s" >&2

work=$(mktemp -d "$cache/build.XXXXXX")
trap 'rm -rf "$work" "$out.partial"' EXIT
rm -rf "$out.partial"
mkdir -p "$out.partial" "$work/root"
cp -a "$tree/." "$work/root/"
customize "$work/root"
printf '%s\n' "${packages[@]}" >"$out.partial/packages.txt"
mkfs.ext4 -q -L root -d "$work/root" "$work/disk.raw" 3G
qemu-img convert -O qcow2 "$work/disk.raw" "$out.partial/disk.qcow2"
rm -rf "$out"
mv "$out.partial" "$out"
# An older recipe's disk and tree (~1 GB together) are never used again:
# without this every change to the recipe would leave one behind.
for stale in "$cache"/rootfs-* "$cache"/????????????????; do
    [[ -d $stale && $stale != "$tree" && $stale != "$out" ]] || continue
    echo "vm-base: removing the stale ${stale##*/}" >&2
    rm -rf "$stale"
done
echo "vm-base: disk ready after $((SECONDS - started))s" >&2
echo "$out"
