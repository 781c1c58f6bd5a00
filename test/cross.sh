#!/usr/bin/env bash
# make cross-test: the pure packages' tests, cross-compiled with `go test -c`
# for arm64, armv7 and big-endian mips (softfloat, as on OpenWrt routers)
# and run under Debian's qemu-user-static. The qemu binary is invoked
# explicitly, so binfmt_misc need not be registered. The test binaries run
# as nobody: tests that need root (netlink, namespaces) skip, and what runs
# is the code that parses and builds packets and netlink messages, where a
# byte-order or alignment bug would show.
set -euo pipefail
GO=${GO:-go}
cd "$(dirname "$0")/.."

# name  qemu  Go target
targets=(
	"arm64 aarch64 GOARCH=arm64"
	"armv7 arm GOARCH=arm GOARM=7"
	"mips mips GOARCH=mips GOMIPS=softfloat"
)
pkgs=(alg conntrack conntrack/seqnum nfq internal/nlmsg ctnetlink rules config status internal/manpage pinsync)
if [ $# -gt 0 ]; then pkgs=("$@"); fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
chmod 0755 "$work"
fail=0
for t in "${targets[@]}"; do
	read -r name qemu target <<<"$t"
	for p in "${pkgs[@]}"; do
		bin=$work/$name-${p//\//-}.test
		# shellcheck disable=SC2086 # target is a list of assignments
		env CGO_ENABLED=0 $target "$GO" test -c -o "$bin" "./$p"
		start=$(date +%s)
		set +e
		out=$(cd "$p" && setpriv --reuid=65534 --regid=65534 --clear-groups \
			"qemu-$qemu-static" "$bin" -test.v -test.short -test.timeout 10m 2>&1)
		rc=$?
		set -e
		pass=$(grep -c '^--- PASS' <<<"$out" || true)
		skip=$(grep -c '^--- SKIP' <<<"$out" || true)
		failed=$(grep -c '^--- FAIL' <<<"$out" || true)
		printf 'cross-test: %-5s %-18s %3d passed %3d skipped %3d failed  %ss\n' \
			"$name" "$p" "$pass" "$skip" "$failed" "$(($(date +%s) - start))"
		if [ $rc -ne 0 ]; then
			fail=1
			grep -E -B2 -A20 '^(--- FAIL|panic|FAIL)' <<<"$out" | head -60
		fi
	done
done
exit $fail
