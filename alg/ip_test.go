package alg

import (
	"net/netip"
	"strings"
	"testing"
)

var ipTexts = []string{
	"::", "::1", "1::", "2001:db8::1", "2001:DB8::1", "2001:db8:0:0:0:0:0:1",
	"2001:db8:aaaa:bbbb:cccc:dddd:eeee:ffff", "::ffff:192.0.2.1", "2001:db8::192.0.2.1",
	"1:2:3:4:5:6:192.0.2.1", "1:2:3:4:5:6:7:8", "fe80::1%eth0", "1:2:3:4:5:6:7::",
	"::1:2:3:4:5:6:7", "1:2:3:4:5:6:7:8:9", "1:2:3:4:5:6:7", "1::2::3", ":1", "1:", ":::",
	"12345::", "1:2:3:4:5:6:7:192.0.2.1", "::192.0.2.01", "::192.0.2", "::1.2.3.4.5",
	"0:0:0:0:0:0:0:0", "g::", "", "1.2.3.4", "192.0.2.256", "01.2.3.4", "0.0.0.0",
	"255.255.255.255", "1.2.3", "1.2.3.4.", ".1.2.3.4", "1..2.3", "::ffff:1.2.3.4:5",
	"1:2:3:4:5::1.2.3.4", "1:2:3:4:5:6::1.2.3.4", "::0:a:b:c:d:e:f",
}

// compareWithNetip checks parseIPv4/parseIPv6 accept exactly what
// netip.ParseAddr accepts for the same family (without zones) and agree on
// the value.
func compareWithNetip(t *testing.T, text string) {
	ref, err := netip.ParseAddr(text)
	want4 := err == nil && ref.Is4()
	want6 := err == nil && ref.Is6() && ref.Zone() == ""
	a4, ok4 := parseIPv4([]byte(text))
	a6, ok6 := parseIPv6([]byte(text))
	if ok4 != want4 || ok4 && a4 != ref {
		t.Errorf("parseIPv4(%q) = %v, %v; netip: %v, %v", text, a4, ok4, ref, err)
	}
	if ok6 != want6 || ok6 && a6 != ref {
		t.Errorf("parseIPv6(%q) = %v, %v; netip: %v, %v", text, a6, ok6, ref, err)
	}
}

func TestParseIP(t *testing.T) {
	for _, text := range ipTexts {
		compareWithNetip(t, text)
	}
}

// FuzzParseIP is a differential fuzz target: the allocation-free parsers
// against netip.ParseAddr.
func FuzzParseIP(f *testing.F) {
	for _, text := range ipTexts {
		f.Add(text)
	}
	f.Fuzz(func(t *testing.T, text string) {
		if strings.Contains(text, "%") {
			return // zones: netip accepts them, EPRT must not
		}
		compareWithNetip(t, text)
	})
}
