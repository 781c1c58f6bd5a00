package rules

import (
	"encoding/hex"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// TestNFTElems checks the element layout against what nft itself writes:
// the expected bytes were read from `nft --debug=netlink` for elements
// added with the nft tool to sets of the same types.
func TestNFTElems(t *testing.T) {
	tests := []struct {
		name                   string
		p                      Pinhole
		accept, natKey, natVal string // hex
	}{
		{
			name:   "IPv4 NAT",
			p:      Pinhole{netip.MustParseAddr("198.51.100.20"), netip.MustParseAddrPort("198.51.100.1:50000"), netip.MustParseAddrPort("192.0.2.10:2121")},
			accept: "c6336414" + "c000020a" + "08490000" + "c3500000",
			natKey: "c6336414" + "c6336401" + "c3500000",
			natVal: "c000020a" + "08490000",
		},
		{
			name:   "IPv4 routed",
			p:      Pinhole{netip.MustParseAddr("198.51.100.20"), netip.MustParseAddrPort("192.0.2.10:2121"), netip.MustParseAddrPort("192.0.2.10:2121")},
			accept: "c6336414" + "c000020a" + "08490000",
		},
		{
			name:   "IPv6 NAT",
			p:      Pinhole{netip.MustParseAddr("2001:db8:2::20"), netip.MustParseAddrPort("[2001:db8:2::1]:50000"), netip.MustParseAddrPort("[2001:db8:1::10]:2121")},
			accept: "20010db8000200000000000000000020" + "20010db8000100000000000000000010" + "08490000" + "c3500000",
			natKey: "20010db8000200000000000000000020" + "20010db8000200000000000000000001" + "c3500000",
			natVal: "20010db8000100000000000000000010" + "08490000",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n, err := tt.p.normalize()
			if err != nil {
				t.Fatal(err)
			}
			e := n.nftElems()
			if e.family != tt.p.Family() {
				t.Errorf("family = %v, want %v", e.family, tt.p.Family())
			}
			for _, c := range []struct {
				what    string
				got     []byte
				wantHex string
			}{
				{"accept key", e.accept, tt.accept},
				{"nat key", e.natKey, tt.natKey},
				{"nat value", e.natVal, tt.natVal},
			} {
				if got := hex.EncodeToString(c.got); got != c.wantHex {
					t.Errorf("%s = %s, want %s", c.what, got, c.wantHex)
				}
			}
		})
	}
}

func TestAcceptMarkSpec(t *testing.T) {
	got := formatRule(acceptMarkSpec(DefaultAcceptMark))
	want := `-p tcp -m mark --mark 0x20000000/0x20000000 -m conntrack --ctstate NEW -m comment --comment "ftpalg nftables pinholes" -j ACCEPT`
	if got != want {
		t.Errorf("acceptMarkSpec = %s\nwant %s", got, want)
	}
	if got := formatRule(acceptMarkSpec(1)); !strings.Contains(got, "--mark 0x1/0x1 ") {
		t.Errorf("acceptMarkSpec(1) = %s", got)
	}
}

func TestConfigValidateAcceptMark(t *testing.T) {
	for _, tt := range []struct {
		mark uint32
		ok   bool
	}{
		{0, true},
		{1, true},
		{DefaultAcceptMark, true},
		{0x80000000, true},
		{3, false},
		{0xffffffff, false},
	} {
		cfg := DefaultConfig()
		cfg.AcceptMark = tt.mark
		err := cfg.Validate()
		if tt.ok != (err == nil) || (err != nil && !errors.Is(err, ErrInvalidConfig)) {
			t.Errorf("AcceptMark %#x: Validate() = %v, want ok=%v", tt.mark, err, tt.ok)
		}
	}
}

func TestNewNFTableInvalid(t *testing.T) {
	withMark := DefaultConfig()
	withMark.AcceptMark = DefaultAcceptMark
	for _, tt := range []struct {
		name    string
		cfg     Config
		timeout time.Duration
	}{
		{"no accept mark", DefaultConfig(), time.Minute},
		{"two mark bits", Config{ControlPorts: []uint16{21}, IPv4: true, AcceptMark: 0x30}, time.Minute},
		{"zero timeout", withMark, 0},
		{"no family", Config{ControlPorts: []uint16{21}, AcceptMark: 1}, time.Minute},
	} {
		if _, err := NewNFTable(tt.cfg, tt.timeout, nil); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("%s: NewNFTable error = %v, want ErrInvalidConfig", tt.name, err)
		}
	}
}

func TestFragmentAcceptMark(t *testing.T) {
	cfg := DefaultConfig()
	cfg.AcceptMark = DefaultAcceptMark
	want := "-A FTPALG-ACCEPT " + formatRule(acceptMarkSpec(DefaultAcceptMark)) + "\n"
	for _, f := range []Family{IPv4, IPv6} {
		frag, err := Fragment(cfg, f)
		if err != nil {
			t.Fatal(err)
		}
		// The rule belongs in the filter table, after FTPALG-ACCEPT is
		// declared.
		filter := frag[strings.Index(frag, "*filter\n"):]
		if !strings.Contains(filter, ":FTPALG-ACCEPT - [0:0]\n"+want) {
			t.Errorf("%s fragment lacks %q after the chain declaration:\n%s", f, want, frag)
		}
		plain, err := Fragment(DefaultConfig(), f)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(plain, "--mark") {
			t.Errorf("%s fragment without AcceptMark mentions a mark:\n%s", f, plain)
		}
	}
}
