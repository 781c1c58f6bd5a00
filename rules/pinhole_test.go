package rules

import (
	"errors"
	"net/netip"
	"testing"
)

func TestPinholeNormalize(t *testing.T) {
	v4 := Pinhole{
		Peer:   netip.MustParseAddr("198.51.100.20"),
		Public: netip.MustParseAddrPort("198.51.100.1:50000"),
		Target: netip.MustParseAddrPort("192.0.2.10:2121"),
	}
	mapped := Pinhole{
		Peer:   netip.MustParseAddr("::ffff:198.51.100.20"),
		Public: netip.MustParseAddrPort("[::ffff:198.51.100.1]:50000"),
		Target: netip.MustParseAddrPort("[::ffff:192.0.2.10]:2121"),
	}
	t.Run("mapped equals plain", func(t *testing.T) {
		n, err := mapped.normalize()
		if err != nil {
			t.Fatal(err)
		}
		if n != v4 || n.Family() != IPv4 {
			t.Errorf("normalize(%s) = %s (%s), want %s", mapped, n, n.Family(), v4)
		}
	})

	bad := []struct {
		name string
		edit func(*Pinhole)
	}{
		{"zero value", func(p *Pinhole) { *p = Pinhole{} }},
		{"no peer", func(p *Pinhole) { p.Peer = netip.Addr{} }},
		{"unspecified peer", func(p *Pinhole) { p.Peer = netip.IPv4Unspecified() }},
		{"multicast target", func(p *Pinhole) { p.Target = netip.MustParseAddrPort("224.0.0.1:2121") }},
		{"zoned", func(p *Pinhole) { p.Peer = netip.MustParseAddr("fe80::1%eth0") }},
		{"public port 0", func(p *Pinhole) { p.Public = netip.MustParseAddrPort("198.51.100.1:0") }},
		{"target port 0", func(p *Pinhole) { p.Target = netip.MustParseAddrPort("192.0.2.10:0") }},
		{"mixed families", func(p *Pinhole) { p.Target = netip.MustParseAddrPort("[2001:db8:1::10]:2121") }},
		{"mixed peer", func(p *Pinhole) { p.Peer = netip.MustParseAddr("2001:db8:2::20") }},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			p := v4
			tt.edit(&p)
			if _, err := p.normalize(); !errors.Is(err, ErrInvalidPinhole) {
				t.Errorf("normalize(%s) error = %v, want ErrInvalidPinhole", p, err)
			}
		})
	}
}

func TestPinholeString(t *testing.T) {
	tests := []struct {
		p    Pinhole
		want string
	}{
		{Pinhole{
			Peer:   netip.MustParseAddr("198.51.100.20"),
			Public: netip.MustParseAddrPort("198.51.100.1:50000"),
			Target: netip.MustParseAddrPort("192.0.2.10:2121"),
		}, "198.51.100.20 -> 198.51.100.1:50000 -> 192.0.2.10:2121"},
		{Pinhole{
			Peer:   netip.MustParseAddr("2001:db8:1::10"),
			Public: netip.MustParseAddrPort("[2001:db8:2::20]:40000"),
			Target: netip.MustParseAddrPort("[2001:db8:2::20]:40000"),
		}, "2001:db8:1::10 -> [2001:db8:2::20]:40000"},
		{Pinhole{}, "invalid IP -> invalid AddrPort"},
	}
	for _, tt := range tests {
		if got := tt.p.String(); got != tt.want {
			t.Errorf("String() = %q, want %q", got, tt.want)
		}
	}
}
