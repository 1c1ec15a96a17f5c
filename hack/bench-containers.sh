#!/usr/bin/env bash
# Pod start-up, berthd vs containerd, in one run on this machine: COUNT pods
# with one busybox `sleep` container each, created and started one after
# another and then all at once, by each runtime from the same local
# docker-registry, with the same runc and CNI plugins (each on its own bridge
# and subnet, each with throw-away state). Prints p50/p90 of RunPodSandbox,
# CreateContainer, StartContainer and pod-ready, the daemons' RSS, the RSS per
# shim (berth-shim per container, containerd-shim-runc-v2 per pod) and, from
# hack/shim-rss.sh, berth-shim's vs conmon's per container.
#
# usage: sudo hack/bench-containers.sh [COUNT]   (default 30)
set -euo pipefail
cd "$(dirname "$0")/.."
COUNT=${1:-30}

if [[ $(id -u) -ne 0 ]]; then
  echo "hack/bench-containers.sh: needs root (namespaces, mounts, iptables)" >&2
  exit 1
fi
bash hack/setup.sh
cargo build --release --locked -q -p berthd -p berth-runtime --bins
cargo build --release --locked -q -p berth-e2e --example container_bench
BENCH=target/release/examples/container_bench

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

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_socket() {
  for _ in $(seq 200); do [[ -S $1 ]] && return 0; sleep 0.05; done
  echo "hack/bench-containers.sh: $1 did not appear" >&2
  exit 1
}

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

# --- the registry and the image (busybox-static with `sh` and `sleep`; its
# default command also makes it containerd's pause image)
PORT=$(free_port)
REGISTRY=127.0.0.1:$PORT
IMAGE=$REGISTRY/bench/busybox:latest
mkdir -p "$WORK/registry"
cat >"$WORK/registry/config.yml" <<EOF
version: 0.1
log:
  level: error
storage:
  filesystem:
    rootdirectory: $WORK/registry/storage
http:
  addr: $REGISTRY
EOF
docker-registry serve "$WORK/registry/config.yml" >"$WORK/registry/log" 2>&1 &
PIDS+=($!)
OCI="$WORK/oci"
umoci init --layout "$OCI"
umoci new --image "$OCI:bench"
umoci unpack --image "$OCI:bench" "$WORK/bundle" >/dev/null
install -D /bin/busybox "$WORK/bundle/rootfs/bin/busybox"
ln -s busybox "$WORK/bundle/rootfs/bin/sh"
ln -s busybox "$WORK/bundle/rootfs/bin/sleep"
umoci repack --image "$OCI:bench" "$WORK/bundle"
umoci config --image "$OCI:bench" --config.env PATH=/bin --config.cmd sleep --config.cmd 2147483647
for _ in $(seq 200); do
  (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
  sleep 0.05
done
skopeo copy --quiet --dest-tls-verify=false "oci:$OCI:bench" "docker://$IMAGE"

# --- berthd
conflist berth-bench bbench0 10.239.0.0/24 "$WORK/berth/net.d"
cat >"$WORK/berth/registries.conf" <<EOF
[[registry]]
location = "$REGISTRY"
insecure = true
EOF
cat >"$WORK/berth/berth.toml" <<EOF
[cni]
conf_dir = "$WORK/berth/net.d"
bin_dirs = ["/usr/lib/cni"]
[image]
registries_config = "$WORK/berth/registries.conf"
EOF
target/release/berthd --config "$WORK/berth/berth.toml" --config-dir "$WORK/berth/berth.d" \
  --root "$WORK/berth/root" --run-root "$WORK/berth/run" --listen "$WORK/berth/berth.sock" \
  --log-level warn >"$WORK/berth/log" 2>&1 &
BERTHD=$!
PIDS+=("$BERTHD")
wait_socket "$WORK/berth/berth.sock"
"$BENCH" "$WORK/berth/berth.sock" "$COUNT" berthd "$IMAGE" "$BERTHD" berth-shim | tee "$WORK/berth.out"
kill "$BERTHD"

# --- containerd (1.6 reads a mirror only from a hosts.toml with a [host] table)
conflist containerd-bench cbench0 10.239.1.0/24 "$WORK/containerd/net.d"
mkdir -p "$WORK/containerd/certs.d/$REGISTRY"
cat >"$WORK/containerd/certs.d/$REGISTRY/hosts.toml" <<EOF
server = "http://$REGISTRY"
[host."http://$REGISTRY"]
  capabilities = ["pull", "resolve"]
  skip_verify = true
EOF
cat >"$WORK/containerd/config.toml" <<EOF
version = 2
root = "$WORK/containerd/root"
state = "$WORK/containerd/state"
[grpc]
  address = "$WORK/containerd/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$IMAGE"
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
containerd --config "$WORK/containerd/config.toml" --log-level warn >"$WORK/containerd/log" 2>&1 &
CONTAINERD=$!
PIDS+=("$CONTAINERD")
wait_socket "$WORK/containerd/containerd.sock"
"$BENCH" "$WORK/containerd/containerd.sock" "$COUNT" containerd "$IMAGE" "$CONTAINERD" containerd-shim \
  | tee "$WORK/containerd.out"

field() { # file phase key
  grep " $2 " "$1" | sed -E "s/.* $3=([0-9.]+).*/\\1/"
}
echo
for phase in seq par; do
  for step in run create start ready; do
    awk -v step="$step" -v phase="$phase" \
      -v b50="$(field "$WORK/berth.out" "$phase" "${step}_p50_ms")" \
      -v b90="$(field "$WORK/berth.out" "$phase" "${step}_p90_ms")" \
      -v c50="$(field "$WORK/containerd.out" "$phase" "${step}_p50_ms")" \
      -v c90="$(field "$WORK/containerd.out" "$phase" "${step}_p90_ms")" \
      'BEGIN { printf "%s %-6s p50 berthd %8.2f ms containerd %8.2f ms (berthd/containerd %.2fx)  p90 %8.2f / %8.2f ms\n", phase, step, b50, c50, b50 / c50, b90, c90 }'
  done
done
awk -v b="$(field "$WORK/berth.out" rss daemon_kib)" -v c="$(field "$WORK/containerd.out" rss daemon_kib)" \
  -v bs="$(field "$WORK/berth.out" rss shim_kib)" -v cs="$(field "$WORK/containerd.out" rss shim_kib)" \
  -v n=$((COUNT + 1)) \
  'BEGIN { printf "daemon RSS with %d pods: berthd %d KiB, containerd %d KiB (%.2fx)\nshim RSS: berth-shim %d KiB per container, containerd-shim-runc-v2 %d KiB per pod\n", n, b, c, b / c, bs, cs }'
echo "berth-shim vs conmon per container (hack/shim-rss.sh):"
bash hack/shim-rss.sh
