package alg

import (
	"errors"
	"net/netip"
	"strconv"
	"strings"
	"testing"
)

// checkFound compares f with the expected kind, address (text form of a
// netip.AddrPort, or ":port" for a 229 port without address) and error (nil, or a sentinel that f.Err must
// wrap).
func checkFound(t *testing.T, f Found, kind Kind, addr string, err error) {
	t.Helper()
	if f.Kind != kind {
		t.Fatalf("Kind = %v, want %v (Err %v)", f.Kind, kind, f.Err)
	}
	switch {
	case err == nil && f.Err != nil:
		t.Fatalf("Err = %v, want nil", f.Err)
	case err != nil && !errors.Is(f.Err, err):
		t.Fatalf("Err = %v, want one wrapping %v", f.Err, err)
	}
	if err != nil || kind == KindNone {
		return
	}
	want := parseWant(t, addr)
	if f.Addr != want {
		t.Fatalf("Addr = %v, want %v", f.Addr, want)
	}
}

// parseWant parses the text form of a netip.AddrPort, or ":port" for a
// port without address (229).
func parseWant(t *testing.T, addr string) netip.AddrPort {
	t.Helper()
	port, ok := strings.CutPrefix(addr, ":")
	if !ok {
		return netip.MustParseAddrPort(addr)
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		t.Fatalf("bad test port %q", addr)
	}
	return netip.AddrPortFrom(netip.Addr{}, uint16(p))
}

