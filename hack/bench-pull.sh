#!/usr/bin/env bash
# The pull benchmark: the `big` fixture image (8 gzip layers, 256 MiB
# unpacked) pulled from the same local docker-registry by containerd (ctr,
# its own root, overlayfs snapshotter) and by a release berthd, in one run.
# Prints both times, the ratio and berthd's peak RSS. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash hack/setup.sh
cargo test --release --locked -p berth-e2e --test e2e -- bench_pull:: --ignored --nocapture 2>&1 | grep '^BENCH'
