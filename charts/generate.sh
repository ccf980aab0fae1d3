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
# Module delivery: without module.url as the install's ConfigMap lazyxds-filter (the chart's
# own with module.wasmBase64, else the user's, as --no-module), with it as --module-url (a
# WasmPlugin; module.sha256 as --module-sha256). Both are rendered; the parts that differ
# become the two branches of one condition.
url=https://lazyxds-chart-sentinel-url/lazyxds_filter.wasm
sha=$(printf '7e57%.0s' {1..16})
# The revision, a sentinel; the failure policy FAIL_CLOSED (the one name no default renders:
# FAIL_CLOSED in the EnvoyFilter, FAIL_CLOSE in the WasmPlugin), both put back as the
# chart's own choice (_helpers.tpl below) of the install's rule.
revision=lazyxds-chart-sentinel-rev
common=("${flags[@]}" --cluster-domain "$cluster_domain" --controller-dry-run
  --revision "$revision" --failure-policy FAIL_CLOSED)
# The module in the chart's own ConfigMap (module.wasmBase64, the default install's way): a
# sentinel module (the \0asm header the install checks for), its base64 and sha256 put back
# as expressions of the value.
printf '\0asm\1\0\0\0lazyxds-chart-sentinel' > "$tmp/sentinel.wasm"
wasm_b64=$(base64 -w0 "$tmp/sentinel.wasm")
wasm_sha=$(sha256sum "$tmp/sentinel.wasm" | cut -d' ' -f1)
"$bin" install --wasm "$tmp/sentinel.wasm" "${common[@]}" --out-dir "$tmp/configmap" 2>/dev/null
"$bin" install --module-url "$url" --module-sha256 "$sha" "${common[@]}" --out-dir "$tmp/url" 2>/dev/null
# Without the admission policy: the objects only the other render has are wrapped in
# `if .Values.admissionPolicy`.
"$bin" install --wasm "$tmp/sentinel.wasm" "${common[@]}" --no-admission-policy --out-dir "$tmp/configmap-np" 2>/dev/null
"$bin" install --module-url "$url" --module-sha256 "$sha" "${common[@]}" --no-admission-policy \
  --out-dir "$tmp/url-np" 2>/dev/null

