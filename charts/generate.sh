#!/usr/bin/env bash
# Generates charts/lazyxds/templates/ from the typed install (`make manifests` runs it), so
# the chart and `lazyxds install` have one source: the install is rendered with a sentinel
# for each value the chart exposes, and each sentinel becomes its Helm expression.
# Only values that appear verbatim in the output can be exposed this way; a flag the install
# derives other settings from (--gateway-max-replicas and --gateway-concurrency size
# LAZYXDS_MAX_STREAMS) or that adds or drops objects (module delivery, --revision) needs the
# install to render the expression itself: not yet values (charts/lazyxds/values.yaml lists
# them). Settings the install adds only when not default (--cluster-domain,
# --controller-dry-run) are rendered on, and their lines wrapped in the same condition
# (`conditional` below); the value sets of charts/test.sh render both sides of each.
# `make test-chart` checks the result: each value set renders what `lazyxds install` renders
# with the matching flags.
# Usage: generate.sh LAZYXDS_BIN
set -euo pipefail
bin=${1:?usage: generate.sh LAZYXDS_BIN}
here=$(cd "$(dirname "$0")" && pwd)
out="$here/lazyxds/templates"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT

# flag  sentinel  Helm expression. Sentinels are absent from the default output and accepted
# by the install's checks; strings are whole words in the output, numbers as they are printed.
subs=(
  "--namespace lazyxds-chart-sentinel-ns {{.Release.Namespace}}"
  "--gateway-name lazyxds-chart-sentinel-gw {{.Values.gateway.name}}"
  "--trust-domain lazyxds-chart-sentinel-td {{.Values.trustDomain}}"
  "--controller-image lazyxds-chart-sentinel-image {{.Values.controller.image}}"
  "--log-level lazyxds-chart-sentinel-log {{.Values.controller.logLevel}}"
  "--controller-replicas 7771 {{.Values.controller.replicas}}"
  "--grpc-port 17772 {{.Values.controller.grpcPort}}"
  "--http-port 17773 {{.Values.controller.httpPort}}"
  "--egress-proxy-port 17774 {{.Values.gateway.egressProxyPort}}"
  "--gateway-target-cpu 77 {{.Values.gateway.targetCPUUtilizationPercentage}}"
  "--flush-interval-ms 7775 {{.Values.filter.flushIntervalMs}}"
  "--refresh-interval-s 7776 {{.Values.filter.refreshIntervalS}}"
  "--gateway-min-replicas 7778 {{.Values.gateway.minReplicas}}"
  "--gateway-max-replicas 7779 {{.Values.gateway.maxReplicas}}"
  "--gateway-concurrency 13 {{.Values.gateway.concurrency}}"
)
# The controller's stream cap, as controller/src/install/controller.rs gateway_streams
# computes it (max replicas x concurrency x 4, at least 64): the sentinels' product, and
# the same formula in Helm (test.sh renders it at several sizes against the install).
streams=$((7779 * 13 * 4))
streams_expr='{{ max 64 (mul .Values.gateway.maxReplicas .Values.gateway.concurrency 4) }}'
flags=() sed_args=()
for s in "${subs[@]}"; do
  read -r flag sentinel expr <<<"$s"
  flags+=("$flag" "$sentinel")
  case $sentinel in
    13) pattern='"concurrency":13,'; repl="\"concurrency\":$expr," ;;
    77) pattern='\(averageUtilization: \)77$'; repl="\1$expr" ;; # too short to be unique
    *) pattern=$sentinel; repl=$expr ;;
  esac
  sed_args+=(-e "s/$pattern/$repl/g")
done
sed_args=(-e "s/'$streams'/'$streams_expr'/g" "${sed_args[@]}")
cluster_domain=lazyxds-chart-sentinel-cd
# Module delivery: without module.url as --no-module (the ConfigMap lazyxds-filter is the
# user's), with it as --module-url (a WasmPlugin; module.sha256 as --module-sha256). Both
# are rendered; the parts that differ become the two branches of one condition.
url=https://lazyxds-chart-sentinel-url/lazyxds_filter.wasm
sha=$(printf '7e57%.0s' {1..16})
common=("${flags[@]}" --cluster-domain "$cluster_domain" --controller-dry-run)
"$bin" install --no-module "${common[@]}" --out-dir "$tmp/configmap" 2>/dev/null
"$bin" install --module-url "$url" --module-sha256 "$sha" "${common[@]}" --out-dir "$tmp/url" 2>/dev/null

