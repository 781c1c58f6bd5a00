package rules

import (
	"testing"
	"time"
)

// TestGeneration checks, in a fresh namespace, what the daemon's repair
// check relies on: the generation stays put while nothing changes, and
// moves with an iptables-nft rule change of any table (an admin's reload)
// and with the pinhole set changes ftpalg makes itself.
func TestGeneration(t *testing.T) {
	if !inFreshFNNetns(t, "gn") {
		return
	}
	if !XtablesOnNFTables(Config{IPv4: true, IPv6: true}) {
		t.Fatal("iptables here is not iptables-nft: the generation would not cover its rules")
	}
	n := newInstalledNFTable(t, nftConfig(), time.Minute)
	g, err := OpenGeneration()
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	id := func() uint32 {
		t.Helper()
		v, err := g.ID()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	a := id()
	if b := id(); b != a {
		t.Fatalf("generation moved from %d to %d with nothing changed", a, b)
	}
	for _, change := range []struct {
		what string
		do   func()
	}{
		{"an iptables rule appended", func() { ipt(t, IPv4, "-t", "filter", "-A", "INPUT", "-p", "udp", "--dport", "9", "-j", "DROP") }},
		{"an ip6tables rule deleted", func() { ipt(t, IPv6, "-t", "mangle", "-F", ChainQueue) }},
		{"a pinhole opened", func() {
			if err := n.Open(v4NAT); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		before := id()
		change.do()
		if after := id(); after == before {
			t.Errorf("%s: generation still %d", change.what, after)
		}
	}
}
