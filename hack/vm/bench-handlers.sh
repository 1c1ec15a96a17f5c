#!/usr/bin/env bash
# Pod start-up with the runc and the crun runtime handler, in the node VM
# (cgroup v2 only, systemd as PID 1): crun cannot run on a cgroup-v1-hybrid
# host, so the comparison runs where both can. A benchmark, not part of CI
# (neither .ci/run nor hack/test.sh runs it).
#
# On the host, as hack/vm/suite.sh: builds (or reuses) the image, builds
# berthd, berth-shim and e2e/examples/pod_bench.rs in release, serves the
# busybox fixture from a registry on the host's loopback (the guest's
# 10.0.2.2) and boots the VM once; hack/vm/bench-handlers-guest.sh installs
# the binaries there, configures berthd (crun as handler `crun` beside the
# default `runc`, as the node suite does, plus a bridge CNI network for the
# pods), starts it with `systemctl start berth` and runs pod_bench against
# its socket once per handler, runc first by default, each run with its own
# warm-up pod. Before these, an unreported pass per handler warms the boot
# (in one boot, without it, whichever handler ran first was the slower by up
# to about 2x, whichever it was). Prints both runs' output, the crun/runc
# ratios of the seq and par p50s of run, create, start and ready, and the
# wall time; fails if a run failed or its containers' state was not under
# its handler's root.
#
#   hack/vm/bench-handlers.sh       (as root, after hack/setup.sh)
# Environment: BERTH_VM_BENCH_COUNT (pods per phase, default 5: TCG is
# 10-20x slower than the host), BERTH_VM_BENCH_DRIVER (berthd's cgroup
# driver, default systemd), BERTH_VM_BENCH_WARMUP (pods per phase of the
# warm-up pass, per handler; default 2, 0: none), BERTH_VM_BENCH_HANDLERS
# (the runs' order, "runc crun" or "crun runc"; default "runc crun"),
# BERTH_VM_BENCH_TIMEOUT (s for the whole guest run, default 1800; each
# pod_bench run gets (that - 300) / 2), BERTH_VM_* as for run.sh. Under
# CI=true a missing prerequisite is a failure, as in suite.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
started=$SECONDS
count=${BERTH_VM_BENCH_COUNT:-5}
warmup=${BERTH_VM_BENCH_WARMUP:-2}
driver=${BERTH_VM_BENCH_DRIVER:-systemd}
timeout=${BERTH_VM_BENCH_TIMEOUT:-1800}
# The order of the runs, both in one boot: runc first unless told otherwise.
handlers=${BERTH_VM_BENCH_HANDLERS:-runc crun}

if [[ $(id -u) -ne 0 ]]; then
  echo "hack/vm/bench-handlers.sh: needs root (the image build, the fixtures' device nodes)" >&2
  [[ ${CI:-} == true ]] && exit 1
  echo "hack/vm/bench-handlers.sh: SKIPPED" >&2
  exit 0
fi
for cmd in docker-registry skopeo qemu-system-x86_64 python3 cargo; do
  command -v "$cmd" >/dev/null || {
    echo "hack/vm/bench-handlers.sh: $cmd missing; run hack/setup.sh" >&2
    exit 1
  }
done
if ! [[ $count =~ ^[1-9][0-9]*$ ]]; then
  echo "hack/vm/bench-handlers.sh: BERTH_VM_BENCH_COUNT must be a positive number, got '$count'" >&2
  exit 2
fi
if ! [[ $warmup =~ ^[0-9]+$ ]]; then
  echo "hack/vm/bench-handlers.sh: BERTH_VM_BENCH_WARMUP must be a number, got '$warmup'" >&2
  exit 2
fi
if [[ $handlers != "runc crun" && $handlers != "crun runc" ]]; then
  echo "hack/vm/bench-handlers.sh: BERTH_VM_BENCH_HANDLERS must be 'runc crun' or 'crun runc', got '$handlers'" >&2
  exit 2
fi
if ! [[ $timeout =~ ^[0-9]+$ ]] || ((timeout <= 400)); then
  echo "hack/vm/bench-handlers.sh: BERTH_VM_BENCH_TIMEOUT must be a number of seconds over 400, got '$timeout'" >&2
  exit 2
fi

# shellcheck source=hack/vm/host.sh
. hack/vm/host.sh
vm_image

