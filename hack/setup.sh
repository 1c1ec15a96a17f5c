#!/usr/bin/env bash
# Installs every system package Berth builds, runs, tests or benchmarks with.
# Idempotent: installs only what is missing, and touches apt only then.
set -euo pipefail

PACKAGES=(
  # build
  protobuf-compiler
  # run: OCI runtimes, CNI plugins, namespaces and networking
  runc crun containernetworking-plugins iproute2 iptables util-linux
  # test fixtures: a local registry and images built from busybox
  docker-registry skopeo umoci busybox-static openssl apache2-utils jq ca-certificates zstd attr
  # test clients: a venv for Python's grpcio (below)
  python3-venv
  # benchmark peers
  containerd conmon
  # the node VM (hack/vm): rootfs, initramfs, ext4 image, TCG guest
  mmdebstrap cpio kmod e2fsprogs qemu-system-x86 python3
)

missing=()
for pkg in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$pkg")
  fi
done

if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "hack/setup.sh: missing packages: ${missing[*]}; run as root to install them" >&2
    exit 1
  fi
  echo "hack/setup.sh: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# A default pod network, so berthd works out of the box: only when the CNI
# conf dir holds no config at all (an operator's own network is never touched).
CNI_CONF_DIR=/etc/cni/net.d
if [[ $(id -u) -eq 0 ]] && ! compgen -G "$CNI_CONF_DIR/*.conf*" >/dev/null \
  && ! compgen -G "$CNI_CONF_DIR/*.json" >/dev/null; then
  mkdir -p "$CNI_CONF_DIR"
  cat >"$CNI_CONF_DIR/10-berth.conflist" <<'CONF'
{
  "cniVersion": "1.0.0",
  "name": "berth",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "berth0",
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "routes": [{ "dst": "0.0.0.0/0" }],
        "ranges": [[{ "subnet": "10.85.0.0/16", "gateway": "10.85.0.1" }]]
      }
    },
    { "type": "portmap", "capabilities": { "portMappings": true } }
  ]
}
CONF
  echo "hack/setup.sh: installed the default pod network $CNI_CONF_DIR/10-berth.conflist (10.85.0.0/16)" >&2
fi

# A stock gRPC client that is not Go's, for e2e/tests/e2e/grpc_clients.rs:
# Python's grpcio (grpc C-core), from PyPI into a venv of its own, so Debian's
# Python stays as it is. Pinned, and installed again only when missing or
# another version.
TEST_VENV=/opt/berth-test-venv
GRPCIO_VERSION=1.85.4
if ! "$TEST_VENV/bin/python" -c "import grpc, sys; sys.exit(grpc.__version__ != '$GRPCIO_VERSION')" 2>/dev/null; then
  if [[ $(id -u) -ne 0 ]]; then
    echo "hack/setup.sh: grpcio $GRPCIO_VERSION missing from $TEST_VENV; run as root to install it" >&2
    exit 1
  fi
  echo "hack/setup.sh: installing grpcio $GRPCIO_VERSION into $TEST_VENV" >&2
  /usr/bin/python3 -m venv "$TEST_VENV"
  "$TEST_VENV/bin/pip" install --quiet --disable-pip-version-check "grpcio==$GRPCIO_VERSION"
fi

# The Rust toolchain cannot come from apt (Debian's is older than edition 2024).
if ! command -v cargo >/dev/null 2>&1; then
  echo "hack/setup.sh: cargo not found; install a Rust toolchain >= 1.85 (rustup) first" >&2
  exit 1
fi
