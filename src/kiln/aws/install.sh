#!/bin/sh
# kiln: install one baked image on an AMI builder.
#
#   install.sh ROOT APP DIGEST STAGING SHA256 [upgrade]
#   install.sh ROOT APP - STAGING - env-only
#
# With "upgrade", the distribution's non-interactive security upgrade runs
# first. With "env-only" (kiln promote into an environment whose [env]
# differs: the builder was launched from a kiln AMI of APP), only the env
# file is replaced, the app's unit stopped first; the rest is as installed. The builder's package list is printed last, between
# kiln-packages-begin and kiln-packages-end, for the AMI's record.
#
# ROOT is the filesystem to install into: "/" on a real builder, a scratch
# directory in tests. STAGING holds what kiln uploaded: image.tar (checked
# against SHA256), the unit, env, run, release and secrets.json files,
# fetch-secrets and oneoff.
# Ends by clearing first-boot state so every instance cloned from the AMI
# boots as a fresh machine.
set -eu

# cloud-init may still be running on a fresh builder (package upgrades, users,
# its own state): wait for it to finish before installing, so clearing its
# state at the end cannot race it and clones get a clean first boot.
if command -v cloud-init >/dev/null 2>&1; then
    printf 'kiln-install: %s\n' "waiting for cloud-init to finish"
    cloud-init status --wait >/dev/null 2>&1 ||
        printf 'kiln-install: %s\n' "cloud-init reported a problem (status $?); continuing" >&2
fi

root=${1:?root}
app=${2:?app}
digest=${3:?digest}
staging=${4:?staging}
sha=${5:?sha256}
upgrade=${6:-}

say() { printf 'kiln-install: %s\n' "$*"; }
fail() { printf 'kiln-install: %s\n' "$*" >&2; exit 1; }

root=${root%/}

# First-boot state: clones must get their own identity, keys and cloud-init run.
clear_first_boot() {
    rm -rf "$root/var/lib/cloud/instances" "$root/var/lib/cloud/instance" "$root/var/lib/cloud/data"
    rm -f "$root"/etc/ssh/ssh_host_*
    [ -f "$root/etc/machine-id" ] && : > "$root/etc/machine-id"
    rm -f "$root/var/lib/dbus/machine-id"
    for keys in "$root"/root/.ssh/authorized_keys "$root"/home/*/.ssh/authorized_keys; do
        [ -f "$keys" ] && rm -f "$keys"
    done
    rm -rf "$staging"
    say "first-boot state cleared"
}

if [ "$upgrade" = env-only ]; then
    conf="$root/etc/kiln/$app"
    [ -f "$conf/env" ] || fail "not a kiln AMI of $app: no /etc/kiln/$app/env"
    if [ -z "$root" ] && command -v systemctl >/dev/null 2>&1; then
        systemctl stop "kiln-$app.service" 2>/dev/null || true
    fi
    install -m 0644 "$staging/env" "$conf/env"
    say "env layer of $app replaced"
    clear_first_boot
    exit 0
fi
if [ "$upgrade" = upgrade ]; then
    if command -v apt-get >/dev/null 2>&1; then
        say "security upgrade: apt-get upgrade"
        export DEBIAN_FRONTEND=noninteractive
        apt-get -q update || fail "apt-get update failed"
        apt-get -q -y -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
            upgrade || fail "apt-get upgrade failed"
    elif command -v dnf >/dev/null 2>&1; then
        say "security upgrade: dnf upgrade --security"
        dnf -y upgrade --security || fail "dnf upgrade failed"
    elif command -v yum >/dev/null 2>&1; then
        say "security upgrade: yum update --security"
        yum -y update --security || fail "yum update failed"
    else
        fail "security_upgrades is on, but the builder has no apt-get, dnf or yum"
    fi
fi
actual=$(sha256sum "$staging/image.tar" | cut -d' ' -f1)
[ "$actual" = "$sha" ] || fail "image.tar is damaged: sha256 $actual, expected $sha"

home="$root/opt/kiln/$app"
dest="$home/$digest"
rm -rf "$dest.partial"
mkdir -p "$dest.partial"
tar -xf "$staging/image.tar" -C "$dest.partial" --no-same-owner
rm -rf "$dest"
mv "$dest.partial" "$dest"
ln -sfn "$digest" "$home/current"
say "image unpacked into /opt/kiln/$app/$digest"

conf="$root/etc/kiln/$app"
mkdir -p "$conf" "$root/usr/local/lib/kiln" "$root/etc/systemd/system/multi-user.target.wants"
install -m 0644 "$staging/env" "$conf/env"
install -m 0755 "$staging/run" "$conf/run"
install -m 0644 "$staging/secrets.json" "$conf/secrets.json"
install -m 0755 "$staging/fetch-secrets" "$root/usr/local/lib/kiln/fetch-secrets"
install -m 0755 "$staging/oneoff" "$root/usr/local/lib/kiln/oneoff"
install -m 0644 "$staging/release" "$conf/release"
unit="kiln-$app.service"
install -m 0644 "$staging/$unit" "$root/etc/systemd/system/$unit"
ln -sfn "/etc/systemd/system/$unit" "$root/etc/systemd/system/multi-user.target.wants/$unit"
say "unit $unit installed and enabled"

if [ -z "$root" ] && command -v useradd >/dev/null 2>&1 && ! id kiln >/dev/null 2>&1; then
    useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin kiln
fi

clear_first_boot

# What the AMI was built from: its package list (name, tab, version).
echo kiln-packages-begin
if command -v dpkg-query >/dev/null 2>&1; then
    dpkg-query -W -f '${Package}\t${Version}\n' 2>/dev/null || true
elif command -v rpm >/dev/null 2>&1; then
    rpm -qa --qf '%{NAME}\t%{VERSION}-%{RELEASE}.%{ARCH}\n' 2>/dev/null || true
fi
echo kiln-packages-end