func TestClientLine(t *testing.T) {
	const v4 = "192.0.2.10:1025"
	const v6 = "[2001:db8::1]:6446"
	tests := []struct {
		name string
		line string
		kind Kind
		addr string
		err  error
	}{
		// PORT, valid.
		{"PORT", "PORT 192,0,2,10,4,1", KindPORT, v4, nil},
		{"PORT lower case", "port 192,0,2,10,4,1", KindPORT, v4, nil},
		{"PORT mixed case", "pOrT 192,0,2,10,4,1", KindPORT, v4, nil},
		{"PORT surrounding spaces", "   PORT    192,0,2,10,4,1    ", KindPORT, v4, nil},
		{"PORT zero padded", "PORT 192,000,002,010,004,001", KindPORT, v4, nil},
		{"PORT max", "PORT 255,255,255,255,255,255", KindPORT, "255.255.255.255:65535", nil},
		{"PORT min port", "PORT 0,0,0,0,0,1", KindPORT, "0.0.0.0:1", nil},
		{"PORT telnet IP DM prefix", "\xff\xf4\xff\xf2PORT 192,0,2,10,4,1", KindPORT, v4, nil},
		{"PORT telnet WILL prefix", "\xff\xfb\x01PORT 192,0,2,10,4,1", KindPORT, v4, nil},
		{"PORT telnet SB SE prefix", "\xff\xfa\x18\x01\x02\xff\xf0 PORT 192,0,2,10,4,1", KindPORT, v4, nil},

		// PORT, malformed.
		{"PORT number over 255", "PORT 256,0,2,10,4,1", KindPORT, "", ErrMalformed},
		{"PORT port byte over 255", "PORT 192,0,2,10,4,256", KindPORT, "", ErrMalformed},
		{"PORT port 0", "PORT 192,0,2,10,0,0", KindPORT, "", ErrMalformed},
		{"PORT 5 fields", "PORT 192,0,2,10,4", KindPORT, "", ErrMalformed},
		{"PORT 7 fields", "PORT 192,0,2,10,4,1,7", KindPORT, "", ErrMalformed},
		{"PORT 4 digits", "PORT 0192,0,2,10,4,1", KindPORT, "", ErrMalformed},
		{"PORT overlong zeros", "PORT 192,0,2,10,4,0000001", KindPORT, "", ErrMalformed},
		{"PORT trailing junk", "PORT 192,0,2,10,4,1x", KindPORT, "", ErrMalformed},
		{"PORT trailing word", "PORT 192,0,2,10,4,1 please", KindPORT, "", ErrMalformed},
		{"PORT trailing comma", "PORT 192,0,2,10,4,1,", KindPORT, "", ErrMalformed},
		{"PORT empty field", "PORT 192,,2,10,4,1", KindPORT, "", ErrMalformed},
		{"PORT space after comma", "PORT 192, 0,2,10,4,1", KindPORT, "", ErrMalformed},
		{"PORT negative", "PORT -1,0,2,10,4,1", KindPORT, "", ErrMalformed},
		{"PORT parenthesised", "PORT (192,0,2,10,4,1)", KindPORT, "", ErrMalformed},
		{"PORT no argument", "PORT", KindPORT, "", ErrMalformed},
		{"PORT only spaces", "PORT    ", KindPORT, "", ErrMalformed},
		{"PORT tab in argument", "PORT 192,0,2,10,4,1\t", KindPORT, "", ErrMalformed},
		{"PORT carriage return left", "PORT 192,0,2,10,4,1\r", KindPORT, "", ErrMalformed},
		{"PORT NUL after", "PORT 192,0,2,10,4,1\x00", KindPORT, "", ErrMalformed},
		{"PORT NUL inside", "PORT 192,0,2,1\x000,4,1", KindPORT, "", ErrMalformed},
		{"PORT NUL in prefix", "\x00PORT 192,0,2,10,4,1", KindNone, "", nil},
		{"PORT IAC in argument", "PORT 192,0,2,10,4,1\xff\xf1", KindPORT, "", ErrMalformed},
		{"PORT IAC before argument", "PORT \xff\xf1192,0,2,10,4,1", KindPORT, "", ErrMalformed},

		// EPRT, valid.
		{"EPRT v4", "EPRT |1|192.0.2.10|1025|", KindEPRT, v4, nil},
		{"EPRT v6", "EPRT |2|2001:db8::1|6446|", KindEPRT, v6, nil},
		{"EPRT v6 full form", "EPRT |2|2001:0db8:0:0:0:0:0:1|6446|", KindEPRT, v6, nil},
		{"EPRT v6 upper case", "EPRT |2|2001:DB8::1|6446|", KindEPRT, v6, nil},
		{"EPRT v6 loopback", "EPRT |2|::1|6446|", KindEPRT, "[::1]:6446", nil},
		{"EPRT v6 embedded v4", "EPRT |2|2001:db8::192.0.2.1|6446|", KindEPRT, "[2001:db8::c000:201]:6446", nil},
		{"EPRT lower case", "eprt |1|192.0.2.10|1025|", KindEPRT, v4, nil},
		{"EPRT bang delimiter", "EPRT !1!192.0.2.10!1025!", KindEPRT, v4, nil},
		{"EPRT tilde delimiter", "EPRT ~2~2001:db8::1~6446~", KindEPRT, v6, nil},
		{"EPRT colon delimiter v4", "EPRT :1:192.0.2.10:1025:", KindEPRT, v4, nil},
		{"EPRT letter delimiter", "EPRT x1x192.0.2.10x1025x", KindEPRT, v4, nil},
		{"EPRT surrounding spaces", "  EPRT   |1|192.0.2.10|1025|   ", KindEPRT, v4, nil},
		{"EPRT port leading zero", "EPRT |1|192.0.2.10|01025|", KindEPRT, v4, nil},
		{"EPRT telnet prefix", "\xff\xf4\xff\xf2EPRT |1|192.0.2.10|1025|", KindEPRT, v4, nil},

		// EPRT, malformed.
		{"EPRT v1 with v6", "EPRT |1|2001:db8::1|6446|", KindEPRT, "", ErrMalformed},
		{"EPRT v2 with v4", "EPRT |2|192.0.2.10|6446|", KindEPRT, "", ErrMalformed},
		{"EPRT v2 with mapped v4", "EPRT |2|::ffff:192.0.2.10|6446|", KindEPRT, "", ErrMalformed},
		{"EPRT family 3", "EPRT |3|192.0.2.10|6446|", KindEPRT, "", ErrMalformed},
		{"EPRT family 01", "EPRT |01|192.0.2.10|6446|", KindEPRT, "", ErrMalformed},
		{"EPRT empty family", "EPRT ||192.0.2.10|6446|", KindEPRT, "", ErrMalformed},
		{"EPRT digit delimiter", "EPRT 111192.0.2.1016446", KindEPRT, "", ErrMalformed},
		{"EPRT DEL delimiter", "EPRT \x7f1\x7f192.0.2.10\x7f6446\x7f", KindEPRT, "", ErrMalformed},
		{"EPRT IAC delimiter", "EPRT \xff1\xff192.0.2.10\xff6446\xff", KindEPRT, "", ErrMalformed},
		{"EPRT mixed delimiters", "EPRT |1!192.0.2.10!6446!", KindEPRT, "", ErrMalformed},
		{"EPRT dot delimiter", "EPRT .1.192.0.2.10.6446.", KindEPRT, "", ErrMalformed},
		{"EPRT port 0", "EPRT |1|192.0.2.10|0|", KindEPRT, "", ErrMalformed},
		{"EPRT port 65536", "EPRT |1|192.0.2.10|65536|", KindEPRT, "", ErrMalformed},
		{"EPRT port 6 digits", "EPRT |1|192.0.2.10|006446|", KindEPRT, "", ErrMalformed},
		{"EPRT port empty", "EPRT |1|192.0.2.10||", KindEPRT, "", ErrMalformed},
		{"EPRT port sign", "EPRT |1|192.0.2.10|+6446|", KindEPRT, "", ErrMalformed},
		{"EPRT missing last delimiter", "EPRT |1|192.0.2.10|6446", KindEPRT, "", ErrMalformed},
		{"EPRT extra delimiter", "EPRT |1|192.0.2.10|6446||", KindEPRT, "", ErrMalformed},
		{"EPRT trailing junk", "EPRT |1|192.0.2.10|6446| x", KindEPRT, "", ErrMalformed},
		{"EPRT v4 leading zero", "EPRT |1|192.0.2.010|6446|", KindEPRT, "", ErrMalformed},
		{"EPRT v4 three parts", "EPRT |1|192.0.2|6446|", KindEPRT, "", ErrMalformed},
		{"EPRT v4 octet 256", "EPRT |1|192.0.2.256|6446|", KindEPRT, "", ErrMalformed},
		{"EPRT v6 zone", "EPRT |2|fe80::1%eth0|6446|", KindEPRT, "", ErrMalformed},
		{"EPRT v6 two ellipses", "EPRT |2|2001::db8::1|6446|", KindEPRT, "", ErrMalformed},
		{"EPRT v6 5 hex digits", "EPRT |2|2001:0db80::1|6446|", KindEPRT, "", ErrMalformed},
		{"EPRT NUL", "EPRT |1|192.0.2.10|6446|\x00", KindEPRT, "", ErrMalformed},
		{"EPRT no argument", "EPRT", KindEPRT, "", ErrMalformed},

		// LPRT.
		{"LPRT v4", "LPRT 4,4,192,0,2,10,2,4,1", KindLPRT, v4, nil},
		{"LPRT v6", "LPRT 6,16,32,1,13,184,0,0,0,0,0,0,0,0,0,0,0,1,2,25,46", KindLPRT, v6, nil},
		{"LPRT lower case spaces", " lprt  4,4,192,0,2,10,2,4,1  ", KindLPRT, v4, nil},
		{"LPRT port 0", "LPRT 4,4,192,0,2,10,2,0,0", KindLPRT, "", ErrMalformed},
		{"LPRT af 4 hal 16", "LPRT 4,16,192,0,2,10,2,4,1", KindLPRT, "", ErrMalformed},
		{"LPRT af 6 hal 4", "LPRT 6,4,192,0,2,10,2,4,1", KindLPRT, "", ErrMalformed},
		{"LPRT af 5", "LPRT 5,4,192,0,2,10,2,4,1", KindLPRT, "", ErrMalformed},
		{"LPRT pal 3", "LPRT 4,4,192,0,2,10,3,0,4,1", KindLPRT, "", ErrMalformed},
		{"LPRT short", "LPRT 4,4,192,0,2,10,2,4", KindLPRT, "", ErrMalformed},
		{"LPRT long", "LPRT 4,4,192,0,2,10,2,4,1,9", KindLPRT, "", ErrMalformed},
		{"LPRT v6 mapped v4", "LPRT 6,16,0,0,0,0,0,0,0,0,0,0,255,255,192,0,2,10,2,4,1", KindLPRT, "", ErrMalformed},
		{"LPRT number over 255", "LPRT 4,4,192,0,2,300,2,4,1", KindLPRT, "", ErrMalformed},
		{"LPRT trailing junk", "LPRT 4,4,192,0,2,10,2,4,1)", KindLPRT, "", ErrMalformed},

		// Not address commands.
		{"PASV", "PASV", KindNone, "", nil},
		{"EPSV ALL", "EPSV ALL", KindNone, "", nil},
		{"AUTH TLS", "AUTH TLS", KindNone, "", nil},
		{"RETR", "RETR PORT 192,0,2,10,4,1", KindNone, "", nil},
		{"verb prefix", "PORTX 192,0,2,10,4,1", KindNone, "", nil},
		{"verb suffix", "XPORT 192,0,2,10,4,1", KindNone, "", nil},
		{"tab after verb", "PORT\t192,0,2,10,4,1", KindNone, "", nil},
		{"empty", "", KindNone, "", nil},
		{"spaces", "    ", KindNone, "", nil},
		{"escaped IAC data before verb", "\xff\xffPORT 192,0,2,10,4,1", KindNone, "", nil},
		{"IAC bad command before verb", "\xff\x01PORT 192,0,2,10,4,1", KindNone, "", nil},
		{"unterminated SB", "\xff\xfa\x18PORT 192,0,2,10,4,1", KindNone, "", nil},
		{"truncated IAC", "\xff", KindNone, "", nil},
		{"binary", "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", KindNone, "", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := NewDialog(Config{})
			f := d.ClientLine([]byte(tt.line))
			checkFound(t, f, tt.kind, tt.addr, tt.err)
			if got := d.Pending(); got != 1 {
				t.Errorf("Pending() = %d after one line, want 1", got)
			}
		})
	}
}

