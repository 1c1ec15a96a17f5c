#!/usr/bin/env bash
# Builds Berth's test images from busybox-static into an OCI image layout.
#
#   hack/fixtures.sh OUT_DIR [--big]
#
# OUT_DIR/oci is an OCI layout (push a tag with `skopeo copy oci:OUT_DIR/oci:TAG
# docker://...`). The layers are written by hand with GNU tar so each fixture
# holds exactly the entries a test needs (whiteouts, an opaque dir, links, and
# entries no image builder would ever emit on purpose):
#
#   layered      3 gzip layers: a whiteout, an opaque dir, a hardlink, a
#                symlink, a fifo, a device, an xattr, owners and modes;
#                User 1000:1000 (needs root for the device and owners)
#   layered-plus the layered image's layers and one more (shared chain IDs)
#   multiarch    an index of linux/amd64 and linux/arm64 (/platform says which)
#   zstd         one zstd layer (application/vnd.oci.image.layer.v1.tar+zstd)
#   evil-dotdot  a layer with an entry ../../../../../../../../tmp/berth-evil-dotdot
#   evil-symlink a layer with esc -> /tmp, then esc/berth-evil-symlink
#   evil-hardlink a layer with a hardlink to ../../../../../../../../etc/hostname
#   busybox      one layer: busybox-static with every applet linked, a named
#                user berth (4242:4343, also in group friends 5555),
#                StopSignal SIGUSR1 (container tests)
#   big          (--big only) 8 gzip layers of 32 MiB of random data each
set -euo pipefail

out=${1:?usage: hack/fixtures.sh OUT_DIR [--big]}
big=${2:-}
busybox=/bin/busybox
mkdir -p "$out"
out=$(cd "$out" && pwd)
layout=$out/oci
work=$(mktemp -d "$out/work.XXXXXX")
trap 'rm -rf "$work"' EXIT

rm -rf "$layout"
mkdir -p "$layout/blobs/sha256"
echo '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"
index_manifests='[]'

sha() { sha256sum "$1" | cut -d' ' -f1; }
size() { stat -c %s "$1"; }

# put_blob FILE: stores FILE as a blob and prints its hex digest.
put_blob() {
  local digest
  digest=$(sha "$1")
  cp "$1" "$layout/blobs/sha256/$digest"
  echo "$digest"
}

# A reproducible tar of DIR's contents: sorted, fixed mtime unless kept, xattrs kept.
tar_dir() {
  local dir=$1 tarball=$2
  tar --sort=name --xattrs --xattrs-include='*' --numeric-owner -C "$dir" -cf "$tarball" .
}

# layer TARBALL gzip|zstd|none: compresses, stores, and appends
# "<mediatype> <digest> <size> <diffid>" to $work/layers.
layer() {
  local tarball=$1 comp=$2 diff_id blob media
  diff_id=$(sha "$tarball")
  case $comp in
    gzip) gzip -n -c "$tarball" >"$tarball.c"; media=application/vnd.oci.image.layer.v1.tar+gzip ;;
    zstd) zstd -q -c "$tarball" >"$tarball.c"; media=application/vnd.oci.image.layer.v1.tar+zstd ;;
    none) cp "$tarball" "$tarball.c"; media=application/vnd.oci.image.layer.v1.tar ;;
  esac
  blob=$(put_blob "$tarball.c")
  echo "$media $blob $(size "$tarball.c") $diff_id" >>"$work/layers"
  rm -f "$tarball.c"
}

