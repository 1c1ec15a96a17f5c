#!/usr/bin/env bash
# Pod start-up: berthd vs containerd on this machine, same run, same runc,
# same CNI plugins (bridge + host-local + portmap from /usr/lib/cni), each on
# its own bridge and subnet and its own throw-away state. Each pod is
# RunPodSandbox + CreateContainer + StartContainer of one busybox `sleep`
# container that both pull from a local docker-registry (the `busybox`
# fixture of hack/fixtures.sh): COUNT pods one after another, then COUNT at
# once. Prints p50/p90 per step, the daemons' RSS and the shims' RSS per
# container while all 2×COUNT+1 pods run, then berth-shim vs conmon per
# container (hack/shim-rss.sh).
#
# usage: sudo hack/bench-pods.sh [COUNT]   (default 30)
# BENCH_NRI=1 also runs berthd with NRI on and the e2e test plugin
# subscribed to every event, and prints what that adds to pod ready.
# containerd runs its sandboxes from a pause image; this script builds one
# from busybox-static with umoci and imports it.
set -euo pipefail
cd "$(dirname "$0")/.."
COUNT=${1:-30}

if [[ $(id -u) -ne 0 ]]; then
  echo "hack/bench-pods.sh: needs root (namespaces, mounts, iptables)" >&2
  exit 1
fi
bash hack/setup.sh
cargo build --release --locked -q -p berthd -p berth-shim --bins
cargo build --release --locked -q -p berth-e2e --example pod_bench --example floor_bench
BENCH=target/release/examples/pod_bench

WORK=$(mktemp -d /tmp/berth-bench-XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  ip link del bbench0 2>/dev/null || true
  ip link del cbench0 2>/dev/null || true
  ip link del fbench0 2>/dev/null || true
  find /sys/fs/cgroup -depth -type d -name 'berth-floor' -exec rmdir {} + 2>/dev/null || true
  grep -o " $WORK[^ ]*" /proc/self/mountinfo | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
export POD_BENCH_LOGS=$WORK/logs
# What a node keeps in /run (berthd's run root, containerd's state, the
# bundles) is on a tmpfs, as /run is there; what it keeps in /var/lib (the
# daemons' roots, writable layers, IPAM) on a fresh journaled ext4, as a
# node's disk. (The disk under /tmp may be anything: this VM's is ext4
# without a journal, where each new inode costs a scan of the recently
# deleted ones, so the figures drifted with every build and run.)
mkdir -p "$WORK/run" "$WORK/disk"
mount -t tmpfs -o mode=0755 tmpfs "$WORK/run"
truncate -s 8G "$WORK/disk.img"
mkfs.ext4 -q -F "$WORK/disk.img"
mount -o loop "$WORK/disk.img" "$WORK/disk"

# --- the image both pull, from a local registry
bash hack/fixtures.sh "$WORK/fixtures" >/dev/null
PORT=$((20000 + RANDOM % 20000))
cat >"$WORK/registry.yml" <<EOF
version: 0.1
log:
  level: error
storage:
  filesystem:
    rootdirectory: $WORK/registry
http:
  addr: 127.0.0.1:$PORT
EOF
docker-registry serve "$WORK/registry.yml" >"$WORK/registry.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 200); do (echo >"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.05; done
skopeo copy --quiet --dest-tls-verify=false "oci:$WORK/fixtures/oci:busybox" \
  "docker://127.0.0.1:$PORT/berth/busybox:latest"
IMAGE=127.0.0.1:$PORT/berth/busybox:latest

# conflist NAME BRIDGE SUBNET DIR
conflist() {
  mkdir -p "$4"
  cat >"$4/10-bench.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "$1",
  "plugins": [
    { "type": "bridge", "bridge": "$2", "isGateway": true, "ipMasq": true,
      "ipam": { "type": "host-local", "dataDir": "$WORK/disk/ipam",
                "routes": [{ "dst": "0.0.0.0/0" }],
                "ranges": [[{ "subnet": "$3" }]] } },
    { "type": "portmap", "capabilities": { "portMappings": true } }
  ]
}
EOF
}

wait_socket() {
  for _ in $(seq 200); do [[ -S $1 ]] && return 0; sleep 0.05; done
  echo "hack/bench-pods.sh: $1 did not appear" >&2
  exit 1
}

# start_berthd NAME LOG_LEVEL: berthd with $WORK/NAME/berth.toml, its root
# on the node-like disk and its run root on the tmpfs; sets STARTED_PID.
start_berthd() {
  target/release/berthd --config "$WORK/$1/berth.toml" --config-dir "$WORK/$1/berth.d" \
    --root "$WORK/disk/$1" --run-root "$WORK/run/$1" --listen "$WORK/$1/berth.sock" \
    --log-level "$2" >"$WORK/$1/log" 2>&1 &
  STARTED_PID=$!
  PIDS+=("$STARTED_PID")
  wait_socket "$WORK/$1/berth.sock"
}

