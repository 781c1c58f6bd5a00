package daemon

import (
	"net/netip"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/conntrack"
	"github.com/ftpalg/ftpalg/ctnetlink"
)

// TestSkippedHandshakeGateway drives shards whose engines see no handshake
// (--skip-handshake): a connection is picked up at its greeting from its
// entry (one lookup), held to the login rule unless the entry is in the
// start-up dump, and ended by the DESTROY of its own entry only, or by a
// reconcile that does not find it.
func TestSkippedHandshakeGateway(t *testing.T) {
	ap := netip.MustParseAddrPort
	cli, srv := ap("192.0.2.10:40000"), ap("198.51.100.20:21")
	var seen conntrack.Labels
	seen[conntrack.LabelSeen/64] |= 1 << (conntrack.LabelSeen % 64)
	entry := ctnetlink.Entry{Orig: ctnetlink.Tuple{Src: cli, Dst: srv}, Reply: ctnetlink.Tuple{Src: srv, Dst: cli},
		Labels: seen.Bytes(), HasLabels: true, ID: 42, TCPState: 3}

	for _, before := range []bool{false, true} {
		pins := NewPinholes(newFakeFirewall(), newPorts(t), time.Minute, Limits{}, quiet)
		defer pins.Stop()
		nat := &natResolver{mapper: fakeMapper{pub: netip.MustParseAddr("198.51.100.1")}, ports: newPorts(t)}
		lc := &entryLabels{e: entry}
		store := newLabelStore(lc, quiet)
		var dump []ctnetlink.Entry
		if before {
			dump = append(dump, entry)
		}
		store.start = newStartEntries(dump, func(p uint16) bool { return p == 21 })
		if n := store.start.Len(); n != len(dump) {
			t.Fatalf("start entries %d, want %d", n, len(dump))
		}
		e := conntrack.New(conntrack.Config{VerifyChecksum: true, WriteLabels: true, LabelSource: store, SkipHandshake: true}, nat)
		gw := NewGateway(e, pins, &fakeLiberal{}, quiet)
		gw.keepLabels(store)
		shards := Shards{NewGateway(conntrack.New(conntrack.Config{}, nat), pins, nil, quiet), gw}

		now := time.Now()
		gw.Handle(tcpPacket(t, srv, cli, 5001, 1001, false, "220 ready\r\n"), now)
		v, out := gw.Handle(tcpPacket(t, cli, srv, 1001, 5012, false, "PORT 192,0,2,10,156,64\r\n"), now)
		rewritten := v == conntrack.AcceptModified && string(out[40:]) == "PORT 198,51,100,1,156,64\r\n"
		if rewritten != before || lc.lookups != 1 {
			t.Fatalf("in the start-up dump %v: PORT before a login rewritten %v after %d lookups; want %v after 1", before, rewritten, lc.lookups, before)
		}
		if store.start.Len() != 0 {
			t.Fatalf("start entry not taken at the pickup")
		}

		shards.ControlDestroyed(entry.Orig, entry.Reply, 41, false) // an older entry's
		if gw.engine.Len() != 1 {
			t.Fatalf("DESTROY of another entry ended the connection")
		}
		// The same ID, closed, while the connection saw no FIN: an older
		// entry that conntrack gave the same ID.
		shards.ControlDestroyed(entry.Orig, entry.Reply, 42, true)
		if gw.engine.Len() != 1 {
			t.Fatalf("DESTROY of another entry ended the connection")
		}
		if n := shards.Reconcile([]ctnetlink.Entry{entry}); n != 0 || gw.engine.Len() != 1 {
			t.Fatalf("reconcile with the entry live ended %d", n)
		}
		if before {
			shards.ControlDestroyed(entry.Orig, entry.Reply, 42, false)
		} else if n := shards.Reconcile(nil); n != 1 {
			t.Fatalf("reconcile without the entry ended %d, want 1", n)
		}
		if gw.engine.Len() != 0 {
			t.Fatalf("connection still tracked after its entry was destroyed")
		}
	}
}
