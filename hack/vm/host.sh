# Sourced, from the repository's root with $repo set, by the scripts that
# boot the node VM with the busybox fixture (suite.sh, bench-handlers.sh):
# what both do on the host around the VM.

# vm_image: builds (or reuses) the node image; sets image, build_seconds and
# build_kind (cold or cached).
vm_image() {
  local cached_before t
  cached_before=$(ls -d "${BERTH_VM_CACHE:-/var/cache/berth-vm}"/*/ 2>/dev/null || true)
  t=$SECONDS
  image=$(hack/vm/build.sh)
  build_seconds=$((SECONDS - t))
  if grep -qxF "$image/" <<<"$cached_before"; then build_kind=cached; else build_kind=cold; fi
}

# vm_registry: the busybox fixture (built once per version of
# hack/fixtures.sh) served from a registry on the host's loopback, the
# guest's 10.0.2.2, as the e2e harness runs it; sets port. The registry
# stops, and its dir goes, when the script exits.
vm_registry() {
  local fixtures
  fixtures=$repo/target/vm-suite-fixtures/$(sha256sum hack/fixtures.sh | cut -c1-16)
  if [[ ! -f $fixtures/oci/index.json ]]; then
    rm -rf "$repo/target/vm-suite-fixtures"
    bash hack/fixtures.sh "$fixtures" >/dev/null
  fi
  registry_dir=$(mktemp -d /tmp/berth-vm-registry-XXXXXX)
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  cat >"$registry_dir/config.yml" <<YML
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $registry_dir/storage
http:
  addr: 127.0.0.1:$port
YML
  docker-registry serve "$registry_dir/config.yml" >"$registry_dir/registry.log" 2>&1 &
  registry=$!
  trap 'kill "$registry" 2>/dev/null || true; rm -rf "$registry_dir"' EXIT
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
  done
  skopeo copy --quiet --preserve-digests --dest-tls-verify=false \
    "oci:$fixtures/oci:busybox" "docker://127.0.0.1:$port/berth/busybox:latest"
}

# vm_figures: the image's, the boot's and QEMU's figures, the last two from
# the run's $share/run-stats.
vm_figures() {
  # shellcheck source=/dev/null
  [[ -f $share/run-stats ]] && . "$share/run-stats"
  echo "image build ($build_kind): ${build_seconds} s  ($image)"
  echo "boot to running (host clock): ${boot_seconds:-?} s"
  echo "QEMU run: ${qemu_seconds:-?} s, peak RSS ${peak_rss_mib:-?} MiB"
}
