# ftpalg — see README.md. Every target works on a fresh Debian machine as root.

GO          ?= go
PREFIX      ?= /usr/local
DESTDIR     ?=
SBINDIR     ?= $(PREFIX)/sbin
UNITDIR     ?= /etc/systemd/system
SYSCONFDIR  ?= /etc
INSTALL     ?= install
BIN         := bin/ftpalg
TOOLS       := $(CURDIR)/bin/tools
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
FUZZTIME    ?= 30s
VERSION     ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
TESTSUM     := $(TOOLS)/testsum
# Where testsum and test/fuzz.sh add the counts of the tests that ran
# (.ci/run sets it and prints the sum); empty: counted but not kept.
TALLY       ?=

# Pipelines fail when any command in them fails (go test | testsum).
SHELL       := /bin/bash
.SHELLFLAGS := -o pipefail -ec

# Native fuzz targets: package:Target.
FUZZ_TARGETS := \
	./alg:FuzzClientLine ./alg:FuzzServerLine ./alg:FuzzDialog ./alg:FuzzParseIP \
	./conntrack:FuzzProcessRaw ./conntrack:FuzzSegments ./conntrack/seqnum:FuzzShiftRoundTrip ./config:FuzzParse \
	./nfq:FuzzParse ./rules:FuzzParseNFTAcks ./rules:FuzzAppendNFTBatch

.PHONY: all build test unit fuzz bench bench-pinholes lint deps demo matrix install clean

all: build

build:
	$(GO) build -ldflags "-X main.version=$(VERSION)" -o $(BIN) ./cmd/ftpalg

deps:
	./test/deps.sh

# The README's test command: unit tests, integration tests (real NFQUEUE,
# iptables and ctnetlink in fresh network namespaces) and end-to-end tests
# (real vsftpd and curl through ftpalg). As root, nothing is skipped.
#
# Output goes through testsum: a line per package, the output of failed
# tests, the reason of skipped ones, and the count of tests that ran.
# Measurements (TestMeasure*, make bench-pinholes) are not checks and do
# not run here.
test: deps build $(TESTSUM)
	FTPALG_BIN=$(CURDIR)/$(BIN) $(GO) test -json -count=1 -timeout 20m -skip '^TestMeasure' ./... 2>&1 | $(TESTSUM) $(if $(TALLY),-tally $(TALLY))
	$(GO) test -json -count=1 -run '^$$' -bench . -benchtime 1x ./alg/... ./conntrack/... ./nfq/... 2>&1 | $(TESTSUM) $(if $(TALLY),-tally $(TALLY))

$(TESTSUM): test/testsum/main.go
	$(GO) build -o $@ ./test/testsum

unit:
	$(GO) test -count=1 -short ./alg/... ./conntrack/... ./daemon/... ./cmd/...

fuzz:
	GO=$(GO) TALLY=$(TALLY) ./test/fuzz.sh $(FUZZTIME) $(FUZZ_TARGETS)

# In-process engine benchmarks, then the same workloads through plain NAT,
# the kernel's FTP helper and ftpalg in the rig, side by side.
bench: deps build
	$(GO) test -run '^$$' -bench . -benchmem -count 5 ./conntrack ./alg | tee bench-engine.txt
	FTPALG_BIN=$(CURDIR)/$(BIN) $(GO) run ./test/bench

# Pinhole install/remove latency, iptables vs nftables backend, same run.
bench-pinholes:
	FTPALG_MEASURE=1 $(GO) test -count=1 -run '^TestMeasure' -v ./rules | grep -vE 'level=|msg=' | grep -E 'p50|p99|^--- |[0-9](µs|ms)'

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

# Binary, systemd unit, /etc/default/ftpalg, /etc/ftpalg/ftpalg.toml and the
# example firewall scripts. An admin's existing settings are never
# overwritten: a changed example goes next to them as .dist.
# DESTDIR=/tmp/pkg PREFIX=/usr stages a package.
install: build
	$(INSTALL) -D -m 0755 $(BIN) $(DESTDIR)$(SBINDIR)/ftpalg
	$(INSTALL) -d $(DESTDIR)$(UNITDIR)
	sed 's|/usr/local/sbin/ftpalg|$(SBINDIR)/ftpalg|' deploy/ftpalg.service > $(DESTDIR)$(UNITDIR)/ftpalg.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/ftpalg.service
	@set -e; for f in "deploy/ftpalg.default:$(SYSCONFDIR)/default/ftpalg" "deploy/ftpalg.toml:$(SYSCONFDIR)/ftpalg/ftpalg.toml"; do \
		src=$${f%%:*}; dst=$(DESTDIR)$${f#*:}; \
		if [ -e "$$dst" ]; then $(INSTALL) -D -m 0644 $$src $$dst.dist; echo "kept $$dst (new version: $$dst.dist)"; \
		else $(INSTALL) -D -m 0644 $$src $$dst; fi; done
	$(INSTALL) -d $(DESTDIR)$(PREFIX)/share/doc/ftpalg/examples
	$(INSTALL) -m 0644 deploy/firewall.rules deploy/firewall6.rules deploy/README.md $(DESTDIR)$(PREFIX)/share/doc/ftpalg/examples/
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi

clean:
	rm -rf bin bench-engine.txt
