# dvs — top-level targets. `make run` and `make test` are the two commands a user needs;
# both install what they need first (scripts/setup.sh, idempotent).
SHELL := /bin/bash
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: all setup build images run stop test test-unit test-guest-build test-qemu cluster-test console-test bench lint fmt fuzz clean

all: build

## setup: install what the project needs (QEMU, the x86_64-unknown-none target, iproute2); idempotent
setup:
	@bash scripts/setup.sh

## build: host crates (debug)
build: setup
	$(CARGO) build --workspace

## images: build images/vos.elf (release, stripped) and its manifest
images: setup
	@bash images/build.sh

## run: build the images and bring up a working DC on this machine (see README)
run: setup images
	@bash scripts/run.sh

## stop: tear down what `make run` started, leaving no QEMU behind
stop:
	@bash scripts/stop.sh

## test: lint, unit + property tests, the guest build, QEMU boot tests, the cluster test
test: setup lint test-unit test-guest-build images test-qemu cluster-test console-test
	@echo "make test: all stages passed"

test-unit:
	$(CARGO) test --workspace --exclude qemu-tests

## the no_std protocol crate must build for the guest target
test-guest-build:
	$(CARGO) build -p m3ipc-core --target x86_64-unknown-none --release

test-qemu: images
	@bash scripts/qemu-tests.sh

## cluster-test: three nodes as network namespaces on this machine, real VOS VMs (needs root); a cargo test
## target (qemu-tests/support/tests/cluster.rs), debug build like the rest of `make test`
cluster-test: images
	@[ "$$(id -u)" = 0 ] || { echo "cluster-test: needs root (network namespaces, veth, a bridge): run it as root, e.g. sudo make cluster-test" >&2; exit 1; }
	$(CARGO) build -p dvs-hypervisor --bin dvs
	DVS_CLUSTER_TEST=1 $(CARGO) test -p dvs-test-support --test cluster
	DVS_CLUSTER_TEST=1 $(CARGO) test -p dvs-test-support --test control

## console-test: the web console in headless Chromium (two nodes as namespaces, real VOS VMs; needs root,
## chromium and chromium-driver, which setup installs); a screenshot lands in target/artifacts/console.png
console-test: images
	@[ "$$(id -u)" = 0 ] || { echo "console-test: needs root (network namespaces): run it as root, e.g. sudo make console-test" >&2; exit 1; }
	$(CARGO) build -p dvs-hypervisor --bin dvs
	DVS_CONSOLE_TEST=1 $(CARGO) test -p dvs-test-support --test console

## bench: criterion benchmarks and the system benchmarks (VOS, cluster, density, the web server against nginx,
## which scripts/bench-http.sh installs from Debian when missing); prints tables, writes target/bench/summary.json
bench: setup images
	@bash scripts/bench.sh

## lint: rustfmt check and clippy with warnings as errors, host and guest
lint: setup
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	cd unikernel-vos && $(CARGO) fmt -- --check && $(CARGO) clippy -- -D warnings

fmt:
	$(CARGO) fmt --all
	cd unikernel-vos && $(CARGO) fmt

## fuzz: run the frame decoder fuzzer for a bounded time (FUZZ_SECONDS, default 60); not part of `make test`
FUZZ_SECONDS ?= 60
fuzz: setup
	@bash scripts/fuzz.sh $(FUZZ_SECONDS)

clean:
	$(CARGO) clean
	cd unikernel-vos && $(CARGO) clean
