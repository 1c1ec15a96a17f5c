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
cargo build --release --locked -q -p berth-e2e --example pod_bench
BENCH=target/release/examples/pod_bench

WORK=$(mktemp -d /tmp/berth-bench-XXXXXX)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  ip link del bbench0 2>/dev/null || true
  ip link del cbench0 2>/dev/null || true
  grep -o " $WORK[^ ]*" /proc/self/mountinfo | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
export POD_BENCH_LOGS=$WORK/logs

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
      "ipam": { "type": "host-local", "dataDir": "$WORK/ipam",
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
target/release/berthd --config "$WORK/berth/berth.toml" --config-dir "$WORK/berth/berth.d" \
  --root "$WORK/berth/root" --run-root "$WORK/berth/run" --listen "$WORK/berth/berth.sock" \
  --log-level warn >"$WORK/berth/log" 2>&1 &
BERTHD_PID=$!
PIDS+=("$BERTHD_PID")
wait_socket "$WORK/berth/berth.sock"
berth_out=$("$BENCH" "$WORK/berth/berth.sock" "$COUNT" berthd "$IMAGE" "$BERTHD_PID" berth-shim)
echo "$berth_out"

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
root = "$WORK/containerd/root"
state = "$WORK/containerd/state"
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
echo "berth-shim vs conmon (Debian) per container, same runc and bundles:"
bash hack/shim-rss.sh
