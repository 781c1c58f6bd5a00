package pinsync

import (
	"bytes"
	"encoding/hex"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func pinholeMsg() Message {
	return Message{Type: TypePinhole, Session: 0x0102030405060708, Timeout: 9500 * time.Millisecond,
		Peer:   netip.MustParseAddr("198.51.100.20"),
		Public: netip.MustParseAddrPort("198.51.100.1:40001"), Target: netip.MustParseAddrPort("192.0.2.10:40001")}
}

func pinhole6Msg() Message {
	return Message{Type: TypePinhole, Session: 7, Timeout: time.Second,
		Peer:   netip.MustParseAddr("2001:db8:2::20"),
		Public: netip.MustParseAddrPort("[2001:db8:1::10]:50000"), Target: netip.MustParseAddrPort("[2001:db8:1::10]:50000")}
}

// TestGolden pins the wire format: a change to these bytes is a new
// version, because the two routers of a pair are upgraded one at a time.
func TestGolden(t *testing.T) {
	for _, c := range []struct {
		name string
		m    Message
		hex  string
	}{
		{"resync", Message{Type: TypeResync}, "66747073" + "01" + "02" + "0000"},
		{"ipv4 nat", pinholeMsg(), "66747073" + "01" + "01" + "0000" + "0102030405060708" + "0000251c" + "04" + "00" + "9c41" + "9c41" + "0000" +
			"c6336414" + "c6336401" + "c000020a"},
		{"ipv6 routed", pinhole6Msg(), "66747073" + "01" + "01" + "0000" + "0000000000000007" + "000003e8" + "06" + "00" + "c350" + "c350" + "0000" +
			"20010db8000200000000000000000020" + "20010db8000100000000000000000010" + "20010db8000100000000000000000010"},
	} {
		t.Run(c.name, func(t *testing.T) {
			b, err := Encode(nil, c.m)
			if err != nil {
				t.Fatal(err)
			}
			if got := hex.EncodeToString(b); got != c.hex {
				t.Fatalf("Encode = %s\nwant     %s", got, c.hex)
			}
			got, err := Decode(b)
			if err != nil {
				t.Fatal(err)
			}
			if got != c.m {
				t.Fatalf("Decode = %+v, want %+v", got, c.m)
			}
		})
	}
}

// TestEncodeMapped: an IPv4-mapped spelling (from a 16-byte net.IP)
// travels as IPv4.
func TestEncodeMapped(t *testing.T) {
	m := pinholeMsg()
	m.Peer = netip.AddrFrom16(m.Peer.As16())
	b, err := Encode(nil, m)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) != 40 {
		t.Fatalf("%d bytes, want 40", len(b))
	}
}

func TestEncodeRefuses(t *testing.T) {
	for name, mod := range map[string]func(*Message){
		"unknown type":  func(m *Message) { m.Type = 9 },
		"no peer":       func(m *Message) { m.Peer = netip.Addr{} },
		"zoned":         func(m *Message) { m.Peer = netip.MustParseAddr("fe80::1%eth0") },
		"mixed":         func(m *Message) { m.Target = netip.MustParseAddrPort("[2001:db8::1]:5000") },
		"zero timeout":  func(m *Message) { m.Timeout = 0 },
		"sub-ms":        func(m *Message) { m.Timeout = time.Microsecond },
		"too long":      func(m *Message) { m.Timeout = MaxTimeout + time.Millisecond },
		"negative time": func(m *Message) { m.Timeout = -time.Second },
	} {
		m := pinholeMsg()
		mod(&m)
		if _, err := Encode(nil, m); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: err = %v, want ErrMalformed", name, err)
		}
	}
}

