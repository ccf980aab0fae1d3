#!/usr/bin/env bash
# Builds the real control plane from the pinned Go modules beside this script:
#   kubernetes/  kube-apiserver, kube-controller-manager, kube-scheduler, kubectl
#   etcd/        etcd
#   istio/       pilot-discovery (istiod), pilot-agent, istioctl
#   helm/        helm (Helm 4: `make test` lints and renders charts/lazyxds, the cluster tier installs it)
# The pins are in tests/cluster/versions (with the reason for each); each module's go.mod
# must agree (one module per upstream, so each keeps its own grpc/otel/k8s.io versions). Go's build cache makes a rebuild with no pin change a
# link step; `make setup` calls this only when a go.mod/go.sum changed.
# Usage: build.sh OUT_DIR
set -euo pipefail
out=$(realpath -m "${1:?usage: build.sh OUT_DIR}")
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
export GOFLAGS="-mod=readonly -buildvcs=false -trimpath"
export CGO_ENABLED=0

build() { # module-dir tags ldflags packages...
  local dir=$1 tags=$2 ldflags=$3; shift 3
  local start=$SECONDS
  echo "go build ($dir): $*"
  (cd "$here/$dir" && go build -tags="$tags" -ldflags="-s -w $ldflags" -o "$out/" "$@")
  echo "go build ($dir): $((SECONDS - start)) s"
}

version() { (cd "$here/$1" && go list -m -f '{{.Version}}' "$2"); }

# The pins live in tests/cluster/versions; the go.mod files must agree with it.
pinned() { awk -v m="$1" '$1 == m {print $2}' "$here/../versions"; }
for pin in istio:istio.io/istio kubernetes:k8s.io/kubernetes etcd:go.etcd.io/etcd/server/v3 helm:helm.sh/helm/v4; do
  dir=${pin%%:*} mod=${pin#*:}
  want=$(pinned "$mod") have=$(version "$dir" "$mod")
  if [ "$want" != "$have" ]; then
    echo "tests/cluster/go/$dir/go.mod requires $mod $have, tests/cluster/versions pins ${want:-nothing}" >&2
    exit 1
  fi
done

k8s=$(version kubernetes k8s.io/kubernetes)              # v1.36.3
k8s_minor=$(echo "$k8s" | cut -d. -f2)
# An unversioned build reports v0.0.0, which Istio's analyzers flag.
k8s_ld="-X k8s.io/component-base/version.gitVersion=$k8s -X k8s.io/component-base/version.gitMajor=1"
k8s_ld+=" -X k8s.io/component-base/version.gitMinor=$k8s_minor -X k8s.io/component-base/version.gitTreeState=clean"
k8s_ld+=" -X k8s.io/client-go/pkg/version.gitVersion=$k8s -X k8s.io/client-go/pkg/version.gitMajor=1"
k8s_ld+=" -X k8s.io/client-go/pkg/version.gitMinor=$k8s_minor"

istio=$(version istio istio.io/istio)                    # a pseudo-version: v0.0.0-<date>-<sha>
istio_sha=${istio##*-}
istio_ld="-X istio.io/istio/pkg/version.buildVersion=1.31-dev-$istio_sha"
istio_ld+=" -X istio.io/istio/pkg/version.buildGitRevision=$istio_sha -X istio.io/istio/pkg/version.buildStatus=Clean"

etcd_ver=$(version etcd go.etcd.io/etcd/server/v3)

helm=$(version helm helm.sh/helm/v4)
# As Helm's own Makefile stamps a release (`helm version` and the chart's .Capabilities.HelmVersion).
helm_ld="-X helm.sh/helm/v4/internal/version.version=$helm -X helm.sh/helm/v4/internal/version.gitTreeState=clean"

# Tags as Istio's own Makefile.core.mk builds them (STANDARD_TAGS, AGENT_TAGS).
build istio vtprotobuf,disable_pgv "$istio_ld" \
  istio.io/istio/pilot/cmd/pilot-discovery istio.io/istio/istioctl/cmd/istioctl
build istio agent,disable_pgv,grpcnotrace,retrynotrace "$istio_ld" istio.io/istio/pilot/cmd/pilot-agent
build etcd "" "" ./cmd/etcd
build helm "" "$helm_ld" helm.sh/helm/v4/cmd/helm
build kubernetes "" "$k8s_ld" \
  k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl

# Where the tests find the Istio CRDs and the proxy's bootstrap template: the same module
# istiod was built from, so schema and istiod agree.
istio_dir=$(cd "$here/istio" && go list -m -f '{{.Dir}}' istio.io/istio)
install -m 0644 "$istio_dir/manifests/charts/base/files/crd-all.gen.yaml" "$out/istio-crds.yaml"
install -m 0644 "$istio_dir/tools/packaging/common/envoy_bootstrap.json" "$out/envoy_bootstrap.json"
# Sidecar injection's templates and chart defaults (`istioctl kube-inject` reads them: the
# mini-mesh's pods carry what injection adds).
chart="$istio_dir/manifests/charts/istio-control/istio-discovery"
install -D -m 0644 "$chart/values.yaml" "$out/istio-inject/values.yaml"
install -D -m 0644 "$chart/files/injection-template.yaml" "$out/istio-inject/files/injection-template.yaml"
install -D -m 0644 "$chart/files/gateway-injection-template.yaml" "$out/istio-inject/files/gateway-injection-template.yaml"
printf 'kubernetes %s\netcd %s\nistio %s\nhelm %s\n' "$k8s" "$etcd_ver" "$istio" "$helm" > "$out/versions"
echo "control plane binaries in $out:"; ls -l "$out"
