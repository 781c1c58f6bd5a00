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

# Native fuzz targets: package:Target.
FUZZ_TARGETS := \
	./alg:FuzzClientLine ./alg:FuzzServerLine ./alg:FuzzDialog ./alg:FuzzParseIP \
	./conntrack:FuzzProcessRaw ./conntrack:FuzzSegments ./conntrack/seqnum:FuzzShiftRoundTrip ./config:FuzzParse \
	./nfq:FuzzParse ./rules:FuzzParseNFTAcks ./rules:FuzzAppendNFTBatch

.PHONY: all build test unit fuzz bench bench-pinholes lint deps demo matrix loss install clean

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
	$(GO) test -count=1 -run '^$$' -bench . -benchtime 1x ./alg/... ./conntrack/... ./nfq/...

unit:
	$(GO) test -count=1 -short ./alg/... ./conntrack/... ./daemon/... ./cmd/...

fuzz:
	GO=$(GO) ./test/fuzz.sh $(FUZZTIME) $(FUZZ_TARGETS)

# In-process engine benchmarks, then the same workloads through plain NAT,
# the kernel's FTP helper and ftpalg in the rig, side by side.
bench: deps build
	$(GO) test -run '^$$' -bench . -benchmem -count 5 ./conntrack ./alg | tee bench-engine.txt
	FTPALG_BIN=$(CURDIR)/$(BIN) $(GO) run ./test/bench

# Pinhole install/remove latency, iptables vs nftables backend, same run.
bench-pinholes:
	FTPALG_MEASURE=1 $(GO) test -count=1 -run 'TestNFTableLatency|TestPinholeLatency' -v ./rules | grep -vE 'level=|msg=' | grep -E 'p50|p99|^--- |[0-9](µs|ms)'

# Real FTP transfers through ftpalg in a network-namespace rig, explained.
demo: deps build
	FTPALG_BIN=$(CURDIR)/$(BIN) $(GO) run ./test/demo

# Every server x client x mode x topology; one line per case.
matrix: deps build
	FTPALG_BIN=$(CURDIR)/$(BIN) FTPALG_MATRIX=full $(GO) test -count=1 -timeout 60m -run TestMatrix -v ./test/matrix

# Lossy links: SYN, SYN/ACK and reply loss, ftpalg (both backends) and the kernel helper.
loss: deps build
	FTPALG_BIN=$(CURDIR)/$(BIN) FTPALG_LOSS=full $(GO) test -count=1 -timeout 20m -run TestLossyLinks -v ./test/e2e

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
