package daemon

import (
	"net/netip"
	"testing"

	"github.com/ftpalg/ftpalg/conntrack"
	"github.com/ftpalg/ftpalg/ctnetlink"
)

// entryLabels is a LabelClient holding one conntrack entry: a write naming
// either of its tuples reaches it, as in the kernel (TestLabelsByReplyTuple
// in ctnetlink), and any other tuple is another entry's.
type entryLabels struct {
	e              ctnetlink.Entry
	lookups        int
	named          []ctnetlink.Tuple
	foreign, wrote int
}

func (l *entryLabels) Lookup(seen ctnetlink.Tuple) (ctnetlink.Entry, ctnetlink.Direction, error) {
	l.lookups++
	d, ok := l.e.Direction(seen)
	if !ok {
		return ctnetlink.Entry{}, 0, ctnetlink.ErrNotFound
	}
	return l.e, d, nil
}

func (l *entryLabels) SetLabels(t ctnetlink.Tuple, _, _ [16]byte, _ bool) error {
	l.named = append(l.named, t)
	if t != l.e.Orig && t != l.e.Reply {
		l.foreign++ // another entry's labels would be overwritten
		return nil
	}
	l.wrote++
	return nil
}

// TestLabelStoreNamesOwnEntry checks that label writes name the
// connection's own entry by one of its tuples, for every kind of NAT, and
// cost one lookup per connection: with DNAT the tuple the engine sees
// (post-DNAT, pre-SNAT) is not one of the entry's, and may be another
// entry's.
func TestLabelStoreNamesOwnEntry(t *testing.T) {
	ap := netip.MustParseAddrPort
	client, server := ap("192.0.2.10:40000"), ap("192.0.2.20:21")
	for _, tt := range []struct {
		name string
		e    ctnetlink.Entry
		want entryRef
	}{
		{"no NAT", ctnetlink.Entry{Orig: ctnetlink.Tuple{Src: client, Dst: server}, Reply: ctnetlink.Tuple{Src: server, Dst: client}}, refSeen},
		{"SNAT", ctnetlink.Entry{Orig: ctnetlink.Tuple{Src: client, Dst: server}, Reply: ctnetlink.Tuple{Src: server, Dst: ap("198.51.100.1:40001")}}, refSeen},
		{"DNAT", ctnetlink.Entry{Orig: ctnetlink.Tuple{Src: client, Dst: ap("198.51.100.1:21")}, Reply: ctnetlink.Tuple{Src: server, Dst: client}}, refReversed},
		{"DNAT and SNAT", ctnetlink.Entry{Orig: ctnetlink.Tuple{Src: client, Dst: ap("198.51.100.1:21")}, Reply: ctnetlink.Tuple{Src: server, Dst: ap("192.0.2.1:40001")}}, refOrig},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := conntrack.Conn{Client: tt.e.Orig.Src, Server: tt.e.Reply.Src}
			for _, how := range []string{"written first", "read first", "adopted"} {
				l := &entryLabels{e: tt.e}
				s := newLabelStore(l, quiet)
				switch how {
				case "read first":
					if _, err := s.Entry(c); err != nil {
						t.Fatal(err)
					}
				case "adopted":
					s.remember(c, tt.e)
				}
				for range 3 {
					s.write(&conntrack.Event{Kind: conntrack.EventLabels, Session: 1, Conn: c})
				}
				if got := s.refs[c.Key()]; got != tt.want {
					t.Errorf("%s: ref %d, want %d", how, got, tt.want)
				}
				if l.foreign != 0 || l.wrote != 3 || s.failed != 0 {
					t.Errorf("%s: writes named %v: %d reached the entry %s, %d another entry, %d failed", how, l.named, l.wrote, tt.e, l.foreign, s.failed)
				}
				wantLookups := 1 // a dump found the adopted entry
				if how == "adopted" {
					wantLookups = 0
				}
				if l.lookups != wantLookups {
					t.Errorf("%s: %d lookups for 3 writes, want %d", how, l.lookups, wantLookups)
				}
				s.forget(1, c)
				if len(s.refs) != 0 || len(s.orig) != 0 {
					t.Errorf("%s: forget left %v and %v", how, s.refs, s.orig)
				}
			}
		})
	}
}
