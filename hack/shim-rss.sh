#!/usr/bin/env bash
# Memory per container of berth-shim (the `shim` profile build) vs conmon
# (Debian's), each monitoring N `sleep` containers run by the same runc from
# the same busybox bundle. Prints RSS and PSS (proportional: shared pages
# split among the processes sharing them) per monitor, and the ratios.
# Needs root, runc, conmon, busybox-static, jq.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-10}

cargo build --quiet --profile shim -p berth-shim
SHIM=$PWD/target/shim/berth-shim
RUNC=$(command -v runc)
CONMON=$(command -v conmon)

WORK=$(mktemp -d /tmp/berth-shim-rss.XXXXXX)
cleanup() {
  for id in $(runc --root "$WORK/runc" list -q 2>/dev/null); do
    runc --root "$WORK/runc" delete --force "$id" >/dev/null 2>&1 || true
  done
  sleep 0.5
  rmdir /sys/fs/cgroup/*/berth-rss 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

ROOTFS=$WORK/rootfs
mkdir -p "$ROOTFS/bin" "$ROOTFS/etc" "$WORK/logs"
cp /bin/busybox "$ROOTFS/bin/"
ln -s busybox "$ROOTFS/bin/sleep"
ln -s busybox "$ROOTFS/bin/sh"
(cd "$WORK" && runc spec && mv config.json spec.json)
jq --arg root "$ROOTFS" '.root.path = $root | .root.readonly = true
  | .process.terminal = false | .process.args = ["sleep", "100000"]
  | .linux.cgroupsPath = null' "$WORK/spec.json" > "$WORK/base.json"

mem() { # pid -> "rss_kb pss_kb"
  local rss pss
  rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$1/status")
  pss=$(awk '/^Pss:/ {print $2}' "/proc/$1/smaps_rollup")
  echo "$rss $pss"
}

declare -a shim_pids conmon_pids
for i in $(seq 1 "$N"); do
  id=berth-$i
  dir=$WORK/$id
  mkdir -p "$dir"
  jq --arg cg "/berth-rss/$id" '.linux.cgroupsPath = $cg' "$WORK/base.json" > "$dir/config.json"
  jq -n --arg id "$id" --arg rt "$RUNC" --arg root "$WORK/runc" --arg log "$WORK/logs/$id.log" \
    '{id: $id, runtime: $rt, runtime_root: $root, log_path: $log, stdin: false, stdin_once: false, tty: false}' \
    > "$dir/shim.json"
  "$SHIM" monitor "$dir" >/dev/null
  runc --root "$WORK/runc" start "$id"
  shim_pids+=("$(cat "$dir/shim.pid")")

  id=conmon-$i
  dir=$WORK/$id
  mkdir -p "$dir"
  jq --arg cg "/berth-rss/$id" '.linux.cgroupsPath = $cg' "$WORK/base.json" > "$dir/config.json"
  "$CONMON" -b "$dir" -c "$id" -u "$id" -n "$id" -r "$RUNC" --runtime-arg "--root=$WORK/runc" \
    -l "k8s-file:$WORK/logs/$id.log" -p "$dir/pid" -P "$dir/conmon.pid" \
    --exit-dir "$dir" --socket-dir-path "$dir" --log-level error >/dev/null 2>&1
  # conmon returns before the runtime's create finished (no sync pipe here).
  for _ in $(seq 1 500); do [[ -s $dir/pid ]] && break; sleep 0.01; done
  runc --root "$WORK/runc" start "$id"
  conmon_pids+=("$(cat "$dir/conmon.pid")")
done
sleep 1

sum() { # label pids...
  local label=$1; shift
  local rss=0 pss=0 r p
  for pid in "$@"; do
    read -r r p < <(mem "$pid")
    rss=$((rss + r)); pss=$((pss + p))
  done
  echo "$label $((rss / $#)) $((pss / $#))"
}
read -r _ shim_rss shim_pss < <(sum berth-shim "${shim_pids[@]}")
read -r _ conmon_rss conmon_pss < <(sum conmon "${conmon_pids[@]}")
echo "monitors per kind: $N; berth-shim binary: $(stat -c %s "$SHIM") bytes"
printf '%-11s %10s %10s\n' monitor "RSS KiB" "PSS KiB"
printf '%-11s %10s %10s\n' berth-shim "$shim_rss" "$shim_pss" conmon "$conmon_rss" "$conmon_pss"
awk -v a="$shim_rss" -v b="$conmon_rss" -v c="$shim_pss" -v d="$conmon_pss" \
  'BEGIN { printf "berth-shim / conmon: RSS %.2f, PSS %.2f\n", a / b, c / d }'