# --- berthd
conflist berth-bench bbench0 10.239.0.0/24 "$WORK/berth/net.d"
cat >"$WORK/berth/registries.conf" <<EOF
[[registry]]
location = "127.0.0.1:$PORT"
insecure = true
EOF
cat >"$WORK/berth/berth.toml" <<EOF
[image]
registries_config = "$WORK/berth/registries.conf"
[cni]
conf_dir = "$WORK/berth/net.d"
bin_dirs = ["/usr/lib/cni"]
EOF
start_berthd berth "warn,berthd::rpc_trace=debug"
BERTHD_PID=$STARTED_PID
# One of berthd's bundles is the floor's template: copied while it exists.
(
  for _ in $(seq 600); do
    config=$(find "$WORK/run/berth" -name config.json -path '*/containers/*' 2>/dev/null | head -1)
    [[ -n $config ]] && cp "$config" "$WORK/template.json" && exit 0
    sleep 0.05
  done
) &
TEMPLATE_PID=$!
berth_out=$("$BENCH" "$WORK/berth/berth.sock" "$COUNT" berthd "$IMAGE" "$BERTHD_PID" berth-shim)
wait "$TEMPLATE_PID"
echo "$berth_out"
# Berth's own timeline per phase (the warm-up pod left out): the p50 of
# every step berthd reports on the RPC (its `steps` field).
steps_out=$(python3 - "$WORK/berth/log" "$COUNT" <<'PY'
import re, statistics, sys
log, count = sys.argv[1], int(sys.argv[2])
done = {}
for line in open(log):
    m = re.search(r'rpc\{rpc=(\w+).*rpc done latency_us=(\d+)(?: steps="([^"]*)")?', line)
    if m:
        done.setdefault(m.group(1), []).append((int(m.group(2)), m.group(3) or ""))
for phase, first in (("seq", 1), ("par", count + 1)):
    for rpc in ("RunPodSandbox", "CreateContainer", "StartContainer"):
        calls = done.get(rpc, [])[first:first + count]
        steps = {}
        for _, timeline in calls:
            seen = {}
            for pair in timeline.split():
                name, took = pair.split("=")
                seen[name] = seen.get(name, 0.0) + float(took)
            for name, took in seen.items():
                steps.setdefault(name, []).append(took)
        if calls:
            total = statistics.median(us / 1000 for us, _ in calls)
            parts = " ".join(f"{n}={statistics.median(v):.2f}" for n, v in steps.items())
            print(f"berthd steps {phase} {rpc} server_ms={total:.2f} {parts}")
PY
)
echo "$steps_out"

# --- berthd with NRI on and one plugin subscribed to every event, which
# answers at once (BENCH_NRI=1): what NRI adds to pod start.
if [[ ${BENCH_NRI:-} == 1 ]]; then
  kill "$BERTHD_PID" && wait "$BERTHD_PID" 2>/dev/null || true
  cargo build --release --locked -q -p berth-e2e --bin nri-test-plugin
  N=$WORK/berth-nri
  conflist berth-nri bnri0 10.239.3.0/24 "$N/net.d"
  sed -e "s|$WORK/berth/net.d|$N/net.d|" "$WORK/berth/berth.toml" >"$N/berth.toml"
  printf '[nri]\nenable = true\nsocket_path = "%s"\nplugin_path = "%s"\n' \
    "$N/nri.sock" "$N/plugins" >>"$N/berth.toml"
  start_berthd berth-nri "warn,berth_nri=info"
  NRI_BERTHD_PID=$STARTED_PID
  echo '{}' >"$N/behaviour.json"
  target/release/nri-test-plugin --socket "$N/nri.sock" --name bench --idx 10 \
    --behaviour "$N/behaviour.json" &
  PIDS+=("$!")
  for _ in $(seq 200); do grep -q "registered and synchronized" "$N/log" && break; sleep 0.05; done
  grep -q "registered and synchronized" "$N/log" || {
    echo "hack/bench-pods.sh: the NRI plugin did not register" >&2
    exit 1
  }
  nri_out=$("$BENCH" "$N/berth.sock" "$COUNT" berthnri "$IMAGE" "$NRI_BERTHD_PID" berth-shim)
  echo "$nri_out"
fi

# --- the floor: the same work done bare (e2e/examples/floor_bench.rs)
conflist floor-bench fbench0 10.239.2.0/24 "$WORK/floor/net.d"
umoci unpack --image "$WORK/fixtures/oci:busybox" "$WORK/floor/image" >/dev/null
floor_out=$(target/release/examples/floor_bench "$COUNT" "$WORK/disk/floor" "$WORK/run/floor" \
  "$WORK/floor/net.d/10-bench.conflist" "$WORK/template.json" "$WORK/floor/image/rootfs")
echo "$floor_out"

