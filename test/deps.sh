#!/usr/bin/env bash
# Installs what ftpalg's tests, benchmarks and demo need on Debian, and
# nothing that is already there. Idempotent; needs root for apt-get.
set -euo pipefail

# command -> Debian package
declare -A want=(
	[iptables]=iptables [ip6tables]=iptables [ip]=iproute2 [conntrack]=conntrack
	[vsftpd]=vsftpd [curl]=curl [lftp]=lftp [tnftp]=tnftp [python3]=python3
	[sysctl]=procps [ss]=iproute2 [tcpdump]=tcpdump [nft]=nftables
	[dpkg-deb]=dpkg [lintian]=lintian [man]=man-db [groff]=groff-base [gzip]=gzip
	[qemu-aarch64-static]=qemu-user-static [qemu-arm-static]=qemu-user-static
	[qemu-mips-static]=qemu-user-static [dbus-daemon]=dbus-daemon
	[conntrackd]=conntrackd [keepalived]=keepalived
)
missing=()
for cmd in "${!want[@]}"; do
	command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || missing+=("${want[$cmd]}")
done
# firewalld, which the rig unpacks rather than installs (test/rig/firewalld_linux.go),
# runs on Debian's python3 with these modules.
if ! /usr/bin/python3 -c 'import dbus, gi; gi.require_version("GLib", "2.0"); from gi.repository import GLib' 2>/dev/null; then
	missing+=(python3 python3-dbus python3-gi gir1.2-glib-2.0)
fi
if [ ${#missing[@]} -gt 0 ]; then
	mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
	echo "deps: installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	# conntrackd and keepalived start system-wide instances when installed;
	# in the host's namespace they would sync or move addresses there. A
	# policy-rc.d that refuses every start keeps them (and vsftpd) down
	# during the install, unless the machine already has one.
	own_policy=
	if [ ! -e /usr/sbin/policy-rc.d ]; then
		printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
		chmod 0755 /usr/sbin/policy-rc.d
		own_policy=1
	fi
	trap '[ -z "$own_policy" ] || rm -f /usr/sbin/policy-rc.d' EXIT
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The tests run their own conntrackd and keepalived in network namespaces,
# with their own config, pid, lock and socket paths; the packages' units
# must never run in the initial namespace.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
	for unit in conntrackd keepalived; do
		if systemctl is-enabled --quiet "$unit" 2>/dev/null || systemctl is-active --quiet "$unit" 2>/dev/null; then
			systemctl disable --now "$unit" >/dev/null 2>&1 || true
		fi
	done
fi
# vsftpd's package starts a system-wide instance on port 21; the tests run
# their own in network namespaces and do not need it.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet vsftpd 2>/dev/null; then
	systemctl stop vsftpd || true
fi
if ! command -v go >/dev/null 2>&1; then
	echo "deps: Go is not on PATH; install Go 1.25 or later (https://go.dev/dl/) and retry" >&2
	exit 1
fi