// TestClientLinePassiveCommands checks which lines count as passive
// requests: the reply code that then counts is the proof.
func TestClientLinePassiveCommands(t *testing.T) {
	const (
		r227 = "227 Entering Passive Mode (192,0,2,10,4,1)."
		r228 = "228 Entering Long Passive Mode (4,4,192,0,2,10,2,4,1)"
		r229 = "229 Entering Extended Passive Mode (|||1025|)"
	)
	tests := []struct {
		cmd    string
		reply  string
		usable bool
	}{
		{"PASV", r227, true},
		{"pasv", r227, true},
		{"  Pasv  ", r227, true},
		{"\xff\xf4\xff\xf2PASV", r227, true},
		{"PASV x", r227, false},
		{"PASVX", r227, false},
		{"PASV", r229, false},
		{"PASV", r228, false},
		{"EPSV", r229, true},
		{"epsv 1", r229, true},
		{"EPSV 2", r229, true},
		{"EPSV  2  ", r229, true},
		{"EPSV ALL", r229, false},
		{"epsv all", r229, false},
		{"EPSV 3", r229, false},
		{"EPSV 1 2", r229, false},
		{"EPSV", r227, false},
		{"LPSV", r228, true},
		{"lpsv", r228, true},
		{"LPSV", r227, false},
		{"LPSV 1", r228, false},
		{"NOOP", r227, false},
		{"PORT 192,0,2,10,4,1", r227, false},
	}
	for _, tt := range tests {
		t.Run(tt.cmd+"/"+tt.reply[:3], func(t *testing.T) {
			d := greeted(t)
			d.ClientLine([]byte(tt.cmd))
			f := d.ServerLine([]byte(tt.reply))
			if f.Usable() != tt.usable {
				t.Fatalf("reply usable = %v (Err %v), want %v", f.Usable(), f.Err, tt.usable)
			}
			if !tt.usable && !errors.Is(f.Err, ErrUnsolicited) {
				t.Fatalf("Err = %v, want ErrUnsolicited", f.Err)
			}
		})
	}
}

