#!/usr/bin/env bash
# Installs what is missing, then runs every check CI runs: formatting, clippy
# with warnings denied, the whole test suite (unit and end-to-end), the node
# VM suite (hack/vm/suite.sh: the cases only a systemd, cgroup v2 node shows)
# and a short fuzzing run of every parser of untrusted input.
set -euo pipefail
cd "$(dirname "$0")/.."

bash hack/setup.sh
if [[ "${CI:-}" == "true" && $(id -u) -ne 0 ]]; then
  echo "hack/test.sh: CI runs the end-to-end tests, which need root" >&2
  exit 1
fi

echo "== cargo fmt --check" >&2
cargo fmt --all -- --check
echo "== cargo clippy" >&2
cargo clippy --locked --workspace --all-targets -- -D warnings
echo "== cargo test" >&2
cargo test --locked --workspace
echo "== node VM suite (hack/vm/suite.sh)" >&2
bash hack/vm/suite.sh
echo "== fuzz (briefly; hack/fuzz.sh runs it longer)" >&2
bash hack/fuzz.sh "${FUZZ_SECONDS:-10}"
