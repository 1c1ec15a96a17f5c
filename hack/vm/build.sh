#!/usr/bin/env bash
# Builds the node VM image from Debian packages only and prints its directory,
# which holds vmlinuz, initrd.img and rootfs.img:
#   - a bookworm rootfs (mmdebstrap) with systemd, AppArmor, both OCI runtimes
#     and the CNI plugins, plus the runner unit from hack/vm/guest and Berth's
#     own unit, dist/berth.service (installed, not enabled: the binaries come
#     with each run);
#   - the Debian kernel, unpacked with dpkg-deb -x (installing it would pull in
#     initramfs-tools and build a 30 MB initramfs nobody needs), its modules in
#     the rootfs;
#   - a small busybox initramfs that loads virtio and ext4 and switch_roots;
#   - an ext4 image made with mkfs.ext4 -d (no loop mounts, no root tricks).
# The result is cached under $BERTH_VM_CACHE (default /var/cache/berth-vm) in a
# directory named by a hash of this script, run.sh, hack/vm/guest and
# dist/berth.service, so it is
# rebuilt only when the package list, the build, the boot or the guest files
# change. (The packages' versions are whatever the mirror has at build time.)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

SUITE=bookworm
MIRROR=${BERTH_VM_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${BERTH_VM_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
PACKAGES=(
  # PID 1 and what a node has: the systemd cgroup driver talks to it over dbus
  systemd systemd-sysv dbus udev kmod
  # what Berth runs and sets up
  runc crun apparmor iproute2 iptables containernetworking-plugins
  # ps/pkill for the tests' clean-ups
  procps
)
# Modules the initramfs loads; modprobe resolves (and orders) their
# dependencies from the kernel's modules.dep. crc32c is asked for through the
# crypto API (ext4's metadata checksums), which modules.dep does not record.
INITRD_MODULES=(virtio_ring virtio virtio_pci virtio_blk crc32c_generic ext4)

# run.sh is an input too: the warm-up boot below runs with its command line.
key=$( (
  cat "$0" "$here/run.sh" "$here/../../dist/berth.service"
  for f in "$here"/guest/*; do
    echo "== ${f##*/}"
    cat "$f"
  done
) | sha256sum | cut -c1-16)

cache=${BERTH_VM_CACHE:-}
if [[ -z $cache ]]; then
  if [[ -w /var/cache ]]; then cache=/var/cache/berth-vm; else cache=$here/../../target/vm; fi
fi
out=$cache/$key
if [[ -f $out/done ]]; then
  echo "$out"
  exit 0
fi

for cmd in mmdebstrap mkfs.ext4 cpio depmod modprobe; do
  command -v "$cmd" >/dev/null || {
    echo "hack/vm/build.sh: $cmd missing; run hack/setup.sh" >&2
    exit 1
  }
done
# busybox-static's /bin/busybox: a dynamic one would need libc in the initramfs.
busybox=/bin/busybox
if ldd "$busybox" >/dev/null 2>&1; then
  echo "hack/vm/build.sh: $busybox is not static; install busybox-static" >&2
  exit 1
fi
if [[ $(id -u) -ne 0 ]]; then
  echo "hack/vm/build.sh: building the image needs root (mmdebstrap, device nodes)" >&2
  exit 1
fi

mkdir -p "$cache"
work=$(mktemp -d "$cache/.build-XXXXXX")
[[ -n ${BERTH_VM_KEEP:-} ]] || trap 'rm -rf "$work"' EXIT
root=$work/root
started=$SECONDS

echo "hack/vm/build.sh: building $out" >&2
# The customize hook fetches the kernel package with the same apt
# configuration (mirror, snapshot) as the rootfs into /tmp (kept by
# --skip=cleanup/tmp, emptied below): the metapackage
# linux-image-amd64 names the current ABI's linux-image-<abi>-amd64.
# shellcheck disable=SC2016 # the hook is expanded by mmdebstrap, not here
mmdebstrap --quiet --mode=root --variant=essential --skip=cleanup/tmp \
  --include="$(IFS=,; echo "${PACKAGES[*]}")" \
  --customize-hook='set -e
    pkg=$(APT_CONFIG=$MMDEBSTRAP_APT_CONFIG apt-cache depends linux-image-amd64 |
      sed -n "s/^ *Depends: \(linux-image-[^ ]*-amd64\)$/\1/p" | head -n1)
    cd "$1/tmp" && APT_CONFIG=$MMDEBSTRAP_APT_CONFIG apt-get download -q "$pkg"' \
  "$SUITE" "$root" \
  "deb $MIRROR $SUITE main" \
  "deb $MIRROR $SUITE-updates main" \
  "deb $SECURITY_MIRROR $SUITE-security main" >&2

# Unpacked aside, not onto the rootfs: its ./lib would replace merged-usr's
# /lib -> usr/lib symlink. Only the image and the modules are needed.
deb=$(echo "$root"/tmp/linux-image-*.deb)
dpkg-deb -x "$deb" "$work/kernel"
kver=$(ls "$work/kernel/lib/modules")
mkdir -p "$root/usr/lib/modules"
mv "$work/kernel/lib/modules/$kver" "$root/usr/lib/modules/$kver"
mv "$work/kernel/boot/vmlinuz-$kver" "$work/vmlinuz"
rm -rf "$deb" "$work/kernel"
# Hardware a node VM never has: half the modules' size, and nothing for udev
# to load at boot under TCG's slow CPU.
for dir in sound drivers/gpu drivers/media drivers/net/wireless drivers/infiniband \
  drivers/bluetooth drivers/staging drivers/iio drivers/isdn drivers/usb drivers/hid \
  drivers/input drivers/nfc net/wireless net/mac80211 net/bluetooth; do
  rm -rf "$root/usr/lib/modules/$kver/kernel/$dir"
done
depmod -b "$root" "$kver"

# The guest's configuration: runner unit, static network, a machine ID (an
# empty one would make every boot a "first boot"), a root that stays rw.
install -m 0755 "$here/guest/berth-vm-run" "$root/usr/local/sbin/berth-vm-run"
install -m 0644 "$here/guest/berth-vm-run.service" "$root/etc/systemd/system/"
chroot "$root" systemctl enable -q berth-vm-run.service
install -m 0644 "$here/../../dist/berth.service" "$root/etc/systemd/system/berth.service"
# Nothing to log in to: the serial console is the runner's output.
chroot "$root" systemctl mask -q serial-getty@ttyS0.service getty@tty1.service
echo berth-vm >"$root/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 berth-vm\n::1 localhost\n' >"$root/etc/hosts"
echo '/dev/vda / ext4 rw,errors=remount-ro 0 0' >"$root/etc/fstab"
rm -f "$root/etc/machine-id"
chroot "$root" systemd-machine-id-setup >/dev/null
echo 'nameserver 10.0.2.3' >"$root/etc/resolv.conf"
rm -rf "$root"/var/cache/apt/* "$root"/var/lib/apt/lists/* "$root"/tmp/*

# The initramfs: static busybox, the modules (decompressed if the kernel
# ships them compressed, as busybox insmod takes plain .ko) and /init.
initrd=$work/initrd
mkdir -p "$initrd"/{bin,dev,proc,sys,newroot,lib/modules}
cp "$busybox" "$initrd/bin/busybox"
install -m 0755 "$here/guest/init" "$initrd/init"
: >"$initrd/modules.order"
# modprobe -d prints paths with the root dir in front.
while read -r verb path _; do
  [[ $verb == insmod ]] || continue
  name=${path##*/}
  name=${name%.xz}
  name=${name%.zst}
  grep -qx "$name" "$initrd/modules.order" && continue
  case "$path" in
    *.xz) xz -dc "$path" >"$initrd/lib/modules/$name" ;;
    *.zst) zstd -qdc "$path" >"$initrd/lib/modules/$name" ;;
    *) cp "$path" "$initrd/lib/modules/$name" ;;
  esac
  echo "$name" >>"$initrd/modules.order"