# image NAME ARCH CONFIG_EXTRA_JSON [INDEX_TAG]: writes config + manifest for
# the layers in $work/layers and, unless INDEX_TAG is "-", tags the manifest
# NAME in the layout index. Prints "<digest> <size>" of the manifest.
image() {
  local name=$1 arch=$2 extra=$3 tag=${4:-$1}
  local diff_ids layers config_file manifest_file config mdigest
  diff_ids=$(awk '{print "sha256:"$4}' "$work/layers" | jq -R . | jq -s .)
  layers=$(awk '{print $1" "$2" "$3}' "$work/layers" |
    jq -R 'split(" ") | {mediaType: .[0], digest: ("sha256:" + .[1]), size: (.[2] | tonumber)}' | jq -s .)
  config_file=$work/$name-$arch.config.json
  jq -n --arg arch "$arch" --argjson diff_ids "$diff_ids" --argjson extra "$extra" '{
      created: "2024-01-01T00:00:00Z", architecture: $arch, os: "linux",
      config: ({Env: ["PATH=/bin"], Cmd: ["/bin/sh"], WorkingDir: "/"} + $extra),
      rootfs: {type: "layers", diff_ids: $diff_ids}}' >"$config_file"
  config=$(put_blob "$config_file")
  manifest_file=$work/$name-$arch.manifest.json
  jq -n --arg c "sha256:$config" --argjson cs "$(size "$config_file")" --argjson layers "$layers" '{
      schemaVersion: 2, mediaType: "application/vnd.oci.image.manifest.v1+json",
      config: {mediaType: "application/vnd.oci.image.config.v1+json", digest: $c, size: $cs},
      layers: $layers}' >"$manifest_file"
  mdigest=$(put_blob "$manifest_file")
  if [[ $tag != - ]]; then
    index_manifests=$(jq --arg d "sha256:$mdigest" --argjson s "$(size "$manifest_file")" --arg t "$tag" \
      '. + [{mediaType: "application/vnd.oci.image.manifest.v1+json", digest: $d, size: $s,
             annotations: {"org.opencontainers.image.ref.name": $t}}]' <<<"$index_manifests")
  fi
  rm -f "$work/layers"
  echo "$mdigest $(size "$manifest_file")"
}

base_rootfs() {
  local root=$1
  mkdir -p "$root/bin" "$root/etc" "$root/tmp"
  cp "$busybox" "$root/bin/busybox"
  ln -s busybox "$root/bin/sh"
  printf 'root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\n' >"$root/etc/passwd"
  printf 'root:x:0:\nuser:x:1000:\n' >"$root/etc/group"
  chmod 1777 "$root/tmp"
}

# --- layered ---------------------------------------------------------------
l1=$work/l1 l2=$work/l2 l3=$work/l3
base_rootfs "$l1"
mkdir -p "$l1/gone-dir" "$l1/opaque" "$l1/data"
echo gone >"$l1/gone"
echo gone >"$l1/gone-dir/file"
echo old >"$l1/opaque/old"
echo keep >"$l1/data/keep"
tar_dir "$l1" "$work/l1.tar"
layer "$work/l1.tar" gzip

mkdir -p "$l2/opaque" "$l2/data" "$l2/home/user"
touch "$l2/.wh.gone" "$l2/.wh.gone-dir" "$l2/opaque/.wh..wh..opq"
echo new >"$l2/opaque/new"
echo hello >"$l2/data/hello"
ln "$l2/data/hello" "$l2/data/hello-hardlink"
ln -s hello "$l2/data/hello-symlink"
ln -s /bin/busybox "$l2/data/abs-symlink"
mkfifo "$l2/data/fifo"
mkdir -p "$l2/dev"
mknod "$l2/dev/null" c 1 3
chown -R 1000:1000 "$l2/home/user"
chmod 0700 "$l2/home/user"
echo secret >"$l2/home/user/setuid"
chmod 4755 "$l2/home/user/setuid"
touch -d '2001-02-03 04:05:06Z' "$l2/data/hello"
setfattr_ok=true
if command -v setfattr >/dev/null 2>&1; then
  setfattr -n user.berth -v fixture "$l2/data/hello" 2>/dev/null || setfattr_ok=false
fi
tar_dir "$l2" "$work/l2.tar"
layer "$work/l2.tar" gzip

mkdir -p "$l3/etc"
echo layered >"$l3/etc/hostname"
tar_dir "$l3" "$work/l3.tar"
layer "$work/l3.tar" gzip
cp "$work/layers" "$work/layered.layers"
image layered amd64 '{"User": "1000:1000", "Entrypoint": ["/bin/sh", "-c"], "StopSignal": "SIGINT",
                      "Labels": {"berth.fixture": "layered"}}' >/dev/null

# layered-plus: layered's three layers and one more, so the two share a chain.
cp "$work/layered.layers" "$work/layers"
mkdir -p "$work/plus"
echo plus >"$work/plus/plus"
tar_dir "$work/plus" "$work/plus.tar"
layer "$work/plus.tar" gzip
image layered-plus amd64 '{}' >/dev/null

