# lazypull: a containerd snapshotter that starts containers before their
# image is downloaded.
#
#   make            build bin/lazypulld and bin/lazypull
#   make demo       set up everything, lazy-pull a sample image, compare with a normal pull
#   make test       install what the tests need, then run every test (as root)
#   make fuzz       fuzz the parsing of layers' footers and TOCs, FUZZTIME per target
#   make bench      the benchmarks
#   make install    install binaries, systemd unit and example config (as root)
#   make release    static release archives for amd64 and arm64 in _output/release

GO      ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)
BIN     := bin

.PHONY: all build deps demo bench test unit fuzz integration vet fmt-check clean install release

all: build

build:
	CGO_ENABLED=0 $(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/ ./cmd/lazypulld ./cmd/lazypull

# Where make install puts things; DESTDIR for staging (packages, images).
PREFIX     ?= /usr/local
BINDIR     ?= $(PREFIX)/bin
SYSTEMDDIR ?= /etc/systemd/system
CONFIGDIR  ?= /etc/lazypull

# The binaries, the systemd unit and, unless one is there already, the
# example configuration as the node's configuration. Then, on a node:
#   systemctl daemon-reload && systemctl enable --now lazypulld
install: build
	install -D -m 0755 $(BIN)/lazypulld $(DESTDIR)$(BINDIR)/lazypulld
	install -D -m 0755 $(BIN)/lazypull $(DESTDIR)$(BINDIR)/lazypull
	install -D -m 0644 contrib/systemd/lazypulld.service $(DESTDIR)$(SYSTEMDDIR)/lazypulld.service
	@if [ -e $(DESTDIR)$(CONFIGDIR)/config.toml ]; then \
		echo "keeping $(DESTDIR)$(CONFIGDIR)/config.toml"; \
	else \
		install -D -m 0644 config/example.toml $(DESTDIR)$(CONFIGDIR)/config.toml; \
	fi

# Static binaries for linux/amd64 and linux/arm64 with the version in
# --version, packed with the unit, the example config and the docs.
release:
	VERSION=$(VERSION) hack/release.sh _output/release

# System packages, and containerd 2.x, crictl and dockerd built from the Go
# module proxy into a cache directory (each skipped when already built).
deps:
	hack/install-deps.sh
	hack/build-containerd2.sh
	hack/build-crictl.sh
	hack/build-dockerd.sh

demo: deps build
	hack/demo.sh

# End to end, as root: cold starts of five images (python3, a JDK, nginx, C
# headers, sqlite3 and a database) pulled normally (overlayfs) and lazily,
# over an emulated link (per packet in the kernel's network path, checked
# before the runs); tables on stdout, results.json
# and chart.png in bench-results/ (README, "Benchmarks"). Flags of hack/bench
# go in BENCH_FLAGS, e.g. make bench BENCH_FLAGS='-runs 3 -rtt 80ms -rate 100mbit -cpu-hog 2'.
# Then the Go micro-benchmarks of fs and cache.
BENCH_FLAGS ?=
bench: deps build
	$(GO) build -o $(BIN)/lazypull-bench ./hack/bench
	$(BIN)/lazypull-bench -bin $(BIN) $(BENCH_FLAGS)
	$(GO) test -run '^$$' -bench . ./fs/ ./cache/

test: deps vet fmt-check unit fuzz integration

vet:
	$(GO) vet ./...

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

# Unit tests: packages other than integration/. They mount FUSE and overlay
# filesystems for real, so they too need root.
unit:
	$(GO) test -race -count=1 -timeout 20m $$($(GO) list ./... | grep -v /integration)

# Each fuzz target of fs (footer, TOC decoding and checks, TOC indexing) for
# FUZZTIME, from its seed corpus (fs/testdata/fuzz: the hostile layers of
# the tests); a crash, a hang or a broken invariant fails, and the input
# that did it lands in fs/testdata/fuzz to be kept as a seed once fixed.
FUZZTIME    ?= 30s
FUZZTARGETS := FuzzFooter FuzzTOC FuzzIndex
fuzz:
	for t in $(FUZZTARGETS); do \
		$(GO) test -run '^$$' -fuzz "^$$t\$$" -fuzztime $(FUZZTIME) ./fs/ || exit 1; \
	done

# Against real containerd 1.6 and 2.x, the distribution registry and runc.
integration:
	$(GO) test -race -count=1 -timeout 50m ./integration/...

clean:
	rm -rf $(BIN)