done < <(for m in "${INITRD_MODULES[@]}"; do
  modprobe -d "$root" -S "$kver" --show-depends "$m"
done)
(cd "$initrd" && find . | cpio -o -H newc --quiet | gzip -9) >"$work/initrd.img"

# The rootfs image: its content plus room for the tests' containers and
# state. Sparse, and each run writes to a copy-on-write layer anyway.
used_mb=$(du -sm "$root" | cut -f1)
size_mb=$((used_mb + ${BERTH_VM_FREE_MB:-4096}))
mkfs.ext4 -q -F -L berth-root -d "$root" "$work/rootfs.img" "${size_mb}M" >/dev/null

# One boot at build time, writing to the image: first-boot work (above all
# compiling the AppArmor profiles, 20 s under TCG, cached in
# /var/cache/apparmor for this kernel) is then done once, not on every run.
mkdir -p "$work/warm-up"
echo 'echo warm-up boot done' >"$work/warm-up/warm-up.sh"
BERTH_VM_IMAGE=$work BERTH_VM_WRITABLE=1 "$here/run.sh" "$work/warm-up" warm-up.sh 600 >&2 || {
  echo "hack/vm/build.sh: the warm-up boot failed; console: $work/warm-up/console.log" >&2
  tail -n 20 "$work/warm-up/console.log" >&2
  exit 1
}
rm -rf "$work/warm-up"

echo "$kver" >"$work/kernel-version"
printf '%s\n' "${PACKAGES[@]}" >"$work/packages"
rm -rf "$root" "$initrd"
touch "$work/done"
rm -rf "$out"
mv "$work" "$out"
trap - EXIT
# Older images (other keys) only take space.
find "$cache" -mindepth 1 -maxdepth 1 -type d ! -name "$key" ! -name '.build-*' -exec rm -rf {} +
echo "hack/vm/build.sh: built in $((SECONDS - started)) s: kernel $kver, rootfs ${used_mb} MB, initramfs $(du -k "$out/initrd.img" | cut -f1) kB" >&2
echo "$out"