# --- multiarch -------------------------------------------------------------
multi='[]'
for arch in amd64 arm64; do
  d=$work/m-$arch
  base_rootfs "$d"
  echo "$arch" >"$d/platform"
  tar_dir "$d" "$work/m-$arch.tar"
  layer "$work/m-$arch.tar" gzip
  read -r md ms < <(image multiarch "$arch" '{}' -)
  multi=$(jq --arg d "sha256:$md" --argjson s "$ms" --arg a "$arch" \
    '. + [{mediaType: "application/vnd.oci.image.manifest.v1+json", digest: $d, size: $s,
           platform: {architecture: $a, os: "linux"}}]' <<<"$multi")
done
jq -n --argjson m "$multi" '{schemaVersion: 2, mediaType: "application/vnd.oci.image.index.v1+json", manifests: $m}' \
  >"$work/multi.index.json"
idigest=$(put_blob "$work/multi.index.json")
index_manifests=$(jq --arg d "sha256:$idigest" --argjson s "$(size "$work/multi.index.json")" \
  '. + [{mediaType: "application/vnd.oci.image.index.v1+json", digest: $d, size: $s,
         annotations: {"org.opencontainers.image.ref.name": "multiarch"}}]' <<<"$index_manifests")

# --- zstd ------------------------------------------------------------------
z=$work/z
base_rootfs "$z"
echo zstd >"$z/compression"
tar_dir "$z" "$work/z.tar"
layer "$work/z.tar" zstd
image zstd amd64 '{}' >/dev/null

# --- malicious layers ------------------------------------------------------
e=$work/evil
mkdir -p "$e/ok"
echo pwned >"$e/ok/f"
tar -cf "$work/dotdot.tar" -C "$e" ok/f
tar -rf "$work/dotdot.tar" -P -C "$e" --transform 's,^ok/f$,../../../../../../../../tmp/berth-evil-dotdot,' ok/f
layer "$work/dotdot.tar" gzip
image evil-dotdot amd64 '{}' >/dev/null

mkdir -p "$e/s1" "$e/s2/esc"
ln -s /tmp "$e/s1/esc"
echo pwned >"$e/s2/esc/berth-evil-symlink"
tar -cf "$work/symlink.tar" -C "$e/s1" esc
tar -rf "$work/symlink.tar" -C "$e/s2" esc/berth-evil-symlink
layer "$work/symlink.tar" gzip
image evil-symlink amd64 '{}' >/dev/null

mkdir -p "$e/h"
echo x >"$e/h/target"
ln "$e/h/target" "$e/h/link"
tar -cf "$work/hardlink.tar" -P -C "$e/h" \
  --transform 's,^target$,../../../../../../../../etc/hostname,' target link
layer "$work/hardlink.tar" gzip
image evil-hardlink amd64 '{}' >/dev/null

# --- busybox (containers) --------------------------------------------------
b=$work/busybox
base_rootfs "$b"
for applet in $("$busybox" --list); do
  [[ -e $b/bin/$applet ]] || ln -s busybox "$b/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nberth:x:4242:4343:berth:/home/berth:/bin/sh\n' >"$b/etc/passwd"
printf 'root:x:0:\nberth:x:4343:\nfriends:x:5555:berth\n' >"$b/etc/group"
mkdir -p "$b/home/berth" "$b/proc" "$b/sys" "$b/dev"
chown 4242:4343 "$b/home/berth"
tar_dir "$b" "$work/busybox.tar"
layer "$work/busybox.tar" gzip
image busybox amd64 '{"StopSignal": "SIGUSR1"}' >/dev/null

# --- big (benchmarks) ------------------------------------------------------
if [[ $big == --big ]]; then
  for i in 1 2 3 4 5 6 7 8; do
    b=$work/big$i
    mkdir -p "$b/data"
    [[ $i == 1 ]] && base_rootfs "$b"
    for j in 1 2 3 4 5 6 7 8; do
      # Half random, half zeros: compresses about 2:1 like real images.
      head -c 2M /dev/urandom >"$b/data/l$i-$j.bin"
      head -c 2M /dev/zero >>"$b/data/l$i-$j.bin"
    done
    tar_dir "$b" "$work/big$i.tar"
    rm -rf "$b"
    layer "$work/big$i.tar" gzip
    rm -f "$work/big$i.tar"
  done
  image big amd64 '{}' >/dev/null
fi

jq -n --argjson m "$index_manifests" '{schemaVersion: 2, mediaType: "application/vnd.oci.image.index.v1+json", manifests: $m}' \
  >"$layout/index.json"
$setfattr_ok || echo "hack/fixtures.sh: setfattr failed; the layered image has no xattr" >&2
echo "$layout"
