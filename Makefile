# ftpalg — see README.md. Every target works on a fresh Debian machine as root.

GO          ?= go
BIN         := bin/ftpalg
TOOLS       := $(CURDIR)/bin/tools
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
FUZZTIME    ?= 30s
VERSION     ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)

# Native fuzz targets: package:Target.
FUZZ_TARGETS := \
	./alg:FuzzClientLine ./alg:FuzzServerLine ./alg:FuzzDialog ./alg:FuzzParseIP \
	./conntrack:FuzzProcessRaw ./conntrack:FuzzSegments ./conntrack/seqnum:FuzzShiftRoundTrip

.PHONY: all build test unit fuzz bench bench-pinholes lint deps demo matrix clean

all: build

build:
	$(GO) build -ldflags "-X main.version=$(VERSION)" -o $(BIN) ./cmd/ftpalg

deps:
	./test/deps.sh

# The README's test command: unit tests, integration tests (real NFQUEUE,
# iptables and ctnetlink in fresh network namespaces) and end-to-end tests
# (real vsftpd and curl through ftpalg). As root, nothing is skipped.
test: deps build
	FTPALG_BIN=$(CURDIR)/$(BIN) $(GO) test -count=1 -timeout 20m ./...

unit:
	$(GO) test -count=1 -short ./alg/... ./conntrack/... ./daemon/... ./cmd/...

fuzz:
	@set -e; for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; name=$${t##*:}; \
		echo "fuzz $$pkg $$name for $(FUZZTIME)"; \
		$(GO) test -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZTIME) $$pkg; \
	done

# In-process engine benchmarks, then the same workloads through plain NAT,
# the kernel's FTP helper and ftpalg in the rig, side by side.
bench: deps build
	$(GO) test -run '^$$' -bench . -benchmem -count 5 ./conntrack ./alg | tee bench-engine.txt
	FTPALG_BIN=$(CURDIR)/$(BIN) $(GO) run ./test/bench

# Pinhole install/remove latency, iptables vs nftables backend, same run.
bench-pinholes:
	FTPALG_MEASURE=1 $(GO) test -count=1 -run 'TestNFTableLatency|TestPinholeLatency' -v ./rules | grep -E 'p50|p99|^---|ms'

# Real FTP transfers through ftpalg in a network-namespace rig, explained.
demo: deps build
	FTPALG_BIN=$(CURDIR)/$(BIN) $(GO) run ./test/demo

# Every server x client x mode x topology; one line per case.
matrix: deps build
	FTPALG_BIN=$(CURDIR)/$(BIN) FTPALG_MATRIX=full $(GO) test -count=1 -timeout 60m -run TestMatrix -v ./test/matrix

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	GOBIN=$(TOOLS) $(GO) install $(STATICCHECK)
	$(TOOLS)/staticcheck ./...

clean:
	rm -rf bin bench-engine.txt