# The lines the install adds only for a setting off its default, wrapped in that condition.
not_default_domain='ne .Values.clusterDomain "cluster.local"'
conditional() {
  SHA=$sha URL=$url SENTINEL=$cluster_domain NOT_DEFAULT=$not_default_domain perl -0pe '
    my ($cd, $nd) = ($ENV{SENTINEL}, $ENV{NOT_DEFAULT});
    s#^(\s*- name: LAZYXDS_CLUSTER_DOMAIN\n\s*value: )\Q$cd\E\n#{{- if $nd }}\n$1\{{.Values.clusterDomain}}\n{{- end }}\n#mg;
    s#\{"cluster_domain":"\Q$cd\E",#{{ "{" }}{{ if $nd }}"cluster_domain":"{{.Values.clusterDomain}}",{{ end }}#g;
    s#^(\s*- name: LAZYXDS_DRY_RUN\n\s*value: \x27true\x27\n)#{{- if .Values.controller.dryRun }}\n$1\{{- end }}\n#mg;
    s#^(  enabled: )\x27true\x27(?=\n)#$1\{{ .Values.enabled | quote }}#mg;
    s#^(\s*cluster_domain: )\Q$cd\E\n#{{- if $nd }}\n$1\{{.Values.clusterDomain}}\n{{- end }}\n#mg;
    s#^(\s*sha256: )\Q$ENV{SHA}\E\n#{{- with .Values.module.sha256 }}\n$1\{{ . }}\n{{- end }}\n#mg;
    s#\Q$ENV{URL}\E#{{ .Values.module.url }}#g;
    s#\Q$cd\E#{{.Values.clusterDomain}}#g;
  '
}

rm -rf "$out"; mkdir -p "$out"
# The install's header comments say how it was rendered; the objects start at `---`.
template() { sed -n '/^---$/,$p' "$1" | conditional | sed "${sed_args[@]}"; }
for f in "$tmp"/configmap/*.yaml; do
  name=$(basename "$f")
  template "$f" > "$tmp/a"; template "$tmp/url/$name" > "$tmp/b"
  {
    echo "{{- /* Generated by charts/generate.sh from \`lazyxds install\`: do not edit. */}}"
    if [ "$name" = namespace.yaml ]; then
      echo '{{- if .Values.createNamespace }}'; cat "$tmp/a"; echo '{{- end }}'
    elif cmp -s "$tmp/a" "$tmp/b"; then
      cat "$tmp/a"
    else
      echo '{{- if .Values.module.url }}'; cat "$tmp/b"; echo '{{- else }}'; cat "$tmp/a"; echo '{{- end }}'
    fi
  } > "$out/$name"
done
# The pre-delete hook is Helm's alone (`lazyxds uninstall --wait` as a Job, no install
# counterpart): kept as a template in charts/hooks/.
cp "$here"/hooks/*.yaml "$out/"
# The install's checks across two fields (controller/src/install/mod.rs check), which a
# schema cannot say.
cat > "$out/checks.yaml" <<'CHECKS'
{{- /* Generated by charts/generate.sh: what values.schema.json cannot say. */}}
{{- if gt (int .Values.gateway.minReplicas) (int .Values.gateway.maxReplicas) }}
{{- fail "gateway.minReplicas must be at most gateway.maxReplicas" }}
{{- end }}
{{- if and (hasPrefix "https://" .Values.module.url) (not .Values.module.sha256) }}
{{- fail "module.sha256 is required with an https:// module.url" }}
{{- end }}
{{- if eq (int .Values.controller.grpcPort) (int .Values.controller.httpPort) }}
{{- fail "controller.httpPort must differ from controller.grpcPort" }}
{{- end }}
CHECKS
for s in "${subs[@]}" "x $cluster_domain" "x $streams" "x $sha" "x lazyxds-chart-sentinel-url"; do
  read -r _ sentinel _ <<<"$s"
  [ "$sentinel" = 13 ] && continue # its one place is checked by the drift test
  if grep -rnw -e "$sentinel" "$out"; then
    echo "generate.sh: sentinel $sentinel left where the chart has no expression for it" >&2; exit 1
  fi
done
# The chart's version is the install's (the image tags follow it too).
version=$("$bin" --version | awk '{print $2}')
sed -i -e "s/^version: .*/version: $version/" -e "s/^appVersion: .*/appVersion: \"$version\"/" "$here/lazyxds/Chart.yaml"
for expr in '.Values.controller.dryRun' "if $not_default_domain" '.Values.enabled'; do
  grep -rqF "$expr" "$out" || { echo "generate.sh: the install no longer renders what {{ $expr }} stands for" >&2; exit 1; }
done
echo "generated $out"