# The lines the install adds only for a setting off its default, wrapped in that condition.
not_default_domain='ne .Values.clusterDomain "cluster.local"'
conditional() { # FILE
  FILE=$1 WB64=$wasm_b64 WSHA=$wasm_sha REV=$revision SHA=$sha URL=$url SENTINEL=$cluster_domain NOT_DEFAULT=$not_default_domain perl -0pe '
    my ($cd, $nd, $rev) = ($ENV{SENTINEL}, $ENV{NOT_DEFAULT}, $ENV{REV});
    # The revision: the injection label of the namespace (else "default"), of the
    # controller pods (only when set), of the gateway pods (else sidecar.istio.io/inject).
    if ($ENV{FILE} eq "namespace.yaml") {
      s#^(\s*istio.io/rev: )\Q$rev\E\n#$1\{{ .Values.revision | default "default" }}\n#mg;
    } elsif ($ENV{FILE} eq "gateway.yaml") {
      s#^(\s*)istio.io/rev: \Q$rev\E\n#{{- if .Values.revision }}\n$1istio.io/rev: {{ .Values.revision }}\n{{- else }}\n$1sidecar.istio.io/inject: \x27true\x27\n{{- end }}\n#mg;
    } else {
      s#^(\s*istio.io/rev: )\Q$rev\E\n#{{- with .Values.revision }}\n$1\{{ . }}\n{{- end }}\n#mg;
    }
    # The module carried by the chart: its hash rolls the gateway (only with the value).
    if ($ENV{FILE} eq "module.yaml") {
      s#^(\s*lazyxds.io/module-sha256: )\Q$ENV{WSHA}\E\n#$1\{{ .Values.module.wasmBase64 | b64dec | sha256sum }}\n#mg;
    } else {
      s#^(\s*lazyxds.io/module-sha256: )\Q$ENV{WSHA}\E\n#{{- with .Values.module.wasmBase64 }}\n$1\{{ . | b64dec | sha256sum }}\n{{- end }}\n#mg;
    }
    s#\Q$ENV{WB64}\E#{{ .Values.module.wasmBase64 }}#g;
    s#^(\s*failure_policy: )FAIL_CLOSED\n#$1\{{ include "lazyxds.envoyFailurePolicy" . }}\n#mg;
    s#^(\s*failStrategy: )FAIL_CLOSE\n#$1\{{ include "lazyxds.wasmFailStrategy" . }}\n#mg;
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
template() { sed -n '/^---$/,$p' "$1" | conditional "$(basename "$1")" | sed "${sed_args[@]}"; }
# Each object of A (a template, `---` between objects) that B lacks, wrapped in `if COND`.
only_if() { # COND A B
  python3 - "$@" <<'PY'
import sys
cond, a, b = sys.argv[1:4]
docs = lambda path: open(path).read().split("---\n")
theirs = set(docs(b))
out = []
for d in docs(a):
    out.append(d if d in theirs or not d.strip() else "{{- if %s }}\n%s{{- end }}\n" % (cond, d))
sys.stdout.write("---\n".join(out))
PY
}
for f in "$tmp"/configmap/*.yaml; do
  name=$(basename "$f")
  template "$f" > "$tmp/a"; template "$tmp/configmap-np/$name" > "$tmp/a-np"
  if [ -e "$tmp/url/$name" ]; then # module.yaml is the ConfigMap delivery's alone
    template "$tmp/url/$name" > "$tmp/b"; template "$tmp/url-np/$name" > "$tmp/b-np"
  else
    : > "$tmp/b"; : > "$tmp/b-np"
  fi
  for v in a b; do only_if .Values.admissionPolicy "$tmp/$v" "$tmp/$v-np" > "$tmp/$v.p"; mv "$tmp/$v.p" "$tmp/$v"; done
  {
    echo "{{- /* Generated by charts/generate.sh from \`lazyxds install\`: do not edit. */}}"
    if [ "$name" = namespace.yaml ]; then
      echo '{{- if .Values.createNamespace }}'; cat "$tmp/a"; echo '{{- end }}'
    elif [ "$name" = module.yaml ]; then
      echo '{{- if .Values.module.wasmBase64 }}'; cat "$tmp/a"; echo '{{- end }}'
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
# The failure policy as the install chooses it (controller/src/install/config.rs
# failure_policy): the one set, else FAIL_RELOAD, but in a WasmPlugin for an Istio older than
# 1.27 (WASM_PLUGIN_FAIL_RELOAD_SINCE) or not named FAIL_OPEN; Istio spells FAIL_CLOSED
# FAIL_CLOSE. The value sets of charts/test.sh render each case against the install.
cat > "$out/_helpers.tpl" <<'HELPERS'
{{- /* Generated by charts/generate.sh: the install's rules the templates share. */}}
{{- define "lazyxds.wasmPluginHasFailReload" -}}
{{- if and .Values.istioVersion (semverCompare ">=1.27-0" .Values.istioVersion) }}true{{ end -}}
{{- end }}
{{- define "lazyxds.envoyFailurePolicy" -}}
{{- .Values.filter.failurePolicy | default "FAIL_RELOAD" -}}
{{- end }}
{{- define "lazyxds.wasmFailStrategy" -}}
{{- $p := .Values.filter.failurePolicy -}}
{{- if eq $p "FAIL_CLOSED" }}FAIL_CLOSE
{{- else if $p }}{{ $p }}
{{- else if include "lazyxds.wasmPluginHasFailReload" . }}FAIL_RELOAD
{{- else }}FAIL_OPEN
{{- end -}}
{{- end }}
HELPERS
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
{{- if and .Values.module.url .Values.module.wasmBase64 }}
{{- fail "module.wasmBase64 and module.url are two ways to deliver the module: set one" }}
{{- end }}
{{- if and .Values.istioVersion (semverCompare "<1.24-0" .Values.istioVersion) }}
{{- fail "istioVersion: the oldest Istio lazyxds is checked against is 1.24" }}
{{- end }}
{{- if and .Values.module.url (eq .Values.filter.failurePolicy "FAIL_RELOAD") (not (include "lazyxds.wasmPluginHasFailReload" .)) }}
{{- fail "filter.failurePolicy FAIL_RELOAD is in the WasmPlugin CRD from Istio 1.27 on: set istioVersion to the mesh's release, or FAIL_OPEN / FAIL_CLOSED" }}
{{- end }}
CHECKS
for s in "${subs[@]}" "x $cluster_domain" "x $streams" "x $sha" "x lazyxds-chart-sentinel-url" "x $revision" "x FAIL_CLOSED" "x FAIL_CLOSE" "x $wasm_b64" "x $wasm_sha"; do
  read -r _ sentinel _ <<<"$s"
  [ "$sentinel" = 13 ] && continue # its one place is checked by the drift test
  # (_helpers.tpl and checks.yaml name the failure policies themselves.)
  if grep -rnw --exclude=_helpers.tpl --exclude=checks.yaml -e "$sentinel" "$out"; then
    echo "generate.sh: sentinel $sentinel left where the chart has no expression for it" >&2; exit 1
  fi
done
# The chart's version and appVersion are the install's (the crate's), and so is the default
# controller image's tag (charts/test.sh fails when they disagree).
version=$("$bin" --version | awk '{print $2}')
sed -i -e "s/^version: .*/version: $version/" -e "s/^appVersion: .*/appVersion: \"$version\"/" "$here/lazyxds/Chart.yaml"
sed -i -e "s#^\(  image: [^ ]*/lazyxds:\).*#\1$version#" "$here/lazyxds/values.yaml"
for expr in '.Values.controller.dryRun' "if $not_default_domain" '.Values.enabled' \
  'if .Values.admissionPolicy' 'with .Values.revision' 'if .Values.revision' 'default "default"' \
  'include "lazyxds.envoyFailurePolicy"' 'include "lazyxds.wasmFailStrategy"' \
  'with .Values.module.wasmBase64' '{{ .Values.module.wasmBase64 }}'; do
  grep -rqF "$expr" "$out" || { echo "generate.sh: the install no longer renders what {{ $expr }} stands for" >&2; exit 1; }
done
echo "generated $out"
