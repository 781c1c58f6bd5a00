package ctnetlink

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/ti-mo/conntrack"
)

// TestSeqAdj writes seqadj through SetSeqAdj and SetLabelsSeqAdj and reads
// it back with Get. An entry created through ctnetlink always has the
// seqadj extension (ctnetlink_create_conntrack; how conntrackd's injected
// entries get it): the values take, IPS_SEQ_ADJUST is set, and the labels
// of the same update are written too. An entry of a real connection that
// nothing gave the extension ignores them without an error, which is why
// the daemon reads the entry back: SeqAdjust stays false there.
func TestSeqAdj(t *testing.T) {
	r := newRig(t)
	c := r.openClient(t)
	ct := r.dialConntrack(t)
	// Entries get labels only once some connlabel rule is loaded.
	r.exec(t, "iptables", "-t", "mangle", "-A", "FORWARD", "-m", "connlabel", "--label", "127")

	src, dst := netip.MustParseAddr("203.0.113.7"), netip.MustParseAddr("203.0.113.8")
	f := conntrack.NewFlow(protoTCP, 0, src, dst, 40000, 21, 120, 0)
	if err := ct.Create(f); err != nil {
		t.Fatalf("creating an entry through ctnetlink: %v", err)
	}
	orig := Tuple{Src: netip.AddrPortFrom(src, 40000), Dst: netip.AddrPortFrom(dst, 21)}
	adj := [2]SeqAdj{{Pos: 0xfffffff0, Before: -3, After: 9}, {Pos: 77, Before: 0, After: -2}}
	if err := c.SetSeqAdj(orig.Reverse(), adj); err != nil { // named by its reply tuple
		t.Fatal(err)
	}
	e, err := c.Get(orig)
	if err != nil {
		t.Fatal(err)
	}
	if !e.SeqAdjust || e.SeqAdj != adj {
		t.Fatalf("after SetSeqAdj: SeqAdjust %v, %+v; want true, %+v", e.SeqAdjust, e.SeqAdj, adj)
	}
	adj2 := [2]SeqAdj{{Pos: 5, Before: 9, After: 12}, adj[1]}
	if err := c.SetLabelsSeqAdj(orig, labelBytes(120, 121, 127), allLabels, adj2); err != nil {
		t.Fatal(err)
	}
	e, err = c.Get(orig)
	if err != nil {
		t.Fatal(err)
	}
	if !e.SeqAdjust || e.SeqAdj != adj2 || !e.HasLabels || e.Labels != labelBytes(120, 121, 127) {
		t.Fatalf("after SetLabelsSeqAdj: SeqAdjust %v, %+v, labels %x; want %+v and bits 120, 121, 127", e.SeqAdjust, e.SeqAdj, e.Labels, adj2)
	}

	cn, real := r.dialEntry(t, c, flows[1]) // MASQUERADE, no extension
	if real.SeqAdjust {
		t.Fatalf("a fresh entry says IPS_SEQ_ADJUST: %+v", real)
	}
	if err := c.SetSeqAdj(cn.seen(), adj); err != nil {
		t.Fatalf("SetSeqAdj on an entry without the extension: %v (the kernel ignores it)", err)
	}
	if e, err := c.Get(cn.seen()); err != nil || e.SeqAdjust || e.SeqAdj != [2]SeqAdj{} {
		t.Fatalf("entry without the extension after SetSeqAdj: %+v, %v; want it unchanged", e, err)
	}
	missing := Tuple{Src: netip.MustParseAddrPort("203.0.113.9:1"), Dst: netip.MustParseAddrPort("203.0.113.10:21")}
	if err := c.SetSeqAdj(missing, adj); !errors.Is(err, ErrNotFound) {
		t.Fatalf("SetSeqAdj on no entry: %v, want ErrNotFound", err)
	}
	if _, err := c.Get(missing); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get of no entry: %v, want ErrNotFound", err)
	}
}
