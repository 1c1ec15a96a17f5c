#!/usr/bin/env bash
# Installs what is missing, builds Berth in release mode and runs berthd in the
# foreground with its built-in defaults (plus /etc/berth/berth.toml if present).
# Extra arguments go to berthd, e.g. `hack/run.sh --log-level debug`.
set -euo pipefail
cd "$(dirname "$0")/.."

bash hack/setup.sh
if [[ $(id -u) -ne 0 ]]; then
  echo "hack/run.sh: berthd manages namespaces, mounts and cgroups: run it as root" >&2
  exit 1
fi
cargo build --release --locked --bins
exec target/release/berthd "$@"
