package rules

import (
	"fmt"
	"slices"
)

// Role says which control connections ftpalg handles on this machine:
// forwarded ones (a router), ones that end on the machine itself (an FTP
// server or client on a host with its own firewall), or both (a router or
// NAS that also serves FTP, the default).
//
// Where each path is queued, and why there:
//
//	forward       mangle FORWARD            after conntrack and DNAT, before SNAT
//	local in      mangle INPUT  (! -i lo)   after conntrack and DNAT (nat PREROUTING), before nat INPUT
//	local out     mangle OUTPUT (! -o lo)   after conntrack, before SNAT/MASQUERADE (nat POSTROUTING)
//
// so that, as in FORWARD, both directions of a connection show the
// post-DNAT, pre-SNAT addresses. Loopback is left out: a connection between
// two local sockets would be queued twice per packet (once leaving, once
// arriving), and no firewall stands between them.
//
// Pinholes for local endpoints live in the same chains as forwarded ones:
// FTPALG-ACCEPT is also jumped to from filter INPUT, and a pinhole's rule
// names its target address, which is either local (the packet is in INPUT)
// or not (FORWARD), never both. A local client behind the machine's own
// MASQUERADE gets its active-mode DNAT in nat PREROUTING to the local
// address, as a forwarded client gets one to its inside address.
type Role uint8

const (
	RoleBoth   Role = iota // forwarded and local control connections
	RoleRouter             // forwarded only (mangle FORWARD, filter FORWARD)
	RoleHost               // local only (mangle INPUT and OUTPUT, filter INPUT)
)

// ParseRole reads a Role as --role spells it: both, router or host.
func ParseRole(s string) (Role, error) {
	for _, r := range []Role{RoleBoth, RoleRouter, RoleHost} {
		if r.String() == s {
			return r, nil
		}
	}
	return 0, fmt.Errorf("%w: role %q: want both, router or host", ErrInvalidConfig, s)
}

func (r Role) String() string {
	switch r {
	case RoleBoth:
		return "both"
	case RoleRouter:
		return "router"
	case RoleHost:
		return "host"
	}
	return fmt.Sprintf("Role(%d)", uint8(r))
}

// Forward reports whether forwarded connections are handled.
func (r Role) Forward() bool { return r != RoleHost }

// Local reports whether connections ending on this machine are handled.
func (r Role) Local() bool { return r != RoleRouter }

// jump is one rule in a built-in chain that enters one of ftpalg's chains.
type jump struct {
	table  string
	parent string   // built-in chain holding the jump
	chain  string   // ftpalg's chain
	spec   []string // the whole rule, in the form `iptables -S` prints
}

// jumpsFor returns the jumps a Role needs, in install order: pinhole
// chains before queue chains, so control packets are only diverted once
// their pinholes can be reached.
func jumpsFor(r Role) []jump {
	var js []jump
	add := func(table, parent, chain string, match ...string) {
		js = append(js, jump{table: table, parent: parent, chain: chain, spec: append(match, "-j", chain)})
	}
	if r.Forward() {
		add("filter", "FORWARD", ChainAccept)
	}
	if r.Local() {
		add("filter", "INPUT", ChainAccept)
	}
	add("nat", "PREROUTING", ChainDNAT)
	if r.Forward() {
		add("mangle", "FORWARD", ChainQueue)
	}
	if r.Local() {
		add("mangle", "INPUT", ChainQueue, "!", "-i", "lo")
		add("mangle", "OUTPUT", ChainQueue, "!", "-o", "lo")
	}
	return js
}

// ownJump reports whether spec (a rule without its -A CHAIN) is one of the
// jumps some Role installs, as opposed to an administrator's rule that
// happens to reference an ftpalg chain.
func ownJump(parent string, spec []string) bool {
	for _, r := range []Role{RoleBoth} { // RoleBoth holds every jump
		for _, j := range jumpsFor(r) {
			if j.parent == parent && slices.Equal(j.spec, spec) {
				return true
			}
		}
	}
	return false
}