echo "== hack/vm/bench-handlers.sh: building berthd, berth-shim and pod_bench (release)" >&2
cargo build --release --locked -p berthd -p berth-shim --bins -p berth-e2e --example pod_bench >&2
# CARGO_TARGET_DIR or the workspace's target dir: cargo knows which.
target_dir=$(cargo metadata --format-version 1 --no-deps |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
release=$target_dir/release
for bin in "$release/berthd" "$release/berth-shim" "$release/examples/pod_bench"; do
  if [[ ! -x $bin ]]; then
    echo "hack/vm/bench-handlers.sh: $bin not built" >&2
    exit 1
  fi
done

share=$repo/target/vm-bench-handlers
rm -rf "$share"
mkdir -p "$share/bin"
cp "$release/berthd" "$release/berth-shim" "$release/examples/pod_bench" "$share/bin/"
cp hack/vm/bench-handlers-guest.sh "$share/"

vm_registry

cat >"$share/bench.env" <<ENV
REGISTRY=10.0.2.2:$port
IMAGE=10.0.2.2:$port/berth/busybox:latest
COUNT=$count
WARMUP=$warmup
DRIVER=$driver
HANDLERS="$handlers"
RUN_TIMEOUT=$(((timeout - 300) / 2))
ENV

echo "== hack/vm/bench-handlers.sh: booting the node VM ($count pods per phase, warm-up $warmup, $driver driver, order: $handlers)" >&2
set +e
hack/vm/run.sh "$share" bench-handlers-guest.sh "$timeout"
code=$?
set -e

echo
for handler in $handlers; do
  echo "== pod_bench, handler $handler (guest)"
  cat "$share/bench-$handler.info" 2>/dev/null || echo "(no run info written)"
  cat "$share/bench-$handler.out" 2>/dev/null || echo "(no output written)"
done

# Each run's containers must have been the handler's: state dirs under its
# root (<run root>/runtimes/<handler>) and none under the other's.
verified=ok
for handler in $handlers; do
  info=$(cat "$share/bench-$handler.info" 2>/dev/null || true)
  declare -A peak=()
  for h in $handlers; do
    peak[$h]=$(sed -nE "s/.* peak_$h=([0-9]+).*/\\1/p" <<<"$info")
  done
  for h in $handlers; do
    if [[ -z ${peak[$h]} ]] || { [[ $h == "$handler" ]] && ((peak[$h] == 0)); } ||
      { [[ $h != "$handler" ]] && ((peak[$h] != 0)); }; then
      echo "hack/vm/bench-handlers.sh: the $handler run's containers were not all $handler's ($info)" >&2
      verified=FAILED
      break
    fi
  done
  unset peak
done

# p50 HANDLER PHASE STEP: pod_bench's p50 in ms, empty if missing.
p50() {
  sed -nE "s/^$1 $2 $3 p50_ms=([0-9.]+) .*/\\1/p" "$share/bench-$1.out" 2>/dev/null || true
}
echo "== crun/runc, p50 per phase and step (COUNT=$count, warm-up $warmup, order: $handlers; node VM under TCG)"
for phase in seq par; do
  for step in run create start ready; do
    r=$(p50 runc "$phase" "$step")
    c=$(p50 crun "$phase" "$step")
    if [[ -z $r || -z $c ]]; then
      echo "$phase $step p50: (missing: runc '${r}', crun '${c}')"
      continue
    fi
    awk -v p="$phase" -v s="$step" -v r="$r" -v c="$c" \
      'BEGIN { printf "%s %-6s p50: runc %8.2f ms, crun %8.2f ms, crun/runc = %.2fx\n", p, s, r, c, (r > 0 ? c / r : 0) }'
  done
done
echo "== figures"
vm_figures
grep -h -e ': systemctl ' -e '^systemctl ' -e '^warm-up ' "$share/log" 2>/dev/null || true
echo "bench wall time: $((SECONDS - started)) s"
echo "handlers verified (state dirs under each handler's root): $verified"
if ((code != 0)) || [[ $verified != ok ]]; then
  echo "hack/vm/bench-handlers.sh: FAILED (guest exit $code, handlers $verified; output: $share/log, console: $share/console.log)" >&2
  exit 1
fi
echo "hack/vm/bench-handlers.sh: OK"
