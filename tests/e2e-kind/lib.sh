# shellcheck shell=bash
# Helpers for run.sh: logging, bounded waits, version checks, Kubernetes/Istio queries.
# Sourced, not run. Written for bash >= 3.2 (macOS): no mapfile, no associative arrays,
# empty arrays expanded as ${a[@]+"${a[@]}"}.

# ---- logging ----------------------------------------------------------------------

STEP_NO=0
STEP_TOTAL=${STEP_TOTAL:-9}

ts() { date +%H:%M:%S; }

log() { printf '[e2e %s] %s\n' "$(ts)" "$*"; }

# A numbered step header, so a user (or a CI log) sees where a run stopped.
step() {
  STEP_NO=$((STEP_NO + 1))
  printf '\n[e2e %s] ==== step %d/%d: %s ====\n' "$(ts)" "$STEP_NO" "$STEP_TOTAL" "$*"
}

# Prints a command, then runs it.
run() {
  log "+ $*"
  "$@"
}

# Fails the run with a reason. The EXIT trap collects diagnostics and tears down.
fail() {
  printf '\n[e2e %s] FAIL: %s\n' "$(ts)" "$*" >&2
  exit 1
}

ok() { log "ok: $*"; }

# ---- bounded waits ------------------------------------------------------------------

# until_ok TIMEOUT_SECS WHAT CMD [ARG...]
# Runs CMD every POLL_SECS until it succeeds (returns 0) or TIMEOUT_SECS have passed
# (returns 1, after printing the last attempt's output). CMD's output is kept in
# $LAST_OUTPUT. CMD runs in a condition context: `set -e` does not apply inside it, so
# predicates must return their own status (chain with &&).
LAST_OUTPUT=""
until_ok() {
  local timeout=$1 what=$2
  shift 2
  local start=$SECONDS attempt=0 out_file
  out_file=$(mktemp)
  log "waiting (at most ${timeout}s): $what"
  while true; do
    attempt=$((attempt + 1))
    if "$@" >"$out_file" 2>&1; then
      LAST_OUTPUT=$(cat "$out_file")
      rm -f "$out_file"
      log "  done after $((SECONDS - start))s ($attempt attempts): $what"
      if [[ -n $LAST_OUTPUT ]]; then
        printf '%s\n' "$LAST_OUTPUT" | head -n 5 | sed 's/^/      /'
      fi
      return 0
    fi
    if ((SECONDS - start >= timeout)); then
      LAST_OUTPUT=$(cat "$out_file")
      rm -f "$out_file"
      log "  gave up after $((SECONDS - start))s ($attempt attempts): $what"
      if [[ -n $LAST_OUTPUT ]]; then
        log "  last attempt printed:"
        printf '%s\n' "$LAST_OUTPUT" | tail -n 25 | sed 's/^/      /'
      fi
      return 1
    fi
    sleep "${POLL_SECS:-2}"
  done
}

# ---- versions ---------------------------------------------------------------------

# version_ge A B: true when dotted version A >= B (numeric, major.minor.patch).
version_ge() {
  local a=$1 b=$2 i x y
  local -a av bv
  IFS=. read -r -a av <<<"${a%%[-+]*}"
  IFS=. read -r -a bv <<<"${b%%[-+]*}"
  for i in 0 1 2; do
    x=${av[$i]:-0}
    y=${bv[$i]:-0}
    if ((10#$x > 10#$y)); then return 0; fi
    if ((10#$x < 10#$y)); then return 1; fi
  done
  return 0
}

# The first x.y.z in a command's output ("" when none).
first_version() { grep -Eo '[0-9]+\.[0-9]+\.[0-9]+' | head -n 1 || true; }

# [workspace.package] version from a Cargo.toml.
workspace_version() {
  awk '
    /^\[workspace\.package\][[:space:]]*$/ { section = 1; next }
    /^\[/                                  { section = 0 }
    section && /^version[[:space:]]*=/ {
      sub(/^version[[:space:]]*=[[:space:]]*"/, ""); sub(/".*$/, ""); print; exit
    }' "$1"
}

# ---- Kubernetes helpers (KUBECONFIG is always the run's own file) -------------------

# A Deployment's pod selector as "k=v,k=v" (no jq needed).
deployment_selector() {
  local ns=$1 name=$2 sel
  # shellcheck disable=SC2016 # a Go template, not a shell expansion
  sel=$(kubectl -n "$ns" get deployment "$name" \
    -o go-template='{{range $k, $v := .spec.selector.matchLabels}}{{$k}}={{$v}},{{end}}') || return 1
  [[ -n $sel ]] || return 1
  printf '%s\n' "${sel%,}"
}

# Names of the Running, not-terminating pods matching a selector, one per line.
running_pods() {
  local ns=$1 selector=$2
  kubectl -n "$ns" get pods -l "$selector" --field-selector=status.phase=Running \
    -o go-template='{{range .items}}{{if not .metadata.deletionTimestamp}}{{.metadata.name}}{{"\n"}}{{end}}{{end}}'
}

# True when a pod has the istio-proxy container (a regular container, or a native
# sidecar: an init container with restartPolicy Always).
has_istio_proxy() {
  local ns=$1 pod=$2 names
  names=$(kubectl -n "$ns" get pod "$pod" \
    -o jsonpath='{.spec.containers[*].name} {.spec.initContainers[*].name}') || return 1
  case " $names " in
    *" istio-proxy "*) return 0 ;;
    *) return 1 ;;
  esac
}

# Envoy stats of a pod's proxy (admin /stats, text: "name: value" per line).
proxy_stats() {
  kubectl -n "$1" exec "$2" -c istio-proxy -- pilot-agent request GET stats
}

# Sum of the counters whose name is SUFFIX or ends with ".SUFFIX" (Wasm metrics get a
# prefix such as "wasmcustom."), from `proxy_stats` output on stdin. Fails when none.
sum_stat() {
  awk -v suffix="$1" '
    {
      name = $1; sub(/:$/, "", name)
      if (name == suffix || substr(name, length(name) - length(suffix)) == "." suffix) {
        total += $2; found = 1
      }
    }
    END { if (!found) exit 1; print total + 0 }'
}

# The cluster the "allow_any" route of a route configuration sends to, from
# `istioctl proxy-config route ... -o json` on stdin (pretty-printed: one key per line;
# the first "cluster" after the allow_any virtual host's name is its route's target).
allow_any_cluster() {
  awk '
    /"name": "allow_any"/ { seen = 1 }
    seen && /"cluster":/ {
      line = $0
      sub(/^[^:]*:[[:space:]]*"/, "", line); sub(/".*$/, "", line)
      print line; exit
    }'
}

# Counts lines of stdin containing a fixed string (0 when none; never fails).
count_fixed() { grep -cF -- "$1" || true; }
