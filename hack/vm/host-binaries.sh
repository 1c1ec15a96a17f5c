#!/usr/bin/env bash
# Builds, on the host, what the node VM runs: berthd, berth-shim, the NRI
# test plugin and the one e2e test binary, with cargo profile $1 (default
# dev); prints the test binary's path (the others are in the dir above it).
# Used by smoke.sh and suite.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
profile=${1:-dev}
# berth-e2e's one binary is the NRI test plugin (nri::node runs there).
cargo build --locked --profile "$profile" -p berthd -p berth-shim -p berth-e2e --bins >&2
# The test binary's path is only known from cargo's JSON messages.
test_bin=$(cargo test --locked --profile "$profile" -p berth-e2e --test e2e --no-run \
  --message-format=json |
  python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "e2e" and m.get("executable"):
        print(m["executable"])')
bin_dir=$(dirname "$(dirname "$test_bin")")
if [[ ! -x $test_bin || ! -x $bin_dir/berthd || ! -x $bin_dir/berth-shim || ! -x $bin_dir/nri-test-plugin ]]; then
  echo "hack/vm/host-binaries.sh: binaries not found (test binary: '$test_bin')" >&2
  exit 1
fi
echo "$test_bin"
