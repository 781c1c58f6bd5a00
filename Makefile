# ftpalg — see README.md. Every target works on a fresh Debian machine as root.

GO          ?= go
PREFIX      ?= /usr/local
DESTDIR     ?=
SBINDIR     ?= $(PREFIX)/sbin
UNITDIR     ?= /etc/systemd/system
SYSCONFDIR  ?= /etc
MANDIR      ?= $(PREFIX)/share/man
DOCDIR      ?= $(PREFIX)/share/doc/ftpalg
INSTALL     ?= install
BIN         ?= bin/ftpalg
MAN         := bin/ftpalg.8
# CROSS prefixes the build with a Go target ("GOARCH=arm GOARM=7"); make
# deb sets it, with BUILDFLAGS and LDFLAGS for a stripped static binary.
CROSS       ?=
BUILDFLAGS  ?=
TOOLS       := $(CURDIR)/bin/tools
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
FUZZTIME    ?= 30s
VERSION     ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS     ?= -X main.version=$(VERSION)
# The manual page's date: the last commit's, so a rebuild is identical.
MANDATE     ?= $(shell git log -1 --format=%cs 2>/dev/null)
# The page is printed by the binary being installed, or when that one is
# cross-compiled, by the same code built for this machine.
MANGEN       = $(if $(strip $(CROSS)),$(GO) run -ldflags "$(LDFLAGS)" ./cmd/ftpalg,./$(BIN))

# The example files: everything in deploy/ but Go code, test data, the
# Debian packaging and the three top-level files installed in their own places (deploy/ha/ftpalg.default is an example). A
# new script or directory there (deploy/ha/...) ships without a change
# here; test/e2e TestDebPackage checks the package holds each one.
EXAMPLES    := $(shell cd deploy && find . -type f ! -name '*.go' ! -path '*/testdata/*' ! -path './debian/*' \
		! -path ./ftpalg.service ! -path ./ftpalg.default ! -path ./ftpalg.toml | sed 's|^\./||' | LC_ALL=C sort)

# make deb: the Debian architecture, and the Go target that builds for it.
DEB_HOST_ARCH := $(shell dpkg --print-architecture 2>/dev/null)
DEB_ARCH    ?= $(DEB_HOST_ARCH)
DEB_VERSION := $(shell deploy/debian/version)
DEB_GO_amd64   := GOARCH=amd64
DEB_GO_i386    := GOARCH=386
DEB_GO_arm64   := GOARCH=arm64
DEB_GO_armhf   := GOARCH=arm GOARM=7
DEB_GO_armel   := GOARCH=arm GOARM=5
DEB_GO_mipsel  := GOARCH=mipsle GOMIPS=softfloat
DEB_GO_mips64el := GOARCH=mips64le
DEB_GO_ppc64el := GOARCH=ppc64le
DEB_GO_riscv64 := GOARCH=riscv64
DEB_GO_s390x   := GOARCH=s390x
DEBROOT     := dist/root-$(DEB_ARCH)
DEB         := dist/ftpalg_$(DEB_VERSION)_$(DEB_ARCH).deb
MAINTAINER  ?= ftpalg maintainers <ftpalg@example.org>

# make release: name:Go target. OpenWrt's MIPS routers have no FPU.
RELEASE_TARGETS := amd64:GOARCH=amd64 arm64:GOARCH=arm64 armv7:GOARCH=arm,GOARM=7 \
	mipsle:GOARCH=mipsle,GOMIPS=softfloat mips:GOARCH=mips,GOMIPS=softfloat
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
	./conntrack:FuzzProcessRaw ./conntrack:FuzzSegments ./conntrack:FuzzLabels ./conntrack/seqnum:FuzzShiftRoundTrip ./config:FuzzParse \
	./nfq:FuzzParse ./rules:FuzzParseNFTAcks ./rules:FuzzAppendNFTBatch ./rules:FuzzPureACK ./pinsync:FuzzDecode

.PHONY: all build man test unit fuzz bench bench-pinholes lint deps demo matrix baseline loss restart ha install deb release cross-test clean

all: build

build:
	$(CROSS) $(GO) build $(BUILDFLAGS) -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/ftpalg

# ftpalg(8), printed by `ftpalg manpage` from the flag definitions.
man: build
	$(MANGEN) manpage --date "$(MANDATE)" > $(MAN).tmp && mv $(MAN).tmp $(MAN)

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
	$(GO) test -run '^$$' -bench 'GatewayOneLock|Shards' -benchmem -count 5 -cpu 1,2,4 ./daemon | tee -a bench-engine.txt
	FTPALG_BIN=$(CURDIR)/$(BIN) $(GO) run ./test/bench -placement free
	FTPALG_BIN=$(CURDIR)/$(BIN) $(GO) run ./test/bench -placement shared

