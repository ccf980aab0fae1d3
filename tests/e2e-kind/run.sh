#!/usr/bin/env bash
# lazyxds end-to-end test on a kind cluster with Istio: build the images, create a
# cluster, install Istio and lazyxds, deploy a sample app, then assert
#   a. a first call to a service the caller has never used succeeds, through the gateway;
#   b. the controller writes the caller's Sidecar with that service;
#   c. after istiod pushes it, the next calls go direct (the gateway sees none of them);
#   d. the kill switch deletes every Sidecar we own and calls keep working.
# Not run in CI (it needs Docker, a kind cluster and image pulls): see README.md.
#
# Usage: tests/e2e-kind/run.sh        (every setting is an environment variable, below)
# shellcheck source-path=SCRIPTDIR
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$HERE/../.." && pwd)
# shellcheck source=lib.sh
source "$HERE/lib.sh"

# ---- settings (environment variables, with defaults) ---------------------------------

LAZYXDS_VERSION=${LAZYXDS_VERSION:-$(workspace_version "$REPO_ROOT/Cargo.toml")}
CLUSTER_NAME=${CLUSTER_NAME:-lazyxds-e2e}
KIND_CONFIG=${KIND_CONFIG:-$HERE/kind-cluster.yaml}
KIND_NODE_IMAGE=${KIND_NODE_IMAGE:-} # empty: the default node image of your kind
ISTIO_VERSION=${ISTIO_VERSION:-1.30.4}
ISTIOCTL=${ISTIOCTL:-istioctl}
ISTIOCTL_EXTRA_ARGS=${ISTIOCTL_EXTRA_ARGS:-} # extra `istioctl install` flags
CONTROLLER_IMAGE=${CONTROLLER_IMAGE:-ghcr.io/lazyxds/lazyxds:$LAZYXDS_VERSION}
DOCKER_BUILD_ARGS=${DOCKER_BUILD_ARGS:-} # extra `docker build` flags
WASM=${WASM:-$REPO_ROOT/target/wasm32-wasip1/wasm/lazyxds_filter.wasm}
INSTALL_EXTRA_ARGS=${INSTALL_EXTRA_ARGS:-} # extra `lazyxds install` flags
LAZYXDS_NAMESPACE=${LAZYXDS_NAMESPACE:-lazyxds-system}
CONTROLLER_DEPLOYMENT=${CONTROLLER_DEPLOYMENT:-lazyxds}
CONTROLLER_REPLICAS=${CONTROLLER_REPLICAS:-2}
CONTROLLER_HTTP_PORT=${CONTROLLER_HTTP_PORT:-18080}
LEADER_LABEL=${LEADER_LABEL-lazyxds.io/leader=true} # set empty to skip the leader check
GATEWAY_DEPLOYMENT=${GATEWAY_DEPLOYMENT:-lazyxds-gateway} # also its Service's name
GATEWAY_REPLICAS=${GATEWAY_REPLICAS:-2}
GATEWAY_HOST=$GATEWAY_DEPLOYMENT.$LAZYXDS_NAMESPACE.svc.cluster.local
GATEWAY_PORT=${GATEWAY_PORT:-8080}
KILL_SWITCH_CONFIGMAP=${KILL_SWITCH_CONFIGMAP:-lazyxds}
CLIENT_IMAGE=${CLIENT_IMAGE:-curlimages/curl:8.11.1}
ECHO_IMAGE=${ECHO_IMAGE:-hashicorp/http-echo:1.0.0}
PRELOAD_SAMPLE_IMAGES=${PRELOAD_SAMPLE_IMAGES:-0} # 1: docker pull + kind load them
SKIP_BUILD=${SKIP_BUILD:-0}          # 1: use the existing image and .wasm
REUSE_CLUSTER=${REUSE_CLUSTER:-0}    # 1: use an existing cluster of that name
KEEP_CLUSTER=${KEEP_CLUSTER:-0}      # 1: do not delete the cluster at the end
COLLECT_DIAGNOSTICS=${COLLECT_DIAGNOSTICS:-0} # 1: collect them on success too
WAIT_SECS=${WAIT_SECS:-300}          # rollouts (image pulls included)
PUSH_SECS=${PUSH_SECS:-90}           # controller writes + istiod pushes
KILL_SWITCH_SECS=${KILL_SWITCH_SECS:-30}
LOG_SECS=${LOG_SECS:-20}             # access logs are flushed about every second
DIRECT_CALLS=${DIRECT_CALLS:-5}
POLL_SECS=${POLL_SECS:-2}
# Outside the repository: the repository root is the image's build context.
ARTIFACTS_DIR=${ARTIFACTS_DIR:-${TMPDIR:-/tmp}/lazyxds-e2e-kind/$CLUSTER_NAME-$(date +%Y%m%d-%H%M%S)}

# Fixed by the sample app (manifests/).
APP_NS=demo
APP_PORT=8080
SVC_A_HOST=svc-a.$APP_NS.svc.cluster.local
SVC_B_HOST=svc-b.$APP_NS.svc.cluster.local
SVC_A_CLUSTER="outbound|$APP_PORT||$SVC_A_HOST"
SVC_B_CLUSTER="outbound|$APP_PORT||$SVC_B_HOST"
GATEWAY_CLUSTER="outbound|$GATEWAY_PORT||$GATEWAY_HOST"
CLIENT_SIDECAR=lazyxds-deployment-client # lazyxds-<kind>-<name>
MANAGED_BY=app.kubernetes.io/managed-by=lazyxds
RUN_ID=$(date +%s)-$$
STEP_TOTAL=10