# --- containerd, with a pause image built from busybox-static
OCI="$WORK/pause-oci"
umoci init --layout "$OCI"
umoci new --image "$OCI:bench"
umoci unpack --image "$OCI:bench" "$WORK/pause-bundle" >/dev/null
install -D /bin/busybox "$WORK/pause-bundle/rootfs/bin/busybox"
umoci repack --image "$OCI:bench" "$WORK/pause-bundle"
umoci config --image "$OCI:bench" --config.entrypoint /bin/busybox \
  --config.cmd sleep --config.cmd 2147483647
tar -C "$OCI" -cf "$WORK/pause.tar" .

conflist containerd-bench cbench0 10.239.1.0/24 "$WORK/containerd/net.d"
cat >"$WORK/containerd/config.toml" <<EOF
version = 2
root = "$WORK/disk/containerd"
state = "$WORK/run/containerd"
[grpc]
  address = "$WORK/containerd/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "berth.local/pause:bench"
  # This VM lacks CAP_SYS_RESOURCE: the sandbox oom_score_adj must not go
  # below containerd's own, or runc fails.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$WORK/containerd/certs.d"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$WORK/containerd/net.d"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
EOF
# containerd 1.6 uses a registry's hosts.toml only with a [host] table.
mkdir -p "$WORK/containerd/certs.d/127.0.0.1:$PORT"
cat >"$WORK/containerd/certs.d/127.0.0.1:$PORT/hosts.toml" <<EOF
server = "http://127.0.0.1:$PORT"
[host."http://127.0.0.1:$PORT"]
  capabilities = ["pull", "resolve"]
EOF
containerd --config "$WORK/containerd/config.toml" --log-level warn >"$WORK/containerd/log" 2>&1 &
CONTAINERD_PID=$!
PIDS+=("$CONTAINERD_PID")
wait_socket "$WORK/containerd/containerd.sock"
ctr --address "$WORK/containerd/containerd.sock" -n k8s.io images import \
  --base-name berth.local/pause "$WORK/pause.tar" >/dev/null
containerd_out=$("$BENCH" "$WORK/containerd/containerd.sock" "$COUNT" containerd "$IMAGE" \
  "$CONTAINERD_PID" containerd-shim-runc-v2)
echo "$containerd_out"

# p50 OUTPUT PHASE STEP
p50() { grep -E "^[a-z]+ $2 $3 " <<<"$1" | sed -E 's/.*p50_ms=([0-9.]+).*/\1/'; }
for phase in seq par; do
  for step in run create start ready; do
    awk -v p="$phase" -v s="$step" -v b="$(p50 "$berth_out" "$phase" "$step")" \
      -v c="$(p50 "$containerd_out" "$phase" "$step")" \
      'BEGIN { printf "%s %-6s p50: berthd %7.2f ms, containerd %7.2f ms, berthd/containerd = %.2fx\n", p, s, b, c, b / c }'
  done
done
# rss OUTPUT KEY
rss() { grep -E "^[a-z]+ rss " <<<"$1" | sed -E "s/.*$2=([0-9]+).*/\\1/"; }
awk -v b="$(rss "$berth_out" daemon_kb)" -v c="$(rss "$containerd_out" daemon_kb)" \
  -v bs="$(rss "$berth_out" shim_kb_per_container)" -v cs="$(rss "$containerd_out" shim_kb_per_container)" \
  'BEGIN { printf "daemon RSS: berthd %d KiB, containerd %d KiB (%.2fx); shim RSS per container: berth-shim %d KiB, containerd-shim-runc-v2 %d KiB (%.2fx)\n", b, c, b / c, bs, cs, bs / cs }'
# server-side pod ready: berthd's own latencies against the floor's parts
server=$(grep -E "^berthd steps seq " <<<"$steps_out" | sed -E 's/.*server_ms=([0-9.]+).*/\1/' | awk '{ s += $1 } END { print s }')
floor=$(sed -nE 's/^floor total p50_ms=([0-9.]+).*/\1/p' <<<"$floor_out")
awk -v s="$server" -v f="$floor" \
  'BEGIN { printf "server-side pod ready p50: berthd %.2f ms, floor %.2f ms, berthd/floor = %.2fx\n", s, f, s / f }'
for rpc in ListPodSandbox ListContainers; do
  for out in "$berth_out" "$containerd_out"; do
    grep -E "^[a-z]+ list $rpc " <<<"$out" || true
  done
done
if [[ ${BENCH_NRI:-} == 1 ]]; then
  for phase in seq par; do
    awk -v p="$phase" -v n="$(p50 "$nri_out" "$phase" ready)" -v b="$(p50 "$berth_out" "$phase" ready)" \
      'BEGIN { printf "%s ready p50 with NRI and one plugin on every event: %.2f ms, without: %.2f ms (%.2fx)\n", p, n, b, n / b }'
  done
fi
echo "berth-shim vs conmon (Debian) per container, same runc and bundles:"
bash hack/shim-rss.sh
