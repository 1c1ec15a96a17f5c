#!/usr/bin/env bash
# Fuzzes Berth's parsers of untrusted input with cargo-fuzz (libFuzzer):
# image references, manifests/indexes/configs, layer tars (never a write
# outside the layer dir), CNI configs/results and the streaming server's SPDY
# frames (with their zlib header blocks).
#
#   hack/fuzz.sh [SECONDS] [TARGET...]   (default 60 s per target, all targets)
#
# CI runs it briefly from hack/test.sh; run it longer by hand, e.g.
# `hack/fuzz.sh 3600 unpack`. Findings are left in fuzz/artifacts/<target>/;
# the corpus grows in fuzz/corpus/<target>/ (not committed; seeds are in
# fuzz/seeds/). RUSTC_BOOTSTRAP lets the one stable toolchain take the
# sanitizer flags cargo-fuzz passes.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_TARGET=${1:-60}
shift || true
TARGETS=("$@")
[[ ${#TARGETS[@]} -gt 0 ]] || TARGETS=(reference manifest unpack cni spdy)

if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install --locked cargo-fuzz
fi
export RUSTC_BOOTSTRAP=1
for target in "${TARGETS[@]}"; do
  mkdir -p "fuzz/corpus/$target"
  log=$(mktemp)
  if ! cargo fuzz run --fuzz-dir fuzz --debug-assertions "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" \
    -- -max_total_time="$SECONDS_PER_TARGET" -max_len=65536 -timeout=10 -print_final_stats=1 >"$log" 2>&1; then
    tail -40 "$log" >&2
    echo "hack/fuzz.sh: target $target failed; the input is in fuzz/artifacts/$target/" >&2
    exit 1
  fi
  runs=$(sed -nE 's/^stat::number_of_executed_units: *([0-9]+)/\1/p' "$log")
  echo "fuzz $target: ${runs:-?} executions in ${SECONDS_PER_TARGET}s, no failure"
  rm -f "$log"
done
