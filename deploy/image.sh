#!/usr/bin/env bash
# Builds the ambient-node image (deploy/Dockerfile) with podman, offline from image
# registries: when the Debian base image is not already present, it is made here with
# debootstrap from the distribution's own packages (the mirror apt uses). Then a smoke
# test runs the image: `ambient --version`, `ambient waypoint run --help`, `envoy
# --version` and `ambient controlplane validate` on the demo manifests.
#
# Usage: deploy/image.sh            (as root; `make image` calls it)
#   IMAGE=...       tag to build      (default localhost/ambient-node:<version>)
#   BASE_IMAGE=...  Debian base image (default localhost/ambient-debian-base:bookworm,
#                   made with debootstrap when missing)
#   CA_BUNDLE=...   CA certificates pip trusts during the build (default: this host's)
set -euo pipefail

cd "$(dirname "$0")/.."
say() { printf '[image] %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 2; }

[ "$(id -u)" = 0 ] || die "building the image needs root (debootstrap, podman storage): run 'sudo make image'."
command -v podman >/dev/null && command -v buildah >/dev/null || die "podman and buildah are needed: apt-get install podman buildah debootstrap"

version=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -n1)
IMAGE=${IMAGE:-localhost/ambient-node:${version}}
BASE_IMAGE=${BASE_IMAGE:-localhost/ambient-debian-base:bookworm}
SUITE=${SUITE:-bookworm}
started=$(date +%s)

# --- the Debian base ---------------------------------------------------------------
if ! podman image exists "$BASE_IMAGE"; then
  command -v debootstrap >/dev/null || die "debootstrap is missing: apt-get install debootstrap"
  # the mirror this machine's apt already uses (deb822 or one-line format)
  mirror=$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | grep -v security | head -n1 || true)
  [ -n "$mirror" ] || mirror=$(awk '$1 == "deb" && $3 !~ /security/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
  [ -n "$mirror" ] || die "no Debian mirror found in /etc/apt/sources.list(.d); set one up for apt first."
  rootfs=$(mktemp -d /var/tmp/ambient-base.XXXXXX)
  trap 'rm -rf "$rootfs"' EXIT
  say "making $BASE_IMAGE with debootstrap ($SUITE, minbase)"
  timeout 1800 debootstrap --variant=minbase --include=ca-certificates "$SUITE" "$rootfs" "$mirror" >/dev/null \
    || die "debootstrap failed (see /var/tmp/ambient-base.*/debootstrap/debootstrap.log)"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar --numeric-owner -C "$rootfs" -c . | podman import --change 'CMD ["/bin/bash"]' - "$BASE_IMAGE" >/dev/null
  rm -rf "$rootfs"
  trap - EXIT
fi

# --- the image (RUN steps in a chroot: no OCI runtime, so hybrid cgroup hosts work) ---
say "building $IMAGE on $BASE_IMAGE"
timeout 3600 podman build --network=host --pull=never --isolation=chroot --format=docker \
  --ignorefile deploy/Dockerfile.dockerignore \
  --build-arg "BASE_IMAGE=$BASE_IMAGE" \
  --secret "id=ca-bundle,src=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}" \
  -f deploy/Dockerfile -t "$IMAGE" . \
  || die "podman build failed (see above)"

# --- smoke test --------------------------------------------------------------------
# In a chroot like the build's RUN steps: OCI runtimes refuse sandboxes that forbid
# raising rlimits or use a hybrid cgroup hierarchy, and these commands need neither.
say "smoke test"
ctr=$(buildah from --pull-never "$IMAGE")
trap 'buildah rm "$ctr" >/dev/null' EXIT
buildah run --isolation=chroot "$ctr" -- ambient --version
# waypoints and gateways: the supervisor and the Envoy it runs
buildah run --isolation=chroot "$ctr" -- ambient waypoint run --help >/dev/null
buildah run --isolation=chroot "$ctr" -- envoy --version
buildah run --isolation=chroot -v "$PWD/deploy/examples/demo:/examples:ro" "$ctr" -- \
  ambient controlplane validate /examples
size=$(podman image inspect --format '{{.Size}}' "$IMAGE")
say "built $IMAGE: $((size / 1024 / 1024)) MiB in $(( $(date +%s) - started )) s"