// TestDecodeRefuses: every way a datagram can be wrong is ErrMalformed,
// with a message that says what was wrong.
func TestDecodeRefuses(t *testing.T) {
	good, _ := Encode(nil, pinholeMsg())
	good6, _ := Encode(nil, pinhole6Msg())
	set := func(b []byte, i int, v byte) []byte { b = bytes.Clone(b); b[i] = v; return b }
	mapped := bytes.Clone(good6)
	copy(mapped[28:44], netip.MustParseAddr("::ffff:198.51.100.20").AsSlice())
	for _, c := range []struct {
		name, want string
		b          []byte
	}{
		{"empty", "0 bytes", nil},
		{"short header", "7 bytes", good[:7]},
		{"no magic", "no magic", set(good, 0, 'F')},
		{"version 2", "unknown version 2", set(good, 4, 2)},
		{"version 0", "unknown version 0", set(good, 4, 0)},
		{"reserved header", "reserved header", set(good, 7, 1)},
		{"unknown type", "type 3", set(good, 5, 3)},
		{"resync with body", "resync of 40 bytes", set(good, 5, byte(TypeResync))},
		{"truncated fixed part", "pinhole of 27 bytes", good[:27]},
		{"truncated addresses", "IPv4 pinhole of 39 bytes", good[:39]},
		{"trailing byte", "IPv4 pinhole of 41 bytes", append(bytes.Clone(good), 0)},
		{"ipv6 length with family 4", "IPv4 pinhole of 76 bytes", set(good6, 20, 4)},
		{"family 5", "address family 5", set(good, 20, 5)},
		{"reserved after family", "reserved bytes", set(good, 21, 1)},
		{"reserved after ports", "reserved bytes", set(good, 27, 1)},
		{"zero timeout", "timeout 0s", func() []byte { b := bytes.Clone(good); copy(b[16:20], []byte{0, 0, 0, 0}); return b }()},
		{"huge timeout", "timeout 1193h", func() []byte { b := bytes.Clone(good); copy(b[16:20], []byte{0xff, 0xff, 0xff, 0xff}); return b }()},
		{"mapped in ipv6", "IPv4-mapped", mapped},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := Decode(c.b)
			if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want ErrMalformed saying %q", err, c.want)
			}
		})
	}
	if _, err := Decode(set(good, 4, 2)); !errors.Is(err, ErrVersion) {
		t.Errorf("version 2: err = %v, want ErrVersion", err)
	}
}

func TestCheck(t *testing.T) {
	pol := Policy{MaxTimeout: 10 * time.Second}
	if err := Check(pinholeMsg(), pol); err != nil {
		t.Fatalf("good pinhole: %v", err)
	}
	if err := Check(pinhole6Msg(), pol); err != nil {
		t.Fatalf("good IPv6 pinhole: %v", err)
	}
	for _, c := range []struct {
		name, want string
		mod        func(*Message)
	}{
		{"resync", "not a pinhole", func(m *Message) { m.Type = TypeResync }},
		{"timeout beyond ours", "beyond this router's", func(m *Message) { m.Timeout = 10*time.Second + time.Millisecond }},
		{"public port 21", "port 21 below 1024", func(m *Message) { m.Public = netip.AddrPortFrom(m.Public.Addr(), 21) }},
		{"target port 1023", "port 1023 below 1024", func(m *Message) { m.Target = netip.AddrPortFrom(m.Target.Addr(), 1023) }},
		{"loopback target", "target address 127.0.0.1", func(m *Message) { m.Target = netip.MustParseAddrPort("127.0.0.1:40001") }},
		{"unspecified peer", "peer address 0.0.0.0", func(m *Message) { m.Peer = netip.IPv4Unspecified() }},
		{"multicast public", "public address 224.0.0.5", func(m *Message) { m.Public = netip.MustParseAddrPort("224.0.0.5:40001") }},
		{"broadcast peer", "peer address 255.255.255.255", func(m *Message) { m.Peer = netip.MustParseAddr("255.255.255.255") }},
		{"link-local target", "target address 169.254.1.1", func(m *Message) { m.Target = netip.MustParseAddrPort("169.254.1.1:40001") }},
		{"missing target", "target address invalid", func(m *Message) { m.Target = netip.AddrPortFrom(netip.Addr{}, 40001) }},
		{"mixed", "mixed", func(m *Message) { m.Target = netip.MustParseAddrPort("[2001:db8::1]:40001") }},
	} {
		m := pinholeMsg()
		c.mod(&m)
		err := Check(m, pol)
		if !errors.Is(err, ErrPolicy) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err = %v, want ErrPolicy saying %q", c.name, err, c.want)
		}
	}
}
