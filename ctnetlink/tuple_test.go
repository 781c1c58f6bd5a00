package ctnetlink

import (
	"errors"
	"net/netip"
	"testing"
)

func tup(src, dst string) Tuple {
	return Tuple{Src: netip.MustParseAddrPort(src), Dst: netip.MustParseAddrPort(dst)}
}

// TestEntryMapping checks the table in Entry's documentation: for each
// topology, the tuple each direction has in mangle FORWARD, and what the
// peer sees for the sender.
func TestEntryMapping(t *testing.T) {
	tests := []struct {
		name     string
		entry    Entry
		fwdOrig  Tuple // original-direction packet in FORWARD
		fwdReply Tuple // reply-direction packet in FORWARD
		pubOrig  string
		pubReply string
	}{
		{
			name:     "no NAT",
			entry:    Entry{Orig: tup("192.0.2.10:40000", "198.51.100.20:21"), Reply: tup("198.51.100.20:21", "192.0.2.10:40000")},
			fwdOrig:  tup("192.0.2.10:40000", "198.51.100.20:21"),
			fwdReply: tup("198.51.100.20:21", "192.0.2.10:40000"),
			pubOrig:  "192.0.2.10", pubReply: "198.51.100.20",
		},
		{
			name:     "MASQUERADE, client sends PORT",
			entry:    Entry{Orig: tup("192.0.2.10:40000", "198.51.100.20:21"), Reply: tup("198.51.100.20:21", "198.51.100.1:50000")},
			fwdOrig:  tup("192.0.2.10:40000", "198.51.100.20:21"),
			fwdReply: tup("198.51.100.20:21", "192.0.2.10:40000"),
			pubOrig:  "198.51.100.1", pubReply: "198.51.100.20",
		},
		{
			name:     "DNAT port forward, server sends 227",
			entry:    Entry{Orig: tup("198.51.100.30:40000", "198.51.100.1:21"), Reply: tup("192.0.2.20:21", "198.51.100.30:40000")},
			fwdOrig:  tup("198.51.100.30:40000", "192.0.2.20:21"),
			fwdReply: tup("192.0.2.20:21", "198.51.100.30:40000"),
			pubOrig:  "198.51.100.30", pubReply: "198.51.100.1",
		},
		{
			name:     "DNAT and SNAT",
			entry:    Entry{Orig: tup("198.51.100.30:40000", "198.51.100.1:2100"), Reply: tup("192.0.2.20:2100", "192.0.2.1:40000")},
			fwdOrig:  tup("198.51.100.30:40000", "192.0.2.20:2100"),
			fwdReply: tup("192.0.2.20:2100", "198.51.100.30:40000"),
			pubOrig:  "192.0.2.1", pubReply: "198.51.100.1",
		},
		{
			name:     "IPv6 masquerade",
			entry:    Entry{Orig: tup("[2001:db8:1::10]:40000", "[2001:db8:2::20]:21"), Reply: tup("[2001:db8:2::20]:21", "[2001:db8:2::1]:40000")},
			fwdOrig:  tup("[2001:db8:1::10]:40000", "[2001:db8:2::20]:21"),
			fwdReply: tup("[2001:db8:2::20]:21", "[2001:db8:1::10]:40000"),
			pubOrig:  "2001:db8:2::1", pubReply: "2001:db8:2::20",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := tt.entry
			if got := e.ForwardView(Original); got != tt.fwdOrig {
				t.Errorf("ForwardView(Original) = %v, want %v", got, tt.fwdOrig)
			}
			if got := e.ForwardView(Reply); got != tt.fwdReply {
				t.Errorf("ForwardView(Reply) = %v, want %v", got, tt.fwdReply)
			}
			if d, ok := e.Direction(tt.fwdOrig); !ok || d != Original {
				t.Errorf("Direction(%v) = %v, %v; want original", tt.fwdOrig, d, ok)
			}
			if d, ok := e.Direction(tt.fwdReply); !ok || d != Reply {
				t.Errorf("Direction(%v) = %v, %v; want reply", tt.fwdReply, d, ok)
			}
			if got := e.PublicAddr(Original).String(); got != tt.pubOrig {
				t.Errorf("PublicAddr(Original) = %s, want %s", got, tt.pubOrig)
			}
			if got := e.PublicAddr(Reply).String(); got != tt.pubReply {
				t.Errorf("PublicAddr(Reply) = %s, want %s", got, tt.pubReply)
			}
			// Wire tuples (what the kernel stores) are not FORWARD views
			// once NAT is involved, and must not be mistaken for them.
			if e.Orig != tt.fwdOrig {
				if _, ok := e.Direction(e.Orig); ok {
					t.Errorf("Direction accepted the pre-DNAT wire tuple %v", e.Orig)
				}
			}
		})
	}
}

func TestDirectionUnrelated(t *testing.T) {
	e := Entry{Orig: tup("192.0.2.10:40000", "198.51.100.20:21"), Reply: tup("198.51.100.20:21", "198.51.100.1:50000")}
	for _, seen := range []Tuple{
		tup("192.0.2.10:40001", "198.51.100.20:21"),
		tup("198.51.100.20:21", "198.51.100.1:50000"), // the wire reply tuple, not a FORWARD view
		{},
	} {
		if d, ok := e.Direction(seen); ok {
			t.Errorf("Direction(%v) = %v, want no match", seen, d)
		}
	}
}

func TestNormalize(t *testing.T) {
	tests := []struct {
		name    string
		in      Tuple
		want    Tuple
		wantErr bool
	}{
		{name: "v4", in: tuple4, want: tuple4},
		{name: "v6", in: tuple6, want: tuple6},
		{name: "4in6 unmapped", in: tup("[::ffff:192.0.2.10]:40000", "198.51.100.20:21"), want: tuple4},
		{name: "zero", in: Tuple{}, wantErr: true},
		{name: "zero port", in: tup("192.0.2.10:0", "198.51.100.20:21"), wantErr: true},
		{name: "mixed", in: tup("192.0.2.10:1", "[2001:db8::1]:21"), wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.in.normalize()
			if tt.wantErr {
				if !errors.Is(err, ErrInvalidTuple) {
					t.Fatalf("err = %v, want ErrInvalidTuple", err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Errorf("normalize(%v) = %v, %v; want %v", tt.in, got, err, tt.want)
			}
		})
	}
}