# Pinhole install/remove latency, iptables vs nftables backend, same run.
bench-pinholes:
	FTPALG_MEASURE=1 $(GO) test -count=1 -run '^TestMeasure' -v ./rules | grep -vE 'level=|msg=' | grep -E 'p50|p99|^--- |[0-9](µs|ms)'

# Real FTP transfers through ftpalg in a network-namespace rig, explained.
demo: deps build
	FTPALG_BIN=$(CURDIR)/$(BIN) $(GO) run ./test/demo

# Every server x client x mode x topology, the local ones included (about
# an hour on 2 cores); one line per case.
matrix: deps build
	FTPALG_BIN=$(CURDIR)/$(BIN) FTPALG_MATRIX=full $(GO) test -count=1 -timeout 120m -run TestMatrix -v ./test/matrix

# Every case of the local topologies (FTP server or client on the firewall
# host) without an ALG and with the kernel helper, under the iptables
# script and the nftables-native ruleset.
baseline: deps build
	FTPALG_BIN=$(CURDIR)/$(BIN) FTPALG_BASELINE=full $(GO) test -count=1 -timeout 20m -run 'TestBaseline' -v ./test/e2e

# Lossy links: SYN, SYN/ACK and reply loss, ftpalg (both backends) and the kernel helper.
loss: deps build
	FTPALG_BIN=$(CURDIR)/$(BIN) FTPALG_LOSS=full $(GO) test -count=1 -timeout 20m -run TestLossyLinks -v ./test/e2e

# Restarts under busy sessions: 20 PORT sessions behind NAT and 20 PASV
# sessions to a forwarded server, each 150 files back to back, SIGTERM and
# SIGKILL (make test runs 6 sessions of 40 files).
restart: deps build
	FTPALG_BIN=$(CURDIR)/$(BIN) FTPALG_RESTART=full $(GO) test -count=1 -timeout 20m -run '^TestRestartBusy$$' -v ./test/e2e

# Two routers (keepalived + conntrackd, the deploy/ha kit): 20 PORT and 20
# PASV sessions (and 10 PORT sessions whose pinholes are pending at the
# event) across a hard failure, a switchover and a failback of the
# master, through the kernel helper and through ftpalg; figures logged.
ha: deps build
	FTPALG_BIN=$(CURDIR)/$(BIN) FTPALG_HA=full $(GO) test -count=1 -timeout 30m -run TestFailover -v ./test/ha | grep -E '^(=== RUN|--- |\s+ha_linux_test.go:[0-9]+: (kernel-helper|ftpalg),|\s+ha_linux_test.go:[0-9]+:   |ok|FAIL|PASS)'

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	GOBIN=$(TOOLS) $(GO) install $(STATICCHECK)
	$(TOOLS)/staticcheck ./...

