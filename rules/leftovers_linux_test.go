package rules

import (
	"net/netip"
	"slices"
	"testing"
	"time"
)

// TestNFTableLeftovers opens pinholes of every kind with one table, as a
// process that then hands over, and checks that a successor's table, after
// its Install, lists exactly those as left over, with their time left, and
// none of its own.
func TestNFTableLeftovers(t *testing.T) {
	if !inFreshFNNetns(t, "lo") {
		return
	}
	const timeout = time.Minute
	first := newInstalledNFTable(t, nftConfig(), timeout)
	left := []Pinhole{v4NAT, v4Plain, v6NAT, v6Plain}
	for _, p := range left {
		if err := first.Open(p); err != nil {
			t.Fatal(err)
		}
	}
	next, err := NewNFTable(nftConfig(), timeout, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := next.Install(); err != nil {
		t.Fatal(err)
	}
	own := Pinhole{Peer: v4NAT.Peer, Public: netip.AddrPortFrom(v4NAT.Public.Addr(), 50001), Target: v4NAT.Target}
	if err := next.Open(own); err != nil {
		t.Fatal(err)
	}
	ls, err := next.Leftovers()
	if err != nil {
		t.Fatal(err)
	}
	var got []Pinhole
	for _, l := range ls {
		if l.Left <= timeout/2 || l.Left > timeout+NFTTimeoutMargin {
			t.Errorf("%s: %v left, want about %v", l.Pinhole, l.Left, timeout+NFTTimeoutMargin)
		}
		got = append(got, l.Pinhole)
	}
	sortPinholes(got)
	sortPinholes(left)
	if !slices.Equal(got, left) {
		t.Fatalf("left over: %v\nwant %v", got, left)
	}
}

func sortPinholes(ps []Pinhole) {
	slices.SortFunc(ps, func(a, b Pinhole) int {
		if c := a.Peer.Compare(b.Peer); c != 0 {
			return c
		}
		if c := a.Public.Compare(b.Public); c != 0 {
			return c
		}
		return a.Target.Compare(b.Target)
	})
}
