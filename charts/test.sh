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

# The chart follows the crate's version (`make manifests` writes it): Chart.yaml's version and
# appVersion, the default controller image's tag (the default values' drift test below
# compares the whole image with the install's).
version=$("$bin" --version | awk '{print $2}')
chart_version=$(awk '/^version:/{print $2}' "$chart/Chart.yaml")
app_version=$(awk '/^appVersion:/{gsub(/"/, "", $2); print $2}' "$chart/Chart.yaml")
image=$(awk '/^controller:/{c=1} c && /^  image:/{print $2; exit}' "$chart/values.yaml")
if [ "$chart_version" != "$version" ] || [ "$app_version" != "$version" ] || [ "${image##*:}" != "$version" ]; then
  echo "the chart is not at the crate's version $version: Chart.yaml version $chart_version, appVersion $app_version, controller.image $image (make manifests)" >&2
  exit 1
fi
echo "chart version, appVersion and controller image tag: $version"

same() { # name helm-args -- install-flags
  local name=$1; shift
  local h=() i=()
  while [ "$1" != -- ]; do h+=("$1"); shift; done; shift; i=("$@")
  # The pre-delete hook has no install counterpart: checked on its own below.
  "$helm" template lazyxds "$chart" --no-hooks "${h[@]}" > "$tmp/chart.yaml"
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
  --revision canary --istio-version 1.28 --no-admission-policy --failure-policy FAIL_OPEN \
  --controller-dry-run \
  --controller-image registry.example/lazyxds:dev --controller-replicas 3 --log-level debug,kube=info \
  --grpc-port 19000 --http-port 19080 --gateway-name egress-lazy --egress-proxy-port 9090 \
  --gateway-target-cpu 75 --flush-interval-ms 50 --refresh-interval-s 600 \
  --gateway-min-replicas 3 --gateway-max-replicas 20 --gateway-concurrency 4
# The module carried by the chart (--set-file, base64) vs the install's ConfigMap holding it: a
# small module (the header the install checks, bytes that are not UTF-8), hashed the same.
printf '\0asm\1\0\0\0\377\376\200lazyxds' > "$tmp/m.wasm"
base64 -w0 "$tmp/m.wasm" > "$tmp/m.b64"
same "module.wasmBase64 vs the default install (its module)" -n lazyxds-system \
  --set createNamespace=true --set-file module.wasmBase64="$tmp/m.b64" -- --wasm "$tmp/m.wasm"
# The failure policy as the install chooses it, in both deliveries.
same "module.url, istioVersion 1.27: failStrategy FAIL_RELOAD" -n lazyxds-system \
  --set module.url=oci://ghcr.io/lazyxds/lazyxds-filter:0.1.0,istioVersion=1.27 -- \
  --no-create-namespace --module-url oci://ghcr.io/lazyxds/lazyxds-filter:0.1.0 --istio-version 1.27
same "module.url, istioVersion 1.26: failStrategy FAIL_OPEN" -n lazyxds-system \
  --set module.url=oci://ghcr.io/lazyxds/lazyxds-filter:0.1.0,istioVersion=1.26 -- \
  --no-create-namespace --module-url oci://ghcr.io/lazyxds/lazyxds-filter:0.1.0 --istio-version 1.26
same "module.url, filter.failurePolicy FAIL_CLOSED: FAIL_CLOSE" -n lazyxds-system \
  --set module.url=oci://ghcr.io/lazyxds/lazyxds-filter:0.1.0,filter.failurePolicy=FAIL_CLOSED -- \
  --no-create-namespace --module-url oci://ghcr.io/lazyxds/lazyxds-filter:0.1.0 --failure-policy FAIL_CLOSED
same "revision, the namespace, filter.failurePolicy FAIL_CLOSED (EnvoyFilter)" -n lazyxds-system \
  --set createNamespace=true,revision=canary,filter.failurePolicy=FAIL_CLOSED -- \
  --no-module --revision canary --failure-policy FAIL_CLOSED
same "admissionPolicy=false vs --no-admission-policy" -n lazyxds-system --set admissionPolicy=false -- \
  --no-module --no-create-namespace --no-admission-policy
same "a small gateway: the stream cap's floor" -n lazyxds-system \
  --set gateway.minReplicas=1,gateway.maxReplicas=3,gateway.concurrency=1 -- \
  --no-module --no-create-namespace --gateway-min-replicas 1 --gateway-max-replicas 3 --gateway-concurrency 1

# The kill switch has no install flag (it is flipped on the cluster): enabled=false is the
# default render but for that one value.
"$helm" template lazyxds "$chart" --no-hooks -n lazyxds-system --set createNamespace=true --set enabled=false > "$tmp/off.yaml"
"$bin" install --no-module | sed "s/^  enabled: 'true'\$/  enabled: 'false'/" > "$tmp/install-off.yaml"
grep -q "^  enabled: 'false'\$" "$tmp/install-off.yaml" || { echo "the install's kill switch line moved" >&2; exit 1; }
"$here/drift.py" "enabled=false vs the install's ConfigMap switched off" "$tmp/off.yaml" "$tmp/install-off.yaml"

# The pre-delete hook: a Job running the controller image's `lazyxds uninstall --wait` with the
# release's names; the binary takes its arguments (it gets as far as looking for a cluster);
# uninstallHook.enabled=false renders no hook.
"$helm" template lazyxds "$chart" -n mesh-tools -f "$here/tests/every-value.yaml" \
  --show-only templates/pre-delete.yaml > "$tmp/hook.yaml"
python3 - "$tmp/hook.yaml" "$tmp/hook-args" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
kinds = sorted(d["kind"] for d in docs)
assert kinds == ["ClusterRole", "ClusterRoleBinding", "Job", "Role", "RoleBinding", "ServiceAccount"], kinds
for d in docs:
    a = d["metadata"]["annotations"]
    assert a["helm.sh/hook"] == "pre-delete", d["metadata"]
    assert a["helm.sh/hook-delete-policy"] == "before-hook-creation,hook-succeeded", d["metadata"]
job = next(d for d in docs if d["kind"] == "Job")
c = job["spec"]["template"]["spec"]["containers"][0]
assert c["image"] == "registry.example/lazyxds:dev", c["image"]
want = ["uninstall", "--wait", "--wait-timeout-secs", "30", "--namespace", "mesh-tools", "--gateway-name", "egress-lazy"]
assert c["args"] == want, c["args"]
assert job["spec"]["activeDeadlineSeconds"] == 2 * 30 + 60, job["spec"]
open(sys.argv[2], "w").write("\n".join(c["args"][1:]))
PY
mapfile -t hook_args < "$tmp/hook-args"
if out=$(env -u KUBERNETES_SERVICE_HOST KUBECONFIG=/nonexistent HOME=/nonexistent "$bin" uninstall "${hook_args[@]}" 2>&1); then
  echo "lazyxds uninstall ${hook_args[*]} succeeded without a cluster" >&2; exit 1
fi
grep -q "no Kubernetes credentials" <<<"$out" || { echo "the hook's arguments: $out" >&2; exit 1; }
echo "pre-delete hook: $(grep -c '^kind:' "$tmp/hook.yaml") objects, lazyxds uninstall ${hook_args[*]} parses"
if "$helm" template lazyxds "$chart" --set uninstallHook.enabled=false | grep -q 'helm.sh/hook'; then
  echo "uninstallHook.enabled=false still renders a hook" >&2; exit 1
fi

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
  "revision=Canary_1 /revision"
  "istioVersion=1.x /istioVersion"
  "istioVersion=1.23 istioVersion"
  "filter.failurePolicy=FAIL_SOMETIMES /filter/failurePolicy"
  "module.url=oci://r/f:1,filter.failurePolicy=FAIL_RELOAD filter.failurePolicy"
  "module.url=oci://r/f:1,filter.failurePolicy=FAIL_RELOAD,istioVersion=1.26 filter.failurePolicy"
  "admissionPolicy=maybe /admissionPolicy"
  "module.wasmBase64=aGVsbG8= /module/wasmBase64"
  "module.url=oci://r/f:1,module.wasmBase64=AGFzbQEAAAA= module.wasmBase64"
  "uninstallHook.timeoutSeconds=0 /uninstallHook/timeoutSeconds"
  "uninstallHook.enabled=yes /uninstallHook/enabled"
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