# Binary, systemd unit, /etc/default/ftpalg, /etc/ftpalg/ftpalg.toml, the
# man page and the example files. An admin's existing settings are never
# overwritten: a changed example goes next to them as .dist.
# DESTDIR=/tmp/pkg PREFIX=/usr stages a package.
install: build man
	$(INSTALL) -D -m 0755 $(BIN) $(DESTDIR)$(SBINDIR)/ftpalg
	$(INSTALL) -d $(DESTDIR)$(UNITDIR)
	sed 's|/usr/local/sbin/ftpalg|$(SBINDIR)/ftpalg|' deploy/ftpalg.service > $(DESTDIR)$(UNITDIR)/ftpalg.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/ftpalg.service
	@set -e; for f in "deploy/ftpalg.default:$(SYSCONFDIR)/default/ftpalg" "deploy/ftpalg.toml:$(SYSCONFDIR)/ftpalg/ftpalg.toml"; do \
		src=$${f%%:*}; dst=$(DESTDIR)$${f#*:}; \
		if [ -e "$$dst" ]; then $(INSTALL) -D -m 0644 $$src $$dst.dist; echo "kept $$dst (new version: $$dst.dist)"; \
		else $(INSTALL) -D -m 0644 $$src $$dst; fi; done
	$(INSTALL) -D -m 0644 $(MAN) $(DESTDIR)$(MANDIR)/man8/ftpalg.8
	@set -e; for f in $(EXAMPLES); do $(INSTALL) -D -m 0644 deploy/$$f $(DESTDIR)$(DOCDIR)/examples/$$f; done
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi

# dist/ftpalg_<version>_<arch>.deb with dpkg-deb: make install staged under
# /usr with the unit in /lib/systemd/system, a static stripped binary, the
# maintainer scripts of deploy/debian. DEB_ARCH=arm64 (armhf, mipsel, ...)
# cross-builds.
deb:
	@test -n "$(DEB_ARCH)" && test -n "$(DEB_GO_$(DEB_ARCH))" || { echo "deb: no Go target for Debian architecture '$(DEB_ARCH)'" >&2; exit 1; }
	rm -rf $(DEBROOT) && mkdir -p dist
	$(MAKE) --no-print-directory install DESTDIR=$(CURDIR)/$(DEBROOT) PREFIX=/usr UNITDIR=/lib/systemd/system \
		BIN=bin/linux-$(DEB_ARCH)/ftpalg CROSS="CGO_ENABLED=0 $(DEB_GO_$(DEB_ARCH))" BUILDFLAGS=-trimpath \
		LDFLAGS="-s -w -X main.version=$(VERSION)" VERSION="$(VERSION)" \
		$(if $(filter $(DEB_HOST_ARCH),$(DEB_ARCH)),MANGEN=./bin/linux-$(DEB_ARCH)/ftpalg)
	gzip -9n $(DEBROOT)/usr/share/man/man8/ftpalg.8
	{ cat deploy/debian/copyright; $(GO) version -m bin/linux-$(DEB_ARCH)/ftpalg | awk '$$1 == "dep" { print "  " $$2 " " $$3 }'; } \
		> $(DEBROOT)/usr/share/doc/ftpalg/copyright
	printf 'ftpalg (%s) unstable; urgency=medium\n\n  * Built from git %s.\n\n -- %s  %s\n' \
		"$(DEB_VERSION)" "$(VERSION)" "$(MAINTAINER)" "$$(git log -1 --format=%aD 2>/dev/null || date -R)" \
		| gzip -9n > $(DEBROOT)/usr/share/doc/ftpalg/changelog.gz
	$(INSTALL) -D -m 0644 deploy/debian/lintian-overrides $(DEBROOT)/usr/share/lintian/overrides/ftpalg
	$(INSTALL) -d -m 0755 $(DEBROOT)/DEBIAN
	$(INSTALL) -m 0755 deploy/debian/postinst deploy/debian/prerm deploy/debian/postrm $(DEBROOT)/DEBIAN/
	$(INSTALL) -m 0644 deploy/debian/conffiles $(DEBROOT)/DEBIAN/
	cd $(DEBROOT) && find . -type f ! -path './DEBIAN/*' | LC_ALL=C sort | sed 's|^\./||' | xargs md5sum > DEBIAN/md5sums
	sed -e 's|@VERSION@|$(DEB_VERSION)|' -e 's|@ARCH@|$(DEB_ARCH)|' -e 's|@MAINTAINER@|$(MAINTAINER)|' \
		-e "s|@SIZE@|$$(du -sk --exclude=DEBIAN $(DEBROOT) | cut -f1)|" deploy/debian/control > $(DEBROOT)/DEBIAN/control
	SOURCE_DATE_EPOCH=$$(git log -1 --format=%ct 2>/dev/null || date +%s) dpkg-deb --root-owner-group -Zxz --build $(DEBROOT) $(DEB)
	@echo "deb: $(DEB)"

# Static binaries for routers, dist/ftpalg-<version>-linux-<arch>, and
# their SHA256SUMS.
release:
	@mkdir -p dist
	@set -e; for t in $(RELEASE_TARGETS); do name=$${t%%:*}; target=$$(echo "$${t#*:}" | tr , ' '); \
		echo "release: linux-$$name ($$target)"; \
		env CGO_ENABLED=0 $$target $(GO) build -trimpath -ldflags "-s -w -X main.version=$(VERSION)" \
			-o dist/ftpalg-$(VERSION)-linux-$$name ./cmd/ftpalg; done
	cd dist && sha256sum ftpalg-$(VERSION)-linux-* > SHA256SUMS && cat SHA256SUMS

# The pure packages' tests, cross-compiled for arm64, armv7 and big-endian
# mips and run under qemu-user-static.
cross-test: deps
	GO=$(GO) ./test/cross.sh

clean:
	rm -rf bin dist bench-engine.txt