# Absolute paths: some commands run from the repository root.
mkdir -p "$ARTIFACTS_DIR"
ARTIFACTS_DIR=$(cd "$ARTIFACTS_DIR" && pwd)
[[ $WASM == /* ]] || WASM=$PWD/$WASM
[[ $KIND_CONFIG == /* ]] || KIND_CONFIG=$PWD/$KIND_CONFIG
# This run's own kubeconfig: nothing here can touch another cluster of yours.
export KUBECONFIG=$ARTIFACTS_DIR/kubeconfig
CLUSTER_CREATED=0
CLIENT_POD=""
FIRST_CALL_AT=0

# timing WHAT SECONDS: recorded in timings.txt, printed at the end.
timing() { printf '%-58s %3ss\n' "$1" "$2" >>"$ARTIFACTS_DIR/timings.txt"; }

# ---- cleanup: diagnostics on failure, then teardown ---------------------------------

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  if ((rc != 0)) || [[ $COLLECT_DIAGNOSTICS == 1 ]]; then
    collect_diagnostics
  fi
  if ((CLUSTER_CREATED == 1)); then
    if [[ $KEEP_CLUSTER == 1 ]]; then
      log "KEEP_CLUSTER=1: cluster $CLUSTER_NAME kept. Use it with: export KUBECONFIG=$KUBECONFIG"
      log "delete it with: kind delete cluster --name $CLUSTER_NAME"
    else
      log "tearing down: kind delete cluster --name $CLUSTER_NAME"
      kind delete cluster --name "$CLUSTER_NAME"
    fi
  elif [[ -s $KUBECONFIG ]]; then
    log "cluster $CLUSTER_NAME was not created by this run: left as it is"
  fi
  log "artifacts: $ARTIFACTS_DIR"
  if [[ -s $ARTIFACTS_DIR/timings.txt ]]; then
    log "timings:"
    sed 's/^/    /' "$ARTIFACTS_DIR/timings.txt"
  fi
  if ((rc == 0)); then
    printf '\n[e2e %s] PASS: first call via the gateway, Sidecar written, direct traffic, kill switch\n' "$(ts)"
  else
    printf '\n[e2e %s] FAILED (exit %d) in step %d/%d\n' "$(ts)" "$rc" "$STEP_NO" "$STEP_TOTAL" >&2
    if [[ -d $ARTIFACTS_DIR/diagnostics ]]; then
      printf '[e2e %s] diagnostics: %s/diagnostics\n' "$(ts)" "$ARTIFACTS_DIR" >&2
    fi
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# diag FILE CMD...: CMD's output (and errors) into the diagnostics folder; never fails.
diag() {
  local file=$DIAG_DIR/$1
  shift
  mkdir -p "$(dirname "$file")"
  { printf '# %s\n' "$*"; "$@"; } >"$file" 2>&1 || printf '# (exit %d)\n' "$?" >>"$file"
}

collect_diagnostics() {
  DIAG_DIR=$ARTIFACTS_DIR/diagnostics
  [[ -s $KUBECONFIG ]] || return 0 # no cluster yet
  if ! kubectl get --raw /readyz >/dev/null 2>&1; then
    log "no reachable cluster: no Kubernetes diagnostics"
    return 0
  fi
  log "collecting diagnostics into $DIAG_DIR"
  mkdir -p "$DIAG_DIR"
  diag cluster/nodes.txt kubectl get nodes -o wide
  diag cluster/pods.txt kubectl get pods -A -o wide
  diag cluster/events.txt kubectl get events -A --sort-by=.lastTimestamp
  diag istio/istiod.log kubectl -n istio-system logs deployment/istiod --tail=-1
  diag istio/proxy-status.txt "$ISTIOCTL" proxy-status
  diag istio/analyze.txt "$ISTIOCTL" analyze -A
  diag istio/mesh-config.yaml kubectl -n istio-system get configmap istio -o yaml
  diag sidecars.yaml kubectl get sidecars.networking.istio.io -A -o yaml
  diag lazyxds/objects.txt kubectl -n "$LAZYXDS_NAMESPACE" get all,configmaps,leases,serviceaccounts -o wide
  diag lazyxds/istio-objects.yaml kubectl -n "$LAZYXDS_NAMESPACE" get \
    gateways.networking.istio.io,virtualservices.networking.istio.io,destinationrules.networking.istio.io,envoyfilters.networking.istio.io,wasmplugins.extensions.istio.io \
    -o yaml
  diag lazyxds/all-lazyxds-virtualservices.txt kubectl get virtualservices.networking.istio.io -A -l "$MANAGED_BY"
  diag lazyxds/kill-switch.yaml kubectl -n "$LAZYXDS_NAMESPACE" get configmap "$KILL_SWITCH_CONFIGMAP" -o yaml
  diag lazyxds/deployments.txt kubectl -n "$LAZYXDS_NAMESPACE" describe deployments
  local selector pod
  if selector=$(deployment_selector "$LAZYXDS_NAMESPACE" "$CONTROLLER_DEPLOYMENT" 2>/dev/null); then
    for pod in $(kubectl -n "$LAZYXDS_NAMESPACE" get pods -l "$selector" -o name 2>/dev/null); do
      pod=${pod#pod/}
      diag "controller/$pod.log" kubectl -n "$LAZYXDS_NAMESPACE" logs "$pod" --all-containers --tail=-1
      diag "controller/$pod.previous.log" kubectl -n "$LAZYXDS_NAMESPACE" logs "$pod" --all-containers --previous
      diag "controller/$pod.describe.txt" kubectl -n "$LAZYXDS_NAMESPACE" describe pod "$pod"
      local path
      for path in debug/edges debug/deps debug/plan debug/rejections metrics; do
        diag "controller/$pod.${path//\//-}.txt" kubectl get --raw \
          "/api/v1/namespaces/$LAZYXDS_NAMESPACE/pods/$pod:$CONTROLLER_HTTP_PORT/proxy/$path"
      done
    done
  fi
  if selector=$(deployment_selector "$LAZYXDS_NAMESPACE" "$GATEWAY_DEPLOYMENT" 2>/dev/null); then
    for pod in $(kubectl -n "$LAZYXDS_NAMESPACE" get pods -l "$selector" -o name 2>/dev/null); do
      pod=${pod#pod/}
      diag "gateway/$pod.log" kubectl -n "$LAZYXDS_NAMESPACE" logs "$pod" --all-containers --tail=-1
      diag "gateway/$pod.describe.txt" kubectl -n "$LAZYXDS_NAMESPACE" describe pod "$pod"
      diag "gateway/$pod.stats.txt" proxy_stats "$LAZYXDS_NAMESPACE" "$pod"
      diag "gateway/$pod.routes.json" "$ISTIOCTL" proxy-config route "$pod" -n "$LAZYXDS_NAMESPACE" -o json
      diag "gateway/$pod.clusters.txt" "$ISTIOCTL" proxy-config cluster "$pod" -n "$LAZYXDS_NAMESPACE"
      diag "gateway/$pod.listeners.txt" "$ISTIOCTL" proxy-config listener "$pod" -n "$LAZYXDS_NAMESPACE"
    done
  fi
  diag app/pods.txt kubectl -n "$APP_NS" describe pods
  for pod in $(kubectl -n "$APP_NS" get pods -o name 2>/dev/null); do
    pod=${pod#pod/}
    diag "app/$pod.log" kubectl -n "$APP_NS" logs "$pod" --all-containers --tail=-1
    diag "app/$pod.clusters.json" "$ISTIOCTL" proxy-config cluster "$pod" -n "$APP_NS" -o json
    diag "app/$pod.routes.json" "$ISTIOCTL" proxy-config route "$pod" -n "$APP_NS" -o json
    diag "app/$pod.listeners.txt" "$ISTIOCTL" proxy-config listener "$pod" -n "$APP_NS"
  done
  diag kind-export.txt kind export logs "$DIAG_DIR/kind" --name "$CLUSTER_NAME"
  log "diagnostics collected"
}

# ---- step 1: preflight ----------------------------------------------------------------

preflight() {
  step "preflight: tools and versions"
  local missing=0
  need() { # TOOL HOW-TO-GET-IT
    if command -v "$1" >/dev/null 2>&1; then
      log "found $1: $(command -v "$1")"
    else
      printf '[e2e %s] MISSING: %s — %s\n' "$(ts)" "$1" "$2" >&2
      missing=1
    fi
  }
  need docker "install Docker (https://docs.docker.com/engine/install/) and start its daemon"
  need kind "install kind >= 0.20 (https://kind.sigs.k8s.io/docs/user/quick-start/#installation, e.g. 'go install sigs.k8s.io/kind@latest')"
  need kubectl "install kubectl (https://kubernetes.io/docs/tasks/tools/)"
  need "$ISTIOCTL" "install istioctl $ISTIO_VERSION: 'curl -L https://istio.io/downloadIstio | ISTIO_VERSION=$ISTIO_VERSION sh -', then ISTIOCTL=\$PWD/istio-$ISTIO_VERSION/bin/istioctl"
  need cargo "install Rust with rustup (https://rustup.rs): builds the .wasm and runs 'lazyxds install'"
  need rustup "install Rust with rustup (https://rustup.rs): 'make wasm' needs the wasm32-wasip1 target"
  need make "install GNU make (Debian/Ubuntu: apt-get install make; macOS: xcode-select --install)"
  ((missing == 0)) || fail "missing tools (listed above)"

  docker info >/dev/null 2>&1 || fail "docker is installed but its daemon is not reachable ('docker info' fails): start Docker"

  [[ -n $LAZYXDS_VERSION ]] || fail "no [workspace.package] version in $REPO_ROOT/Cargo.toml (set LAZYXDS_VERSION)"
  log "lazyxds version (root Cargo.toml): $LAZYXDS_VERSION"

  version_ge "$ISTIO_VERSION" 1.22.0 ||
    fail "ISTIO_VERSION=$ISTIO_VERSION: lazyxds needs Istio >= 1.22 (networking.istio.io/v1 Sidecar)"
  local client
  client=$("$ISTIOCTL" version --remote=false 2>/dev/null | first_version || true)
  [[ -n $client ]] || fail "cannot read the version of $ISTIOCTL ('$ISTIOCTL version --remote=false')"
  if [[ $client != "$ISTIO_VERSION" ]]; then
    fail "$ISTIOCTL is $client but ISTIO_VERSION=$ISTIO_VERSION: istioctl installs its own version.
  Either run with ISTIO_VERSION=$client (>= 1.22), or get istioctl $ISTIO_VERSION:
    curl -L https://istio.io/downloadIstio | ISTIO_VERSION=$ISTIO_VERSION sh -
    ISTIOCTL=\$PWD/istio-$ISTIO_VERSION/bin/istioctl $0"
  fi
  ok "istioctl $client"
  log "kind: $(kind version 2>&1)"
  log "kubectl: $(kubectl version --client 2>&1 | head -n 1)"
  log "docker: $(docker version --format '{{.Server.Version}}' 2>&1)"
  log "artifacts (kubeconfig, rendered manifests, diagnostics): $ARTIFACTS_DIR"
}

# ---- step 2: build the controller image and the filter ------------------------------

build() {
  step "build: controller image $CONTROLLER_IMAGE and the filter .wasm"
  if [[ $SKIP_BUILD == 1 ]]; then
    log "SKIP_BUILD=1: using the existing image and module"
    docker image inspect "$CONTROLLER_IMAGE" >/dev/null 2>&1 ||
      fail "SKIP_BUILD=1 but there is no local image $CONTROLLER_IMAGE"
  else
    [[ -f $REPO_ROOT/controller/Dockerfile ]] ||
      fail "no controller/Dockerfile in $REPO_ROOT: the controller image cannot be built"
    local -a build_args=()
    read -r -a build_args <<<"$DOCKER_BUILD_ARGS"
    # BuildKit: the Dockerfile uses cache mounts (default since Docker 23; set for 20.10).
    DOCKER_BUILDKIT=1 run docker build -f "$REPO_ROOT/controller/Dockerfile" -t "$CONTROLLER_IMAGE" \
      ${build_args[@]+"${build_args[@]}"} "$REPO_ROOT"
    run make -C "$REPO_ROOT" setup-rust wasm
  fi
  [[ -s $WASM ]] || fail "no filter module at $WASM (run 'make wasm' or set WASM)"
  ok "image $CONTROLLER_IMAGE, module $WASM ($(wc -c <"$WASM" | tr -d ' ') bytes)"
}

# ---- step 3: the kind cluster --------------------------------------------------------

create_cluster() {
  step "kind cluster $CLUSTER_NAME"
  local clusters
  clusters=$(kind get clusters 2>/dev/null || true)
  if grep -x -- "$CLUSTER_NAME" <<<"$clusters" >/dev/null; then
    [[ $REUSE_CLUSTER == 1 ]] || fail "a kind cluster named $CLUSTER_NAME already exists.
  Delete it ('kind delete cluster --name $CLUSTER_NAME'), pick another CLUSTER_NAME,
  or reuse it with REUSE_CLUSTER=1 (its '$APP_NS' namespace is then recreated)."
    log "REUSE_CLUSTER=1: using the existing cluster (it will not be deleted)"
    log "+ kind get kubeconfig --name $CLUSTER_NAME > $KUBECONFIG"
    kind get kubeconfig --name "$CLUSTER_NAME" >"$KUBECONFIG"
  else
    local -a image_args=()
    [[ -z $KIND_NODE_IMAGE ]] || image_args=(--image "$KIND_NODE_IMAGE")
    CLUSTER_CREATED=1
    run kind create cluster --name "$CLUSTER_NAME" --config "$KIND_CONFIG" \
      --kubeconfig "$KUBECONFIG" --wait 180s ${image_args[@]+"${image_args[@]}"}
  fi
  run kubectl get nodes -o wide
  run kind load docker-image "$CONTROLLER_IMAGE" --name "$CLUSTER_NAME"
  if [[ $PRELOAD_SAMPLE_IMAGES == 1 ]]; then
    local image
    for image in "$CLIENT_IMAGE" "$ECHO_IMAGE"; do
      run docker pull "$image"
      run kind load docker-image "$image" --name "$CLUSTER_NAME"
    done
  fi
}

# ---- step 4: Istio ----------------------------------------------------------------------

install_istio() {
  step "Istio $ISTIO_VERSION (profile minimal, ALLOW_ANY, access logs on)"
  local -a extra=()
  read -r -a extra <<<"$ISTIOCTL_EXTRA_ARGS"
  # Access logs to stdout: the per-request evidence of which proxy routed what.
  run "$ISTIOCTL" install -y --set profile=minimal \
    --set meshConfig.outboundTrafficPolicy.mode=ALLOW_ANY \
    --set meshConfig.accessLogFile=/dev/stdout \
    ${extra[@]+"${extra[@]}"}
  run kubectl -n istio-system rollout status deployment/istiod --timeout="${WAIT_SECS}s"
  local server
  server=$("$ISTIOCTL" version 2>/dev/null | grep -i 'control plane' | first_version || true)
  log "Istio control plane: ${server:-unknown}"
}

# ---- step 5: lazyxds --------------------------------------------------------------------

controller_ready() {
  local ready
  ready=$(kubectl -n "$LAZYXDS_NAMESPACE" get deployment "$CONTROLLER_DEPLOYMENT" \
    -o jsonpath='{.status.readyReplicas}') || return 1
  echo "controller ready replicas: ${ready:-0}/$CONTROLLER_REPLICAS"
  [[ ${ready:-0} == "$CONTROLLER_REPLICAS" ]]
}

one_leader() {
  local selector leaders
  selector=$(deployment_selector "$LAZYXDS_NAMESPACE" "$CONTROLLER_DEPLOYMENT") || return 1
  leaders=$(running_pods "$LAZYXDS_NAMESPACE" "$selector,$LEADER_LABEL") || return 1
  echo "controller pods labelled $LEADER_LABEL: ${leaders:-none}"
  [[ -n $leaders && $(printf '%s\n' "$leaders" | wc -l | tr -d ' ') == 1 ]]
}

gateway_ready() {
  local ready
  ready=$(kubectl -n "$LAZYXDS_NAMESPACE" get deployment "$GATEWAY_DEPLOYMENT" \
    -o jsonpath='{.status.readyReplicas}') || return 1
  echo "gateway ready replicas: ${ready:-0} (want at least $GATEWAY_REPLICAS)"
  ((${ready:-0} >= GATEWAY_REPLICAS))
}

gateway_pods() {
  local selector
  selector=$(deployment_selector "$LAZYXDS_NAMESPACE" "$GATEWAY_DEPLOYMENT") || return 1
  running_pods "$LAZYXDS_NAMESPACE" "$selector"
}

# Every gateway pod has a proxy and the filter's counters (the module is loaded).
gateway_filter_loaded() {
  local pods pod stats
  pods=$(gateway_pods) || return 1
  [[ -n $pods ]] || { echo "no running gateway pod"; return 1; }
  for pod in $pods; do
    has_istio_proxy "$LAZYXDS_NAMESPACE" "$pod" || { echo "$pod has no istio-proxy (gateway injection)"; return 1; }
    stats=$(proxy_stats "$LAZYXDS_NAMESPACE" "$pod") || return 1
    sum_stat lazyxds.edges_new <<<"$stats" >/dev/null || {
      echo "$pod: no lazyxds.edges_new stat: the filter is not loaded (or its stats are not included)"
      grep -iE 'wasm|lazyxds' <<<"$stats" | head -n 20
      return 1
    }
    echo "$pod: filter loaded"
  done
}

install_lazyxds() {
  step "lazyxds: install manifest, controller and gateway Ready"
  log "building the lazyxds CLI natively for 'lazyxds install' (the first build takes minutes)"
  local help
  help=$(cd "$REPO_ROOT" && cargo run -q -p lazyxds -- install --help 2>&1) ||
    fail "'lazyxds install --help' fails: the binary has no install subcommand?
$help"
  printf '%s\n' "$help" >"$ARTIFACTS_DIR/install-help.txt"
  # The script's settings are passed on, so the manifest and the checks agree.
  local -a args=(
    --namespace "$LAZYXDS_NAMESPACE"
    --controller-image "$CONTROLLER_IMAGE"
    --wasm "$WASM"
    --controller-replicas "$CONTROLLER_REPLICAS"
    --http-port "$CONTROLLER_HTTP_PORT"
    --gateway-name "$GATEWAY_DEPLOYMENT"
    --egress-proxy-port "$GATEWAY_PORT"
    --gateway-min-replicas "$GATEWAY_REPLICAS"
  )
  local arg
  for arg in "${args[@]}"; do
    [[ $arg == --* ]] || continue
    grep -E -- "(^|[[:space:],])$arg([[:space:]=<]|\$)" <<<"$help" >/dev/null ||
      fail "'lazyxds install' has no $arg flag (its --help: $ARTIFACTS_DIR/install-help.txt); update run.sh"
  done
  local -a extra=()
  read -r -a extra <<<"$INSTALL_EXTRA_ARGS"
  local manifest=$ARTIFACTS_DIR/lazyxds-install.yaml
  log "+ cargo run -q -p lazyxds -- install ${args[*]} $INSTALL_EXTRA_ARGS > $manifest"
  (cd "$REPO_ROOT" && cargo run -q -p lazyxds -- install "${args[@]}" ${extra[@]+"${extra[@]}"}) \
    >"$manifest" || fail "'lazyxds install' failed"
  [[ -s $manifest ]] || fail "'lazyxds install' printed nothing"
  log "manifest: $(grep -c '^kind:' "$manifest" || true) objects"
  grep '^kind:' "$manifest" | sort | uniq -c | sed 's/^/    /'
  # Server-side: the module may travel in a ConfigMap, too big for client-side apply's
  # last-applied annotation (256 KiB).
  run kubectl apply --server-side --field-manager=lazyxds-e2e --force-conflicts -f "$manifest"

  run kubectl -n "$LAZYXDS_NAMESPACE" rollout status "deployment/$CONTROLLER_DEPLOYMENT" --timeout="${WAIT_SECS}s"
  until_ok "$WAIT_SECS" "$CONTROLLER_REPLICAS controller replicas Ready" controller_ready ||
    fail "the controller does not have $CONTROLLER_REPLICAS Ready replicas"
  if [[ -n $LEADER_LABEL ]]; then
    until_ok "$PUSH_SECS" "exactly one controller pod labelled $LEADER_LABEL (the leader)" one_leader ||
      fail "no single leader among the controller pods"
  fi
  run kubectl -n "$LAZYXDS_NAMESPACE" rollout status "deployment/$GATEWAY_DEPLOYMENT" --timeout="${WAIT_SECS}s"
  until_ok "$WAIT_SECS" "$GATEWAY_REPLICAS gateway replicas Ready (its autoscaler's minimum)" gateway_ready ||
    fail "the gateway does not have $GATEWAY_REPLICAS Ready replicas"
  until_ok "$PUSH_SECS" "the lazyxds filter loaded in every gateway pod" gateway_filter_loaded ||
    fail "the gateway does not run the lazyxds filter"
  if kubectl -n "$LAZYXDS_NAMESPACE" get configmap "$KILL_SWITCH_CONFIGMAP" >/dev/null 2>&1; then
    local enabled
    enabled=$(kubectl -n "$LAZYXDS_NAMESPACE" get configmap "$KILL_SWITCH_CONFIGMAP" -o jsonpath='{.data.enabled}')
    if [[ $enabled == false ]]; then
      [[ $REUSE_CLUSTER == 1 ]] ||
        fail "the kill switch is already on (configmap $KILL_SWITCH_CONFIGMAP enabled=false)"
      log "the kill switch is on (left by an earlier run on this cluster): turning it off"
      run kubectl -n "$LAZYXDS_NAMESPACE" patch configmap "$KILL_SWITCH_CONFIGMAP" --type merge \
        -p '{"data":{"enabled":"true"}}'
      enabled=true
    fi
    log "kill switch configmap $KILL_SWITCH_CONFIGMAP: enabled=${enabled:-<unset>}"
  else
    log "note: no configmap $KILL_SWITCH_CONFIGMAP yet (absent = enabled)"
  fi
  run kubectl -n "$LAZYXDS_NAMESPACE" get pods -o wide
}

# ---- step 6: the sample app -------------------------------------------------------------

deploy_app() {
  step "sample app in namespace $APP_NS (client, svc-a, svc-b), opted in"
  if kubectl get namespace "$APP_NS" >/dev/null 2>&1; then
    run kubectl delete namespace "$APP_NS" --wait=true --timeout="${WAIT_SECS}s"
  fi
  local app=$ARTIFACTS_DIR/app.yaml
  {
    cat "$HERE/manifests/namespace.yaml"
    local f
    for f in client svc-a svc-b; do
      printf -- '---\n'
      sed -e "s|image: curlimages/curl:8.11.1|image: $CLIENT_IMAGE|" \
        -e "s|image: hashicorp/http-echo:1.0.0|image: $ECHO_IMAGE|" "$HERE/manifests/$f.yaml"
    done
  } >"$app"
  run kubectl apply -f "$app"
  local d
  for d in svc-a svc-b client; do
    run kubectl -n "$APP_NS" rollout status "deployment/$d" --timeout="${WAIT_SECS}s"
  done
  CLIENT_POD=$(running_pods "$APP_NS" app=client | head -n 1 || true)
  [[ -n $CLIENT_POD ]] || fail "no running client pod"
  local pods pod
  pods=$(running_pods "$APP_NS" 'app in (client,svc-a,svc-b)') || fail "cannot list the pods of $APP_NS"
  [[ $(printf '%s\n' "$pods" | wc -l | tr -d ' ') == 3 ]] || fail "expected 3 running pods in $APP_NS, got: $pods"
  for pod in $pods; do
    has_istio_proxy "$APP_NS" "$pod" || fail "pod $pod has no istio-proxy: sidecar injection did not happen"
  done
  ok "client pod $CLIENT_POD ($(kubectl -n "$APP_NS" get pod "$CLIENT_POD" -o jsonpath='{.status.podIP}')), every pod injected"
}

# ---- calls and evidence -----------------------------------------------------------------

# call HOST PATH: one HTTP request from the client pod; sets CODE and BODY. Returns
# curl's status (no retry: a failed call is a failed call).
CODE=""
BODY=""
call() {
  local out
  CODE=""
  BODY=""
  out=$(kubectl -n "$APP_NS" exec "$CLIENT_POD" -c client -- \
    curl -sS --max-time 10 -w '\n%{http_code}' "http://$1:$APP_PORT$2") || return 1
  CODE=${out##*$'\n'}
  BODY=${out%$'\n'*}
  BODY=${BODY%$'\n'}
}

# expect_reply HOST PATH REPLY: the call succeeds with 200 and REPLY, or the run fails.
expect_reply() {
  log "+ kubectl -n $APP_NS exec $CLIENT_POD -c client -- curl http://$1:$APP_PORT$2"
  call "$1" "$2" || fail "calling http://$1:$APP_PORT$2 from the client failed (curl error above)"
  [[ $CODE == 200 && $BODY == "$3" ]] ||
    fail "http://$1:$APP_PORT$2 answered $CODE '$BODY', expected 200 '$3'"
  ok "http://$1:$APP_PORT$2 -> 200 '$BODY'"
}

gateway_logs() {
  local pods pod
  pods=$(gateway_pods) || return 1
  for pod in $pods; do
    kubectl -n "$LAZYXDS_NAMESPACE" logs "$pod" -c istio-proxy --tail=-1 || return 1
  done
}

client_proxy_logs() {
  kubectl -n "$APP_NS" logs "$CLIENT_POD" -c istio-proxy --tail=-1
}

# logged_with SOURCE NEEDLE CLUSTER: an access-log line of SOURCE (gateway_logs or
# client_proxy_logs) contains both the request's unique path and the upstream cluster.
logged_with() {
  local logs line
  logs=$("$1") || return 1
  line=$(grep -F -- "$2" <<<"$logs" | grep -F -- "$3" || true)
  [[ -n $line ]] || { echo "no access-log line of $1 with $2 and $3"; return 1; }
  echo "$line"
}

gateway_edges_new() {
  local pods pod stats n total=0
  pods=$(gateway_pods) || return 1
  for pod in $pods; do
    stats=$(proxy_stats "$LAZYXDS_NAMESPACE" "$pod") || return 1
    n=$(sum_stat lazyxds.edges_new <<<"$stats") || return 1
    total=$((total + n))
  done
  echo "$total"
}

edges_new_above() {
  local now
  now=$(gateway_edges_new) || return 1
  echo "lazyxds.edges_new (all gateway pods): $now (before: $1)"
  ((now > $1))
}

# The controller (leader, else any replica) learned CLIENT -> svc-a with the client's
# verified mTLS identity: /debug/edges through the API server's pod proxy.
controller_learned_edge() {
  local selector pods pod edges client_ip
  client_ip=$(kubectl -n "$APP_NS" get pod "$CLIENT_POD" -o jsonpath='{.status.podIP}') || return 1
  selector=$(deployment_selector "$LAZYXDS_NAMESPACE" "$CONTROLLER_DEPLOYMENT") || return 1
  [[ -z $LEADER_LABEL ]] || selector="$selector,$LEADER_LABEL"
  pods=$(running_pods "$LAZYXDS_NAMESPACE" "$selector") || return 1
  for pod in $pods; do
    edges=$(kubectl get --raw \
      "/api/v1/namespaces/$LAZYXDS_NAMESPACE/pods/$pod:$CONTROLLER_HTTP_PORT/proxy/debug/edges") || continue
    # One edge object per line (edges have no nested objects).
    if tr '{' '\n' <<<"$edges" | grep -F "\"source_ip\":\"$client_ip\"" |
      grep -F "\"cluster\":\"$SVC_A_CLUSTER\"" | grep -F "/ns/$APP_NS/sa/client\"" >/dev/null; then
      echo "$pod learned $client_ip -> $SVC_A_CLUSTER as spiffe://.../ns/$APP_NS/sa/client"
      return 0
    fi
    echo "$pod: no edge $client_ip -> $SVC_A_CLUSTER with principal .../ns/$APP_NS/sa/client yet"
  done
  return 1
}

# ---- istiod's view of the client ----------------------------------------------------------

client_clusters() { "$ISTIOCTL" proxy-config cluster "$CLIENT_POD" -n "$APP_NS" -o json; }
client_routes() { "$ISTIOCTL" proxy-config route "$CLIENT_POD" -n "$APP_NS" --name "$APP_PORT" -o json; }

client_sidecar_exists() {
  kubectl -n "$APP_NS" get sidecars.networking.istio.io "$CLIENT_SIDECAR" -o name
}

# The client's proxy runs the scoped config: svc-a unknown, and port APP_PORT's
# catch-all (allow_any) sends to the gateway (the Sidecar's egressProxy).
client_is_scoped() {
  local clusters routes target
  clusters=$(client_clusters) || return 1
  routes=$(client_routes) || return 1
  target=$(allow_any_cluster <<<"$routes")
  echo "client route $APP_PORT: allow_any -> ${target:-<none>}"
  [[ $target == "$GATEWAY_CLUSTER" ]] || return 1
  if grep -F "\"$SVC_A_CLUSTER\"" <<<"$clusters" >/dev/null; then
    echo "the client's proxy still has $SVC_A_CLUSTER (not scoped yet)"
    return 1
  fi
}

# The gateway has a route for svc-a (the controller rendered it, istiod pushed it).
gateway_routes_svc_a() {
  local pods pod routes
  pods=$(gateway_pods) || return 1
  for pod in $pods; do
    routes=$("$ISTIOCTL" proxy-config route "$pod" -n "$LAZYXDS_NAMESPACE" -o json) || return 1
    grep -F "\"$SVC_A_HOST" <<<"$routes" >/dev/null || { echo "$pod has no route for $SVC_A_HOST yet"; return 1; }
  done
}

# ---- step 7: a. first call ----------------------------------------------------------------

first_call() {
  step "a. first call to a never-used service, by its short name, through the gateway"
  until_ok "$PUSH_SECS" "the controller wrote the client's initial Sidecar ($APP_NS/$CLIENT_SIDECAR)" \
    client_sidecar_exists || fail "no Sidecar $APP_NS/$CLIENT_SIDECAR: the controller did not scope the opted-in client"
  kubectl -n "$APP_NS" get sidecars.networking.istio.io "$CLIENT_SIDECAR" -o yaml \
    >"$ARTIFACTS_DIR/sidecar-client-initial.yaml"
  if grep -F "$APP_NS/$SVC_A_HOST" "$ARTIFACTS_DIR/sidecar-client-initial.yaml" >/dev/null; then
    fail "the client's Sidecar lists $APP_NS/$SVC_A_HOST before any call (see sidecar-client-initial.yaml)"
  fi
  until_ok "$PUSH_SECS" "istiod pushed the scoped config to the client (no svc-a; catch-all -> gateway)" \
    client_is_scoped || fail "the client's proxy never got the scoped config"
  until_ok "$PUSH_SECS" "the gateway can route $SVC_A_HOST" gateway_routes_svc_a ||
    fail "the gateway has no route for $SVC_A_HOST"

  local before path=/lazyxds-e2e/$RUN_ID/first-call
  before=$(gateway_edges_new) || fail "cannot read lazyxds.edges_new from the gateway"
  log "lazyxds.edges_new before the call: $before"
  FIRST_CALL_AT=$SECONDS
  expect_reply svc-a "$path" svc-a # exactly one attempt
  until_ok "$LOG_SECS" "the client's proxy sent it to the gateway ($GATEWAY_CLUSTER)" \
    logged_with client_proxy_logs "$path" "$GATEWAY_CLUSTER" ||
    fail "the first call did not leave the client through the gateway"
  until_ok "$LOG_SECS" "the gateway routed it to svc-a ($SVC_A_CLUSTER)" \
    logged_with gateway_logs "$path" "$SVC_A_CLUSTER" ||
    fail "no gateway access-log line routing the first call to $SVC_A_CLUSTER"
  until_ok "$LOG_SECS" "the filter counted a new edge" edges_new_above "$before" ||
    fail "lazyxds.edges_new did not grow on the gateway"
  until_ok "$PUSH_SECS" "the controller learned the edge with the client's mTLS identity" \
    controller_learned_edge || fail "the controller has no edge client -> svc-a with the client's SPIFFE identity"
  ok "first call succeeded through the gateway"
}

# ---- step 8: b. Sidecar written ---------------------------------------------------------------

sidecars_list_svc_a() {
  local yaml
  yaml=$(kubectl -n "$APP_NS" get sidecars.networking.istio.io -l "$MANAGED_BY" -o yaml) || return 1
  grep -F -- "- $APP_NS/$SVC_A_HOST" <<<"$yaml" >/dev/null
}

sidecar_written() {
  step "b. the controller adds svc-a to the client's Sidecar"
  until_ok "$PUSH_SECS" "a Sidecar labelled $MANAGED_BY in $APP_NS lists $APP_NS/$SVC_A_HOST" \
    sidecars_list_svc_a || fail "no Sidecar of ours lists $APP_NS/$SVC_A_HOST"
  local yaml=$ARTIFACTS_DIR/sidecar-client-learned.yaml
  kubectl -n "$APP_NS" get sidecars.networking.istio.io "$CLIENT_SIDECAR" -o yaml >"$yaml"
  grep -F -- "- $APP_NS/$SVC_A_HOST" "$yaml" >/dev/null ||
    fail "svc-a is listed, but not in the client's Sidecar $CLIENT_SIDECAR (see $yaml)"
  if grep -F -- "$SVC_B_HOST" "$yaml" >/dev/null; then
    fail "the client's Sidecar lists $SVC_B_HOST, which it never called (see $yaml)"
  fi
  grep -F -- "$GATEWAY_HOST" "$yaml" >/dev/null || fail "the client's Sidecar has no egressProxy/gateway host (see $yaml)"
  ok "Sidecar $APP_NS/$CLIENT_SIDECAR lists $APP_NS/$SVC_A_HOST, not svc-b ($yaml)"
  timing "first call -> Sidecar lists svc-a (seen by this script)" $((SECONDS - FIRST_CALL_AT))
  sed -n '/^spec:/,$p' "$yaml" | sed 's/^/    /'
}

# ---- step 9: c. direct traffic ----------------------------------------------------------------

client_knows_svc_a() {
  local clusters routes
  clusters=$(client_clusters) || return 1
  routes=$(client_routes) || return 1
  grep -F "\"$SVC_A_CLUSTER\"" <<<"$clusters" >/dev/null || { echo "no cluster $SVC_A_CLUSTER yet"; return 1; }
  grep -F "\"$SVC_A_HOST" <<<"$routes" >/dev/null || { echo "no route $APP_PORT virtual host for $SVC_A_HOST yet"; return 1; }
}

direct_traffic() {
  step "c. after istiod pushes, calls go direct (the gateway sees none)"
  until_ok "$PUSH_SECS" "the client's proxy has $SVC_A_CLUSTER and its route" client_knows_svc_a ||
    fail "istiod never pushed svc-a to the client's proxy"
  ok "istiod pushed svc-a to the client"
  timing "first call -> svc-a in the client's proxy (direct)" $((SECONDS - FIRST_CALL_AT))
  local clusters
  clusters=$(client_clusters) || fail "istioctl proxy-config cluster failed"
  if grep -F "\"$SVC_B_CLUSTER\"" <<<"$clusters" >/dev/null; then
    fail "the client's proxy has $SVC_B_CLUSTER: its config is not scoped to what it uses"
  fi
  ok "the client's proxy has no $SVC_B_CLUSTER (scoped to what it uses)"

  local logs gw_before gw_after i path last=""
  logs=$(gateway_logs) || fail "cannot read the gateway logs"
  gw_before=$(count_fixed "$SVC_A_CLUSTER" <<<"$logs")
  log "gateway access-log lines for $SVC_A_CLUSTER so far: $gw_before"
  for ((i = 1; i <= DIRECT_CALLS; i++)); do
    path=/lazyxds-e2e/$RUN_ID/direct-$i
    expect_reply svc-a "$path" svc-a
    last=$path
  done
  until_ok "$LOG_SECS" "the client's proxy sent the calls straight to svc-a ($SVC_A_CLUSTER)" \
    logged_with client_proxy_logs "$last" "$SVC_A_CLUSTER" ||
    fail "the calls did not go direct from the client's proxy"
  sleep 3 # let the gateway flush any line it would have written
  logs=$(gateway_logs) || fail "cannot read the gateway logs"
  gw_after=$(count_fixed "$SVC_A_CLUSTER" <<<"$logs")
  if grep -F "/lazyxds-e2e/$RUN_ID/direct-" <<<"$logs" >/dev/null; then
    fail "the gateway still saw direct calls:
$(grep -F "/lazyxds-e2e/$RUN_ID/direct-" <<<"$logs")"
  fi
  ((gw_after == gw_before)) ||
    fail "the gateway's count for $SVC_A_CLUSTER grew from $gw_before to $gw_after during direct calls"
  ok "$DIRECT_CALLS calls went direct; the gateway's count for the edge stayed at $gw_after"
}

# ---- step 10: d. kill switch ---------------------------------------------------------------------

our_sidecars() {
  kubectl get sidecars.networking.istio.io -A -l "$MANAGED_BY" \
    -o go-template='{{range .items}}{{.metadata.namespace}}/{{.metadata.name}}{{"\n"}}{{end}}'
}

client_has_full_config() {
  local clusters
  clusters=$(client_clusters) || return 1
  grep -F "\"$SVC_B_CLUSTER\"" <<<"$clusters" >/dev/null || { echo "no $SVC_B_CLUSTER yet"; return 1; }
}

# One call to svc-a during the kill switch; counts failures in KILL_FAILURES.
KILL_CALLS=0
KILL_FAILURES=0
kill_call() {
  KILL_CALLS=$((KILL_CALLS + 1))
  local path=/lazyxds-e2e/$RUN_ID/kill-$KILL_CALLS
  if call svc-a "$path" && [[ $CODE == 200 && $BODY == svc-a ]]; then
    return 0
  fi
  KILL_FAILURES=$((KILL_FAILURES + 1))
  log "  call $path failed: code '${CODE}' body '${BODY}'"
}

kill_switch() {
  step "d. kill switch: every Sidecar of ours deleted within ${KILL_SWITCH_SECS}s, calls keep working"
  local before
  before=$(our_sidecars) || fail "cannot list Sidecars"
  log "our Sidecars now: $(printf '%s' "$before" | tr '\n' ' ')"
  [[ -n $before ]] || fail "no Sidecar of ours before the kill switch: nothing to prove"

  local t0=$SECONDS
  if kubectl -n "$LAZYXDS_NAMESPACE" get configmap "$KILL_SWITCH_CONFIGMAP" >/dev/null 2>&1; then
    run kubectl -n "$LAZYXDS_NAMESPACE" patch configmap "$KILL_SWITCH_CONFIGMAP" --type merge \
      -p '{"data":{"enabled":"false"}}'
  else
    log "configmap $KILL_SWITCH_CONFIGMAP absent (the install did not ship it): creating it"
    run kubectl -n "$LAZYXDS_NAMESPACE" create configmap "$KILL_SWITCH_CONFIGMAP" --from-literal=enabled=false
  fi

  # Calls keep going (about one a second) while the Sidecars disappear, while istiod
  # pushes full config, and for 10 s after: every one must succeed.
  local left
  log "calling svc-a every second until no Sidecar labelled $MANAGED_BY is left"
  while true; do
    kill_call || true
    left=$(our_sidecars) || left="(cannot list)"
    [[ -n $left ]] || break
    if ((SECONDS - t0 >= KILL_SWITCH_SECS)); then
      fail "${KILL_SWITCH_SECS}s after the kill switch these Sidecars of ours remain: $(printf '%s' "$left" | tr '\n' ' ')"
    fi
    sleep 1
  done
  local took=$((SECONDS - t0))
  ok "no Sidecar labelled $MANAGED_BY remains (${took}s after the switch)"
  timing "kill switch -> no Sidecar of ours left" "$took"

  log "calling svc-a every second until istiod pushed full config to the client (it knows svc-b)"
  local t1=$SECONDS
  until client_has_full_config >/dev/null 2>&1; do
    ((SECONDS - t1 < PUSH_SECS)) || fail "the client's proxy did not get full config back within ${PUSH_SECS}s"
    kill_call || true
    sleep 1
  done
  ok "the client's proxy has $SVC_B_CLUSTER again (full config)"
  timing "kill switch -> full config in the client's proxy" $((SECONDS - t0))

  # They stay gone (a controller fighting the switch would re-create them).
  log "calling svc-a every second for 10s; no Sidecar of ours may come back"
  t1=$SECONDS
  while ((SECONDS - t1 < 10)); do
    kill_call || true
    left=$(our_sidecars) || left="(cannot list)"
    [[ -z $left ]] || fail "Sidecars came back after the kill switch: $(printf '%s' "$left" | tr '\n' ' ')"
    sleep 1
  done
  ((KILL_FAILURES == 0)) || fail "$KILL_FAILURES of $KILL_CALLS calls failed while the kill switch took effect"
  ok "all $KILL_CALLS calls during and after the switch succeeded; no Sidecar came back"

  local path=/lazyxds-e2e/$RUN_ID/after-kill-svc-b
  expect_reply svc-b "$path" svc-b
  until_ok "$LOG_SECS" "svc-b was called direct ($SVC_B_CLUSTER), with full config" \
    logged_with client_proxy_logs "$path" "$SVC_B_CLUSTER" ||
    fail "the call to svc-b did not go direct after the kill switch"
  expect_reply svc-a "/lazyxds-e2e/$RUN_ID/after-kill-svc-a" svc-a
  ok "kill switch: full config restored, calls succeed"
}

# ---- main ---------------------------------------------------------------------------------------

main() {
  log "lazyxds kind e2e: cluster $CLUSTER_NAME, Istio $ISTIO_VERSION, image $CONTROLLER_IMAGE, run $RUN_ID"
  preflight
  build
  create_cluster
  install_istio
  install_lazyxds
  deploy_app
  first_call
  sidecar_written
  direct_traffic
  kill_switch
}

main "$@"
