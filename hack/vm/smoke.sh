#!/usr/bin/env bash
# Proves the node VM: builds (or reuses) the image, builds berthd, berth-shim
# and the foundation end-to-end test binary on the host, boots the VM with
# them in the share and checks the guest is the node Berth targets: systemd
# running, cgroup v2 only, AppArmor enabled, runc and crun present, the host
# reachable at 10.0.2.2. Then it runs the foundation tests in the guest.
#
# Exit code: 0 when the guest checks pass. The foundation tests' result is
# reported (counts, failures) but does not fail the smoke: the guest is a new
# kind of node and what fails there is product work, not VM breakage.
#
#   hack/vm/smoke.sh            (as root, after hack/setup.sh)
# Environment: CARGO_PROFILE (default dev), BERTH_VM_* as for run.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
smoke_started=$SECONDS
profile=${CARGO_PROFILE:-dev}

# The image: timed, and whether the cache served it.
key_dirs_before=$(ls -d /var/cache/berth-vm/*/ "$repo"/target/vm/*/ 2>/dev/null || true)
t=$SECONDS
image=$(hack/vm/build.sh)
build_seconds=$((SECONDS - t))
if grep -qxF "$image/" <<<"$key_dirs_before"; then build_kind=cached; else build_kind=cold; fi

echo "== hack/vm/smoke.sh: building berthd, berth-shim and the foundation tests ($profile)" >&2
test_bin=$(hack/vm/host-binaries.sh "$profile")
bin_dir=$(dirname "$(dirname "$test_bin")")

share=$repo/target/vm-smoke
rm -rf "$share"
mkdir -p "$share/bin" "$share/www"
cp "$bin_dir/berthd" "$bin_dir/berth-shim" "$share/bin/"
cp "$test_bin" "$share/bin/e2e"

# A host service on loopback only, which the guest must reach as 10.0.2.2:
# what the test registry will be.
token=$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
echo "$token" >"$share/www/token"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
python3 -m http.server --bind 127.0.0.1 --directory "$share/www" "$port" >/dev/null 2>&1 &
http=$!
trap 'kill "$http" 2>/dev/null || true' EXIT

cat >"$share/guest.sh" <<GUEST
#!/bin/bash
# Runs in the node VM (written by hack/vm/smoke.sh). One line per check in
# checks; exit code 0 only when every check passes.
set -uo pipefail
cd /mnt/share
: >checks
failed=0
check() { # <name> <expected (extended regex)> <actual>
  if [[ \$3 =~ ^(\$2)\$ ]]; then echo "PASS \$1: \$3" >>checks
  else echo "FAIL \$1: '\$3', want '\$2'" >>checks; failed=1; fi
}
check system-state 'running|degraded' "\$(systemctl is-system-running)"
check cgroup-fs cgroup2fs "\$(stat -fc %T /sys/fs/cgroup)"
check apparmor-enabled Y "\$(cat /sys/module/apparmor/parameters/enabled)"
check runc 'runc version .*' "\$(runc --version | head -n1)"
check crun 'crun version .*' "\$(crun --version | head -n1)"
# bash's /dev/tcp: the guest needs no HTTP client for this.
reply=\$(timeout 10 bash -c 'exec 3<>/dev/tcp/10.0.2.2/$port &&
  printf "GET /token HTTP/1.0\r\nHost: 10.0.2.2\r\n\r\n" >&3 && cat <&3' | tail -n1)
check host-at-10.0.2.2 '$token' "\$reply"
cat checks

echo "== foundation tests (BERTH_BIN_DIR=/mnt/share/bin CI=true)"
t=\$SECONDS
BERTH_BIN_DIR=/mnt/share/bin CI=true ./bin/e2e foundation:: >foundation.log 2>&1
echo "foundation exit \$? after \$((SECONDS - t)) s" >foundation.result
cat foundation.result
exit \$failed
GUEST

echo "== hack/vm/smoke.sh: booting the node VM" >&2
set +e
hack/vm/run.sh "$share" guest.sh "${SMOKE_TIMEOUT:-1800}"
code=$?
set -e
kill "$http" 2>/dev/null || true

# shellcheck source=/dev/null
[[ -f $share/run-stats ]] && . "$share/run-stats"
echo
echo "== node VM smoke: figures"
echo "image build ($build_kind): ${build_seconds} s  ($image)"
echo "boot to running (host clock): ${boot_seconds:-?} s; guest uptime then: $(cut -d' ' -f2 "$share/system-state" 2>/dev/null || echo '?') s"
echo "QEMU run: ${qemu_seconds:-?} s, peak RSS ${peak_rss_mib:-?} MiB"
echo "smoke wall time: $((SECONDS - smoke_started)) s"
echo "== guest checks"
cat "$share/checks" 2>/dev/null || echo "(none written)"
echo "== foundation tests in the guest (not part of the smoke's verdict)"
if [[ -f $share/foundation.log ]]; then
  cat "$share/foundation.result" 2>/dev/null || true
  grep -E '^test result:' "$share/foundation.log" || echo "(no test result line)"
  grep -E '^test .* FAILED$' "$share/foundation.log" || true
  echo "(full output: $share/foundation.log)"
else
  echo "(not run)"
fi
if ((code != 0)); then
  echo "hack/vm/smoke.sh: FAILED (run.sh exit $code; guest console: $share/console.log)" >&2
  exit 1
fi
echo "hack/vm/smoke.sh: OK"
