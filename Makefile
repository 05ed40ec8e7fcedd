# dkv: the commands a person types. See README.md.
#   make run     install what is missing, build, start a local cluster in the foreground
#   make test    install what is missing, build with ASan+UBSan, run unit, fuzz-replay and
#                integration tests
#   make build   release binaries at build/dkv and build/dkvctl (the client)
#   make install build/dkv (and build/dkvctl) to $(PREFIX)/bin, the systemd unit and a sample
#                config; DESTDIR stages it elsewhere (see docs/deploy.md)

MAKEFLAGS += --no-print-directory
JOBS ?= $(shell nproc 2>/dev/null || echo 2)
PYTEST ?= /usr/bin/python3 -m pytest
PYTEST_ARGS ?=

.PHONY: all deps build asan test unit integration run bench profile fuzz clean format install \
	uninstall

all: build

deps:
	@bash scripts/install-deps.sh

build: deps
	@cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
	@cmake --build build -j $(JOBS) --target dkv dkvctl

asan:
	@bash scripts/install-deps.sh --test
	@cmake -S . -B build/asan -DCMAKE_BUILD_TYPE=Asan >/dev/null
	@cmake --build build/asan -j $(JOBS)

unit: asan
	cd build/asan && ctest --output-on-failure

integration: asan
	DKV_BIN=$(CURDIR)/build/asan/dkv $(PYTEST) -q tests/integration $(PYTEST_ARGS)

test: unit integration

run: build
	@bash scripts/cluster.sh run

# make bench [QUICK=1] [SCENARIOS=default|all|x10|...] [BENCH_ARGS=...]: the scenarios against
# an nginx ceiling, report in bench/results/ (docs/benchmarks.md lists the scenarios and groups).
# make profile SCENARIO=n3-a2f3-put [ALLOC=1]: perf flame graph + top symbols.
bench: build
	@bash scripts/install-deps.sh --bench
	/usr/bin/python3 bench/bench.py $(if $(QUICK),--quick) $(if $(SCENARIOS),--scenarios $(SCENARIOS)) \
	  $(BENCH_ARGS)

profile: build
	@bash scripts/install-deps.sh --bench
	bash bench/profile.sh $(SCENARIO) $(BENCH_ARGS)

fuzz:
	@bash scripts/install-deps.sh --fuzz
	@CC=clang cmake -S . -B build/fuzz -DCMAKE_BUILD_TYPE=Asan -DDKV_LIBFUZZER=ON >/dev/null
	@cmake --build build/fuzz -j $(JOBS)
	@for f in build/fuzz/fuzz_*; do case $$f in *_replay) continue;; esac; \
	  c=tests/fuzz/corpus/$${f##*/fuzz_}; echo "== $$f ($$c)"; \
	  $$f -max_total_time=$${FUZZ_SECONDS:-60} $$c || exit 1; done

# make install [PREFIX=/usr/local] [DESTDIR=] [BUILD_DIR=build]: what `make build` made, nothing
# is built here (so `sudo make install` never compiles as root). The unit's ExecStart follows
# PREFIX; an existing /etc/dkv/dkv.conf is never touched (the sample goes next to it).
PREFIX ?= /usr/local
BINDIR ?= $(PREFIX)/bin
SYSCONFDIR ?= /etc
UNITDIR ?= /etc/systemd/system
BUILD_DIR ?= build

install:
	@test -x $(BUILD_DIR)/dkv || { echo "make install: no $(BUILD_DIR)/dkv; run make build first" >&2; exit 1; }
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(UNITDIR) $(DESTDIR)$(SYSCONFDIR)/dkv
	install -m 0755 $(BUILD_DIR)/dkv $(DESTDIR)$(BINDIR)/dkv
	@if [ -x $(BUILD_DIR)/dkvctl ]; then \
	  echo install -m 0755 $(BUILD_DIR)/dkvctl $(DESTDIR)$(BINDIR)/dkvctl; \
	  install -m 0755 $(BUILD_DIR)/dkvctl $(DESTDIR)$(BINDIR)/dkvctl; fi
	sed -e 's|/usr/local/bin/dkv|$(BINDIR)/dkv|g' -e 's|/etc/dkv/|$(SYSCONFDIR)/dkv/|g' \
	  packaging/dkv.service > $(DESTDIR)$(UNITDIR)/dkv.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/dkv.service
	install -m 0644 packaging/dkv.conf $(DESTDIR)$(SYSCONFDIR)/dkv/dkv.conf.sample

uninstall:
	rm -f $(DESTDIR)$(BINDIR)/dkv $(DESTDIR)$(BINDIR)/dkvctl $(DESTDIR)$(UNITDIR)/dkv.service \
	  $(DESTDIR)$(SYSCONFDIR)/dkv/dkv.conf.sample

format:
	clang-format -i src/*.c src/*/*.c src/*/*.h tests/unit/*.c tests/fuzz/*.c

clean:
	rm -rf build
