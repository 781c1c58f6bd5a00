package rig

import (
	"bufio"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
)

// chainCounters is what parseChainListing extracts from
// `iptables -L CHAIN -v -n -x`.
type chainCounters struct {
	// policyPackets counts packets that fell through to the chain policy.
	policyPackets uint64
	// rulePackets is the packet counter of the first rule carrying the
	// comment looked for.
	rulePackets uint64
}

// parseChainListing reads the output of `iptables -L CHAIN -v -n -x` (the
// same for the nft and legacy backends and for ip6tables): a header
// "Chain FORWARD (policy DROP 3 packets, 180 bytes)", a column header and
// one line per rule whose first field is its exact packet count. The rule
// is found by its comment, which iptables prints as "/* text */", so its
// position in the chain does not matter.
func parseChainListing(out, comment string) (chainCounters, error) {
	var c chainCounters
	tag := "/* " + comment + " */"
	sawHeader, sawRule := false, false
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "pkts "):
			continue
		case strings.HasPrefix(line, "Chain "):
			if sawHeader {
				return c, fmt.Errorf("listing has more than one chain: %w", ErrCounter)
			}
			sawHeader = true
			_, rest, ok := strings.Cut(line, "(policy ")
			if !ok {
				return c, fmt.Errorf("chain header %q has no policy: %w", line, ErrCounter)
			}
			f := strings.Fields(rest) // DROP 3 packets, 180 bytes)
			if len(f) < 3 || f[2] != "packets," {
				return c, fmt.Errorf("chain header %q: %w", line, ErrCounter)
			}
			n, err := strconv.ParseUint(f[1], 10, 64)
			if err != nil {
				return c, fmt.Errorf("chain header %q: %w: %w", line, ErrCounter, err)
			}
			c.policyPackets = n
		case !sawRule && strings.Contains(line, tag):
			f := strings.Fields(line)
			n, err := strconv.ParseUint(f[0], 10, 64)
			if err != nil {
				return c, fmt.Errorf("rule line %q: %w: %w", line, ErrCounter, err)
			}
			c.rulePackets, sawRule = n, true
		}
	}
	if err := sc.Err(); err != nil {
		return c, fmt.Errorf("reading chain listing: %w", err)
	}
	if !sawHeader {
		return c, fmt.Errorf("no chain header in listing: %w", ErrCounter)
	}
	if !sawRule {
		return c, fmt.Errorf("no rule tagged %q: %w", comment, ErrCounter)
	}
	return c, nil
}

// parseNFTCounters reads `nft -j list table inet filter` output and
// returns the packet counters of the rules whose comment is comment,
// summed, and how many such rules there are. nft prints each rule as
// {"rule": {"comment": "...", "expr": [..., {"counter": {"packets": N,
// "bytes": M}}, ...]}}.
func parseNFTCounters(out []byte, comment string) (packets uint64, rules int, err error) {
	var doc struct {
		Nftables []struct {
			Rule *struct {
				Comment string `json:"comment"`
				Expr    []struct {
					Counter *struct {
						Packets uint64 `json:"packets"`
					} `json:"counter"`
				} `json:"expr"`
			} `json:"rule"`
		} `json:"nftables"`
	}
	if err := json.Unmarshal(out, &doc); err != nil {
		return 0, 0, fmt.Errorf("parsing nft -j output: %w: %w", ErrCounter, err)
	}
	for _, obj := range doc.Nftables {
		if obj.Rule == nil || obj.Rule.Comment != comment {
			continue
		}
		found := false
		for _, e := range obj.Rule.Expr {
			if e.Counter != nil {
				packets += e.Counter.Packets
				found = true
			}
		}
		if !found {
			return 0, 0, fmt.Errorf("nft rule tagged %q has no counter: %w", comment, ErrCounter)
		}
		rules++
	}
	return packets, rules, nil
}
