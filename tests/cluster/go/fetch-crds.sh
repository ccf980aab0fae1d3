#!/usr/bin/env bash
# Fetches the Istio CRDs of every Istio release the README claims, for the test that applies
# the install, a Sidecar and the gateway's objects against each (tests/tests/cluster.rs).
# The releases are the `istio.io/api` lines of tests/cluster/versions; each comes from the Go
# module proxy (`go mod download`, checksum-verified like any module) and its
# kubernetes/customresourcedefinitions.gen.yaml is copied to OUT_DIR/istio-api-crds/<version>.yaml.
# Nothing is fetched from anywhere else. Usage: fetch-crds.sh OUT_DIR
set -euo pipefail
out=$(realpath -m "${1:?usage: fetch-crds.sh OUT_DIR}")
here=$(cd "$(dirname "$0")" && pwd)
dest="$out/istio-api-crds"
mkdir -p "$dest"
# Outside any module: `go mod download MODULE@VERSION` needs no go.mod.
cd "$(mktemp -d)"
export GOFLAGS="-mod=readonly"

versions=$(awk '$1 == "istio.io/api" {print $2}' "$here/../versions")
if [ -z "$versions" ]; then
  echo "tests/cluster/versions pins no istio.io/api release" >&2
  exit 1
fi
rm -f "$dest"/*.yaml
for v in $versions; do
  dir=$(go mod download -json "istio.io/api@$v" | awk -F'"' '$2 == "Dir" {print $4}')
  crds="$dir/kubernetes/customresourcedefinitions.gen.yaml"
  if [ ! -f "$crds" ]; then
    echo "istio.io/api@$v has no kubernetes/customresourcedefinitions.gen.yaml" >&2
    exit 1
  fi
  install -m 0644 "$crds" "$dest/$v.yaml"
  echo "Istio CRDs of $v: $dest/$v.yaml"
done
