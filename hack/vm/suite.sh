#!/usr/bin/env bash
# The node VM suite (issue 15): e2e/tests/e2e/node.rs in the node VM, against a
# berthd that systemd started from dist/berth.service. On the host it
# builds (or reuses) the image, builds berthd, berth-shim and the node test
# binary, serves the busybox fixture from a registry on the host's loopback
# (the guest's 10.0.2.2), then boots the VM once; hack/vm/suite-guest.sh does
# the rest in the guest. Prints each case's result, the figures and the wall
# time; exits non-zero if a case failed or did not run.
#
#   hack/vm/suite.sh            (as root, after hack/setup.sh)
# Environment: BERTH_VM_SUITE_DRIVERS (cgroup drivers to run the cases with,
# in order; default "systemd cgroupfs", the node's default first),
# CARGO_PROFILE (default dev), BERTH_VM_* as for run.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
started=$SECONDS
profile=${CARGO_PROFILE:-dev}
drivers=${BERTH_VM_SUITE_DRIVERS:-systemd cgroupfs}

# As the e2e tests' can_run: a host that cannot run the suite says so, and
# under CI=true that is a failure, never a pass.
if [[ $(id -u) -ne 0 ]]; then
  echo "hack/vm/suite.sh: needs root (the image build, the fixtures' device nodes)" >&2
  [[ ${CI:-} == true ]] && exit 1
  echo "hack/vm/suite.sh: SKIPPED (not counted as a pass under CI=true)" >&2
  exit 0
fi
for cmd in docker-registry skopeo qemu-system-x86_64 python3; do
  command -v "$cmd" >/dev/null || {
    echo "hack/vm/suite.sh: $cmd missing; run hack/setup.sh" >&2
    exit 1
  }
done

# shellcheck source=hack/vm/host.sh
. hack/vm/host.sh
vm_image

echo "== hack/vm/suite.sh: building berthd, berth-shim and the e2e tests ($profile)" >&2
test_bin=$(hack/vm/host-binaries.sh "$profile")
# The e2e modules whose cases need a real node (AppArmor, cgroup v2 only,
# systemd as PID 1): they start their own berthd through the harness, after
# the node cases; their node-only cases are #[ignore]d elsewhere. An entry
# may name a submodule (nri::node: NRI adjustments on cgroup v2).
harness_tests="apparmor cgroup_stats systemd_driver nri::node"
bin_dir=$(dirname "$(dirname "$test_bin")")

share=$repo/target/vm-suite
rm -rf "$share"
mkdir -p "$share/bin"
cp "$bin_dir/berthd" "$bin_dir/berth-shim" "$bin_dir/nri-test-plugin" "$share/bin/"
cp "$test_bin" "$share/bin/e2e"
cp hack/vm/suite-guest.sh "$share/"

vm_registry

cat >"$share/suite.env" <<ENV
REGISTRY=10.0.2.2:$port
IMAGE=10.0.2.2:$port/berth/busybox:latest
DRIVERS="$drivers"
HARNESS_TESTS="$harness_tests"
ENV

echo "== hack/vm/suite.sh: booting the node VM" >&2
set +e
hack/vm/run.sh "$share" suite-guest.sh "${BERTH_VM_SUITE_TIMEOUT:-900}"
code=$?
set -e

echo
echo "== node VM suite: cases (driver, case, result)"
cat "$share/results" 2>/dev/null || echo "(no results written)"
echo "== figures"
vm_figures
grep -h -e ': systemctl ' -e '^test result: ' "$share/log" 2>/dev/null || true
echo "suite wall time: $((SECONDS - started)) s"
if ((code != 0)); then
  echo "hack/vm/suite.sh: FAILED (guest exit $code; output: $share/log, console: $share/console.log)" >&2
  exit 1
fi
echo "hack/vm/suite.sh: OK"
