package rules

import (
	"fmt"
	"slices"
	"strings"
)

// Fragment renders ftpalg's chains, queue rules and jumps for one family as
// iptables-restore input, for administrators who run the daemon with
// --install-rules=false and keep the whole ruleset in their own script.
//
// The fragment is meant for `iptables-restore --noflush` (or
// ip6tables-restore) after the administrator's ruleset is loaded: the chain
// declarations create or empty ftpalg's chains and the jumps are inserted at
// the head of the built-in chains, ahead of a FORWARD policy DROP. Applying it
// twice inserts the jumps twice; a script that loads the full ruleset with a
// flush does not have that problem. The pinhole chains start empty; the
// daemon fills them at run time, except that FTPALG-ACCEPT holds its static
// rules matching cfg.AcceptMark (nftables pinholes, see NFTable) and
// cfg.DataMark, when set, and keeps them.
func Fragment(cfg Config, family Family) (string, error) {
	if err := cfg.Validate(); err != nil {
		return "", fmt.Errorf("rendering %s fragment: %w", family, err)
	}
	if family != IPv4 && family != IPv6 {
		return "", fmt.Errorf("rendering %s fragment: %w: unknown family", family, ErrInvalidConfig)
	}

	var b strings.Builder
	fmt.Fprintf(&b, "# ftpalg %s chains: load with `%s-restore --noflush`.\n", family, family.command())
	if cfg.Queues > 1 {
		fmt.Fprintf(&b, "# Control ports queued to NFQUEUE %d-%d; pinhole rules are added at run time.\n", cfg.QueueNum, int(cfg.QueueNum)+int(cfg.Queues)-1)
	} else {
		fmt.Fprintf(&b, "# Control ports queued to NFQUEUE %d; pinhole rules are added at run time.\n", cfg.QueueNum)
	}
	js := jumpsFor(cfg.Role)
	for _, h := range restoreOrder() {
		fmt.Fprintf(&b, "*%s\n", h.table)
		fmt.Fprintf(&b, ":%s - [0:0]\n", h.chain)
		if h.chain == ChainQueue {
			for _, spec := range queueSpecs(cfg, family) {
				fmt.Fprintf(&b, "-A %s %s\n", h.chain, formatRule(spec))
			}
		}
		if h.chain == ChainAccept {
			for _, spec := range staticAcceptSpecs(cfg) {
				fmt.Fprintf(&b, "-A %s %s\n", h.chain, formatRule(spec))
			}
		}
		for _, j := range js {
			if j.chain == h.chain {
				fmt.Fprintf(&b, "-I %s 1 %s\n", j.parent, formatRule(j.spec))
			}
		}
		b.WriteString("COMMIT\n")
	}
	return b.String(), nil
}

// restoreOrder lists the hooks in the table order iptables-save prints
// (mangle, nat, filter), which is the reverse of the install order.
func restoreOrder() []hook {
	hs := hooks()
	slices.Reverse(hs[:])
	return hs[:]
}
