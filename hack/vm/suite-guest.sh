#!/bin/bash
# The node suite's guest half (hack/vm/suite.sh copies it into the share and
# run.sh runs it in the node VM): installs the host-built berthd and
# berth-shim as a node would (dist/berth.service is in the image), and for
# each cgroup driver configures berthd, starts it through systemd and runs
# e2e/tests/e2e/node.rs against it. Writes one "<driver> <case> <ok|FAILED>"
# line per case to results; exits non-zero if any case failed or did not run.
#
# Then it runs the e2e modules in HARNESS_TESTS, which start their own berthd
# (the harness, with BERTH_BIN_DIR and BERTH_E2E_REGISTRY): "harness <test>
# <case> <ok|FAILED>" lines.
#
# Reads suite.env from the share: REGISTRY (host:port as the guest reaches
# it), IMAGE, DRIVERS and HARNESS_TESTS (space-separated).
set -uo pipefail
share=/mnt/share
cd "$share" || exit 1
# shellcheck source=/dev/null
. ./suite.env
: >results
failed=0

install -m 0755 bin/berthd bin/berth-shim /usr/local/bin/
mkdir -p /etc/berth /etc/containers
# The host's registry, over plain HTTP.
printf '[[registry]]\nlocation = "%s"\ninsecure = true\n' "$REGISTRY" >/etc/containers/registries.conf
systemctl daemon-reload

restart_case=node::restart_keeps_running_containers
for driver in $DRIVERS; do
  echo "== node suite, cgroup driver $driver"
  cat >/etc/berth/berth.toml <<CONF
cgroup_driver = "$driver"
[runtimes.crun]
path = "/usr/bin/crun"
CONF
  t=$SECONDS
  if ! systemctl start berth; then
    echo "$driver systemctl-start-berth FAILED" >>results
    systemctl status berth --no-pager -l | tail -n 20
    journalctl -u berth --no-pager | tail -n 40
    failed=1
    continue
  fi
  echo "$driver: systemctl start berth (returns on READY=1): $((SECONDS - t)) s"
  export BERTH_NODE_IMAGE=$IMAGE BERTH_NODE_CGROUP_DRIVER=$driver CI=true
  # The restart case restarts berthd under the others' feet: it runs alone.
  timeout 600 ./bin/e2e node:: --ignored --test-threads=2 --skip "$restart_case" >"node-$driver.log" 2>&1
  timeout 300 ./bin/e2e --ignored --exact "$restart_case" --nocapture >>"node-$driver.log" 2>&1
  grep -h '^figure: ' "node-$driver.log" | sed "s/^figure: /$driver: /"
  grep -h '^test result: ' "node-$driver.log"
  journalctl -u berth --no-pager >"journal-$driver.log"
  sed -n "s/^test node::\([a-z0-9_]*\) \.\.\. \(ok\|FAILED\)$/$driver \1 \2/p" "node-$driver.log" >>results
  # Fewer result lines than cases means a case did not run (or hung).
  cases=$(./bin/e2e node:: --ignored --list 2>/dev/null | grep -c ': test$')
  ran=$(grep -c "^$driver " results)
  if grep -q "^$driver .* FAILED$" results || ((ran < cases)); then
    echo "$driver: $ran of $cases cases reported"
    failed=1
    cat "node-$driver.log"
    tail -n 60 "journal-$driver.log"
  fi
  systemctl stop berth
  if [[ $driver == systemd ]]; then
    # Every pod was removed: no scope or slice of Berth's may be left.
    left=$(systemctl list-units --all --plain --no-legend --no-pager |
      awk '{print $1}' | grep -E '^(berth-.*\.scope|kubepods.*\.slice)$')
    if [[ -n $left ]]; then
      echo "$driver no_unit_left_after_the_cases FAILED" >>results
      echo "units left: $left"
      failed=1
    else
      echo "$driver no_unit_left_after_the_cases ok" >>results
    fi
  fi
  # The next driver starts from an empty node.
  rm -rf /var/lib/berth /run/berth
done
for t in $HARNESS_TESTS; do
  echo "== e2e $t on the node"
  s=$SECONDS
  BERTH_BIN_DIR=$share/bin BERTH_E2E_REGISTRY=$REGISTRY CI=true \
    timeout 900 ./bin/e2e "$t::" --include-ignored --test-threads=2 >"$t.log" 2>&1
  code=$?
  echo "$t: exit $code after $((SECONDS - s)) s"
  grep -h '^test result: ' "$t.log"
  sed -n "s/^test $t::\([a-z0-9_:]*\) \.\.\. \(ok\|FAILED\)$/harness $t \1 \2/p" "$t.log" >>results
  cases=$(./bin/e2e "$t::" --include-ignored --list 2>/dev/null | grep -c ': test$')
  ran=$(grep -c "^harness $t " results)
  if ((code != 0 || ran < cases)); then
    echo "$t: $ran of $cases cases reported, exit $code"
    failed=1
    cat "$t.log"
  fi
done
cat results
exit $failed