// greeted returns a dialog that has seen the server greeting.
func greeted(t testing.TB) Dialog {
	t.Helper()
	d := NewDialog(Config{})
	if f := d.ServerLine([]byte("220 ftp.example.net ready")); f.Kind != KindNone {
		t.Fatalf("greeting: %+v", f)
	}
	return d
}

func TestKindString(t *testing.T) {
	got := []string{}
	for k := KindNone; k <= Kind229+1; k++ {
		got = append(got, k.String())
	}
	if want := "none PORT EPRT LPRT 227 228 229 Kind(7)"; strings.Join(got, " ") != want {
		t.Fatalf("Kind strings = %q, want %q", strings.Join(got, " "), want)
	}
	if Client.String() != "client" || Server.String() != "server" || Side(2).String() != "Side(2)" {
		t.Fatal("Side strings wrong")
	}
}

func TestErrorText(t *testing.T) {
	d := NewDialog(Config{})
	f := d.ClientLine([]byte("PORT 192,0,2,10,0,0"))
	if got, want := f.Err.Error(), "alg: malformed address line: PORT: port 0"; got != want {
		t.Fatalf("Err.Error() = %q, want %q", got, want)
	}
	for r := rOK; r < numReasons; r++ {
		if r.String() == "unknown reason" {
			t.Errorf("reason %d has no text", r)
		}
	}
	if numReasons > 32 {
		t.Fatalf("%d reasons do not fit in 5 bits", numReasons)
	}
}
