#!/usr/bin/env bash
# `make test-chart`: charts/lazyxds against the install it is generated from.
#   helm lint --strict; each value set renders, with `helm template`, the objects that
#   `lazyxds install` renders with the matching flags (charts/drift.py); bad values are
#   refused by values.schema.json naming the field.
# Usage: test.sh HELM LAZYXDS_BIN
set -euo pipefail
helm=${1:?usage: test.sh HELM LAZYXDS_BIN} bin=${2:?usage: test.sh HELM LAZYXDS_BIN}
here=$(cd "$(dirname "$0")" && pwd)
chart="$here/lazyxds"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT

"$helm" lint --strict "$chart"

same() { # name helm-args -- install-flags
  local name=$1; shift
  local h=() i=()
  while [ "$1" != -- ]; do h+=("$1"); shift; done; shift; i=("$@")
  "$helm" template lazyxds "$chart" "${h[@]}" > "$tmp/chart.yaml"
  "$bin" install "${i[@]}" > "$tmp/install.yaml"
  "$here/drift.py" "$name" "$tmp/chart.yaml" "$tmp/install.yaml"
}
same "default values vs default flags (--no-module)" -n lazyxds-system --set createNamespace=true -- --no-module
same "default values vs --no-create-namespace" -n lazyxds-system -- --no-module --no-create-namespace
same "module.url oci:// vs --module-url" -n lazyxds-system --set module.url=oci://ghcr.io/lazyxds/lazyxds-filter:0.1.0 -- \
  --no-create-namespace --module-url oci://ghcr.io/lazyxds/lazyxds-filter:0.1.0
same "every value (tests/every-value.yaml) vs the flags" -n mesh-tools -f "$here/tests/every-value.yaml" -- \
  --module-url https://example.com/lazyxds_filter.wasm \
  --module-sha256 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef \
  --no-create-namespace --namespace mesh-tools --trust-domain corp.example --cluster-domain corp.local \
  --controller-dry-run \
  --controller-image registry.example/lazyxds:dev --controller-replicas 3 --log-level debug,kube=info \
  --grpc-port 19000 --http-port 19080 --gateway-name egress-lazy --egress-proxy-port 9090 \
  --gateway-target-cpu 75 --flush-interval-ms 50 --refresh-interval-s 600 \
  --gateway-min-replicas 3 --gateway-max-replicas 20 --gateway-concurrency 4
same "a small gateway: the stream cap's floor" -n lazyxds-system \
  --set gateway.minReplicas=1,gateway.maxReplicas=3,gateway.concurrency=1 -- \
  --no-module --no-create-namespace --gateway-min-replicas 1 --gateway-max-replicas 3 --gateway-concurrency 1

# The kill switch has no install flag (it is flipped on the cluster): enabled=false is the
# default render but for that one value.
"$helm" template lazyxds "$chart" -n lazyxds-system --set createNamespace=true --set enabled=false > "$tmp/off.yaml"
"$bin" install --no-module | sed "s/^  enabled: 'true'\$/  enabled: 'false'/" > "$tmp/install-off.yaml"
grep -q "^  enabled: 'false'\$" "$tmp/install-off.yaml" || { echo "the install's kill switch line moved" >&2; exit 1; }
"$here/drift.py" "enabled=false vs the install's ConfigMap switched off" "$tmp/off.yaml" "$tmp/install-off.yaml"

# value  the field Helm must name
bad=(
  "controller.replicas=0 /controller/replicas"
  "controller.replicas=two /controller/replicas"
  "controller.grpcPort=70000 /controller/grpcPort"
  "gateway.name=Egress_GW /gateway/name"
  "gateway.targetCPUUtilizationPercentage=150 /gateway/targetCPUUtilizationPercentage"
  "trustDomain=bad/domain /trustDomain"
  "clusterDomain=Cluster.Local /clusterDomain"
  "enabled=maybe /enabled"
  "gateway.concurrency=0 /gateway/concurrency"
  "gateway.minReplicas=11 gateway.minReplicas"
  "gateway.concurrency=65 /gateway/concurrency"
  "gateway.name=lazyxds /gateway/name"
  "gateway.egressProxyPort=15001 /gateway/egressProxyPort"
  "controller.httpPort=18000 controller.httpPort"
  "module.url=https://example.com/f.wasm module.sha256"
  "module.url=ftp://example.com/f.wasm /module/url"
  "module.sha256=ABC /module/sha256"
  "controler.replicas=2 controler"
)
for b in "${bad[@]}"; do
  read -r value field <<<"$b"
  if out=$("$helm" template lazyxds "$chart" --set "$value" 2>&1); then
    echo "chart accepted $value" >&2; exit 1
  fi
  if ! grep -qF "$field" <<<"$out"; then
    echo "chart refused $value without naming $field: $out" >&2; exit 1
  fi
  echo "refused $value: $(grep -F "$field" <<<"$out" | head -1 | sed 's/^ *//')"
done
