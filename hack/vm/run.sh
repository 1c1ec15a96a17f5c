#!/usr/bin/env bash
# Boots the node VM (hack/vm/build.sh's image) under QEMU/TCG with <share-dir>
# mounted over 9p at /mnt/share, runs <script-inside-share> there as root once
# systemd reports running (or degraded), and exits with the script's exit code.
# The guest writes <share>/log (the script's output), <share>/exit-code and
# <share>/system-state ("<state> <uptime>"); run.sh adds <share>/run-stats
# (boot time, QEMU peak RSS) and the serial console goes to <share>/console.log. The rootfs is used copy-on-write (-snapshot), so every
# run starts from the clean image.
#
#   hack/vm/run.sh <share-dir> <script-inside-share> [timeout-seconds]
#
# Environment: BERTH_VM_BOOT_TIMEOUT (s, default 180), BERTH_VM_MEMORY (MiB,
# default 2048), BERTH_VM_CPUS (default 2), BERTH_VM_IMAGE (an image dir;
# default: build.sh's, built if missing), BERTH_VM_WRITABLE=1 (write to the
# image itself: build.sh's warm-up boot only).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

if (($# < 2 || $# > 3)); then
  echo "usage: $0 <share-dir> <script-inside-share> [timeout-seconds]" >&2
  exit 2
fi
share=$(cd "$1" && pwd)
script=$2
timeout=${3:-1800}
boot_timeout=${BERTH_VM_BOOT_TIMEOUT:-180}
if [[ ! -f $share/$script ]]; then
  echo "hack/vm/run.sh: no $script in $share" >&2
  exit 2
fi
# The name travels on the kernel command line, which splits on spaces.
if [[ $script =~ [[:space:]] ]]; then
  echo "hack/vm/run.sh: the script's path must not contain spaces" >&2
  exit 2
fi
image=${BERTH_VM_IMAGE:-$("$here/build.sh")}

rm -f "$share"/{exit-code,exit-code.tmp,log,system-state,console.log,run-stats}

# cgroup v2 only, AppArmor on (Debian's default LSM, stated anyway);
# panic=-1 plus -no-reboot: a guest panic ends QEMU instead of hanging.
append="console=ttyS0 root=/dev/vda rw quiet panic=-1
  systemd.unified_cgroup_hierarchy=1 cgroup_no_v1=all
  apparmor=1 security=apparmor
  systemd.show_status=false berth.script=$script"

snapshot=on
[[ ${BERTH_VM_WRITABLE:-} == 1 ]] && snapshot=off

# TCG, not KVM (KVM guests hang on this host). tb-size=256 caps the
# translation cache, which otherwise grows QEMU's RSS to 1.5 GB.
# -svm,-vmx: no nested virtualisation to offer, so no kvm module to load.
# romfile= : no PXE option ROM (ipxe-qemu is only a Recommends; -kernel boots).
qemu-system-x86_64 \
  -machine q35 -accel tcg,tb-size=256 -cpu max \
  -smp "${BERTH_VM_CPUS:-2}" -m "${BERTH_VM_MEMORY:-2048}" \
  -kernel "$image/vmlinuz" -initrd "$image/initrd.img" -append "${append//$'\n'/ }" \
  -drive "file=$image/rootfs.img,if=virtio,format=raw,snapshot=$snapshot" \
  -virtfs "local,path=$share,mount_tag=share,security_model=none,id=share" \
  -netdev user,id=net0 -device virtio-net-pci,netdev=net0,romfile= \
  -display none -monitor none -serial "file:$share/console.log" \
  -no-reboot &
qemu=$!
trap 'kill "$qemu" 2>/dev/null || true' EXIT

started=$SECONDS
booted=
peak_kb=0
result=
while kill -0 "$qemu" 2>/dev/null; do
  # VmHWM is the peak RSS so far; the last reading before exit is the run's.
  if hwm=$(awk '/^VmHWM:/ {print $2}' "/proc/$qemu/status" 2>/dev/null) && [[ -n $hwm ]]; then
    peak_kb=$hwm
  fi
  if [[ -z $booted && -f $share/system-state ]]; then
    booted=$((SECONDS - started))
    echo "hack/vm/run.sh: guest $(cut -d' ' -f1 "$share/system-state") after ${booted} s (guest uptime $(cut -d' ' -f2 "$share/system-state") s)" >&2
  fi
  if [[ -z $booted ]] && ((SECONDS - started > boot_timeout)); then
    result="boot timeout: systemd not running after ${boot_timeout} s"
    break
  fi
  # Results are on the host once exit-code is (9p writes through), and the
  # disk is a throw-away snapshot: no need to wait ~10 s for the guest's
  # shutdown. A writable (warm-up) boot does shut down cleanly.
  if [[ -f $share/exit-code && $snapshot == on ]]; then
    break
  fi
  if ((SECONDS - started > timeout)); then
    result="timeout: the run took over ${timeout} s"
    break
  fi
  sleep 0.2
done
kill "$qemu" 2>/dev/null || true
wait "$qemu" 2>/dev/null || true
trap - EXIT
echo "hack/vm/run.sh: QEMU ran $((SECONDS - started)) s, peak RSS $((peak_kb / 1024)) MiB" >&2
# For callers that report figures (smoke.sh).
printf 'boot_seconds=%s\nqemu_seconds=%s\npeak_rss_mib=%s\n' \
  "${booted:-none}" "$((SECONDS - started))" "$((peak_kb / 1024))" >"$share/run-stats"

if [[ -z $result && ! -f $share/exit-code ]]; then
  result="the guest powered off without writing exit-code"
fi
if [[ -n $result ]]; then
  echo "hack/vm/run.sh: $result; the console's last lines ($share/console.log):" >&2
  tail -n 30 "$share/console.log" >&2 || true
  exit 124
fi
code=$(<"$share/exit-code")
exit "$code"
