#!/bin/bash
# The handler benchmark's guest half (hack/vm/bench-handlers.sh copies it into
# the share and run.sh runs it in the node VM): installs the host-built berthd
# and berth-shim as a node would (dist/berth.service is in the image),
# configures berthd (the host's registry over plain HTTP, crun as handler
# `crun` beside the default `runc`, the cgroup driver, a bridge network from
# /usr/lib/cni in /etc/cni/net.d), starts it through systemd and runs
# e2e/examples/pod_bench.rs against its socket once per handler in HANDLERS
# (after an unreported warm-up pass with each), with POD_BENCH_HANDLER set
# to it and the handler as the label. Writes
# pod_bench's output to bench-<handler>.out, its stderr to
# bench-<handler>.err, and "<handler> wall_s=.. peak_runc=.. peak_crun=.."
# to bench-<handler>.info (the most container state dirs seen at once under
# each handler's root: which runtime really ran the pods). Exits non-zero if
# berthd did not start or a run (warm-up included) failed.
#
# Reads bench.env from the share: REGISTRY (host:port as the guest reaches
# it), IMAGE, COUNT, WARMUP (pods per phase of the unreported warm-up pass,
# per handler, before the measured runs; 0: none), DRIVER, HANDLERS
# (space-separated, in the runs' order) and RUN_TIMEOUT (seconds per
# pod_bench run).
set -uo pipefail
share=/mnt/share
cd "$share" || exit 1
# shellcheck source=/dev/null
. ./bench.env
failed=0

install -m 0755 bin/berthd bin/berth-shim /usr/local/bin/
mkdir -p /etc/berth /etc/containers /etc/cni/net.d
# The host's registry, over plain HTTP.
printf '[[registry]]\nlocation = "%s"\ninsecure = true\n' "$REGISTRY" >/etc/containers/registries.conf
# As the node suite configures berthd, crun as the second handler.
cat >/etc/berth/berth.toml <<CONF
cgroup_driver = "$DRIVER"
[runtimes.crun]
path = "/usr/bin/crun"
CONF
# The image has the CNI plugins (containernetworking-plugins, in
# /usr/lib/cni, one of berthd's default bin_dirs) but no network config: the
# node suite's pods use the node's network. pod_bench's pods have their own,
# so give them the bridge network hack/bench-pods.sh gives them.
cat >/etc/cni/net.d/10-bench.conflist <<'JSON'
{
  "cniVersion": "1.0.0",
  "name": "berth-bench",
  "plugins": [
    { "type": "bridge", "bridge": "bbench0", "isGateway": true, "ipMasq": true,
      "ipam": { "type": "host-local",
                "routes": [{ "dst": "0.0.0.0/0" }],
                "ranges": [[{ "subnet": "10.239.0.0/24" }]] } },
    { "type": "portmap", "capabilities": { "portMappings": true } }
  ]
}
JSON
systemctl daemon-reload

t=$SECONDS
if ! systemctl start berth; then
  echo "systemctl start berth FAILED"
  systemctl status berth --no-pager -l | tail -n 20
  journalctl -u berth --no-pager | tail -n 40
  exit 1
fi
echo "systemctl start berth (returns on READY=1): $((SECONDS - t)) s"
pid=$(systemctl show -p MainPID --value berth)
socket=/run/berth/berth.sock

# The most container state dirs seen at once under the runc and the crun
# handler's roots, sampled once a second (globs: no fork but sleep's) until
# .stop-sampling exists; prints "peak_runc=.. peak_crun=..".
peaks() {
  local runc=0 crun=0 dirs
  shopt -s nullglob
  while [[ ! -e .stop-sampling ]]; do
    dirs=(/run/berth/runtimes/runc/*/)
    ((${#dirs[@]} > runc)) && runc=${#dirs[@]}
    dirs=(/run/berth/runtimes/crun/*/)
    ((${#dirs[@]} > crun)) && crun=${#dirs[@]}
    sleep 1
  done
  echo "peak_runc=$runc peak_crun=$crun"
}

# The first run in a boot pays for what the second finds warm (TCG's
# translations, the page cache, the netfilter modules): an unreported pass
# per handler first, WARMUP pods per phase.
if ((WARMUP > 0)); then
  for handler in $HANDLERS; do
    echo "== warm-up: pod_bench, handler $handler, $WARMUP pods sequential + $WARMUP parallel"
    s=$SECONDS
    if ! POD_BENCH_HANDLER=$handler POD_BENCH_LOGS=/tmp/pod-bench-logs/warm-up-$handler \
      timeout "${RUN_TIMEOUT:-1200}" ./bin/pod_bench "$socket" "$WARMUP" "warm-up-$handler" "$IMAGE" "$pid" berth-shim \
      >"warm-up-$handler.out" 2>&1; then
      echo "warm-up $handler FAILED"
      cat "warm-up-$handler.out"
      failed=1
    fi
    echo "warm-up $handler: $((SECONDS - s)) s"
  done
fi

for handler in $HANDLERS; do
  echo "== pod_bench, handler $handler, $COUNT pods sequential + $COUNT parallel"
  rm -f .stop-sampling
  peaks >.peaks &
  sampler=$!
  s=$SECONDS
  POD_BENCH_HANDLER=$handler POD_BENCH_LOGS=/tmp/pod-bench-logs/$handler \
    timeout "${RUN_TIMEOUT:-1200}" ./bin/pod_bench "$socket" "$COUNT" "$handler" "$IMAGE" "$pid" berth-shim \
    >"bench-$handler.out" 2>"bench-$handler.err"
  code=$?
  wall=$((SECONDS - s))
  touch .stop-sampling
  wait "$sampler"
  echo "$handler wall_s=$wall exit=$code $(<.peaks)" >"bench-$handler.info"
  cat "bench-$handler.info"
  cat "bench-$handler.out"
  if ((code != 0)); then
    echo "$handler: pod_bench exit $code"
    cat "bench-$handler.err"
    failed=1
  fi
done
rm -f .stop-sampling .peaks
journalctl -u berth --no-pager >journal.log
if ((failed)); then
  tail -n 60 journal.log
fi
systemctl stop berth
exit $failed
