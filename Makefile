# Loxilight build, test and demo. `make test` and `make demo` need root
# (network namespaces and eBPF); `make deps` installs Debian 12 packages.

SHELL := /bin/bash
CARGO ?= cargo
# prometheus: promtool checks the metrics; rpm and systemd: the package tests.
DEB_PACKAGES := clang llvm libelf-dev zlib1g-dev pkg-config make iproute2 curl \
	python3 linux-libc-dev libbpf-dev ethtool prometheus rpm systemd
# Cargo subcommands that build the packages, pinned for reproducible packages.
CARGO_DEB := cargo-deb@3.8.0
CARGO_GENERATE_RPM := cargo-generate-rpm@0.21.1
PACKAGES_DIR := target/packages
# The benchmark suite's contenders and tools (its smoke run is part of `make test`).
BENCH_PACKAGES := netsniff-ng iptables nftables bpftool fonts-dejavu-core util-linux gzip
# Extra arguments for the suite, e.g. BENCH_ARGS="--rounds 5".
BENCH_ARGS ?=

.PHONY: all deps bench-deps build test demo lint clean check-root bench bench-mirror packages test-packages packaging-tools

# $(call apt-install,PACKAGES): installs only what is missing, so it is quick
# when everything is there.
define apt-install
	@missing=$$(for p in $(1); do \
		dpkg-query -W -f='$${Status}\n' "$$p" 2>/dev/null | grep -q 'install ok installed' || echo "$$p"; \
	done); \
	if [ -n "$$missing" ]; then \
		echo "installing:" $$missing; \
		if [ "$$(id -u)" -ne 0 ]; then echo "error: installing packages needs root" >&2; exit 1; fi; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get update -q && apt-get install -y -q $$missing; \
	fi
endef

all: build

check-root:
	@if [ "$$(id -u)" -ne 0 ]; then \
		echo "error: 'make $(MAKECMDGOALS)' needs root (network namespaces and eBPF): run it as root, e.g. sudo make $(MAKECMDGOALS)" >&2; \
		exit 1; \
	fi

deps:
	$(call apt-install,$(DEB_PACKAGES))
	@command -v $(CARGO) >/dev/null || { echo "error: $(CARGO) not found: install Rust (rustup)" >&2; exit 1; }

bench-deps: deps
	$(call apt-install,$(BENCH_PACKAGES))

build: deps
	$(CARGO) build --workspace

# Unit, datapath and end-to-end tests, and the benchmark suite's smoke run
# (bench/tests/smoke.rs); loxicmd must be built for the e2e tests. Then the
# packages are built and checked.
test: check-root bench-deps
	$(CARGO) build --workspace
	$(CARGO) test --workspace --no-fail-fast -- --test-threads=2
	$(MAKE) test-packages

packaging-tools:
	@command -v cargo-deb >/dev/null || $(CARGO) install --locked $(CARGO_DEB)
	@command -v cargo-generate-rpm >/dev/null || $(CARGO) install --locked $(CARGO_GENERATE_RPM)

# The .deb and .rpm (both commands, the systemd unit, the config) in target/packages.
packages: deps packaging-tools
	$(CARGO) build --release -p loxilight -p loxicmd
	rm -rf $(PACKAGES_DIR) && mkdir -p $(PACKAGES_DIR)
	$(CARGO) deb -p loxilight --no-build --output $(PACKAGES_DIR)/
	$(CARGO) generate-rpm --output $(PACKAGES_DIR)/

# Installs them into scratch roots (never onto this system) and checks them.
test-packages: check-root packages
	bash packaging/test-packages.sh $(PACKAGES_DIR)

demo: check-root build
	bash scripts/demo.sh

# The side-by-side suite (README, "Performance"): writes bench/results/latest.{json,md,png}.
bench: check-root bench-deps
	$(CARGO) build --release -p loxilight -p loxilight-bench
	./target/release/loxilight-bench --out bench/results $(BENCH_ARGS)

# Kernel-mirror latency and table load (README, "Kernel mirror").
bench-mirror: check-root deps
	$(CARGO) build --release --workspace
	./target/release/mirror-bench --json bench/results/mirror.json

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

clean:
	$(CARGO) clean
