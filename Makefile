# lazypull: a containerd snapshotter that starts containers before their
# image is downloaded.
#
#   make            build bin/lazypulld and bin/lazypull
#   make demo       set up everything, lazy-pull a sample image, compare with a normal pull
#   make test       install what the tests need, then run every test (as root)
#   make bench      the benchmarks

GO      ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)
BIN     := bin

.PHONY: all build deps demo test unit integration vet fmt-check clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/ ./cmd/lazypulld ./cmd/lazypull

# System packages, and containerd 2.x built from the Go module proxy.
deps:
	hack/install-deps.sh
	hack/build-containerd2.sh

demo: deps build
	hack/demo.sh

test: deps vet fmt-check unit integration

vet:
	$(GO) vet ./...

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

# Unit tests: packages other than integration/. They mount FUSE and overlay
# filesystems for real, so they too need root.
unit:
	$(GO) test -race -count=1 -timeout 20m $$($(GO) list ./... | grep -v /integration)

# Against real containerd 1.6 and 2.x, the distribution registry and runc.
integration:
	$(GO) test -race -count=1 -timeout 30m ./integration/...

clean:
	rm -rf $(BIN)
