package alg

import (
	"bytes"
	"errors"
	"net/netip"
	"testing"
)

// find runs line through a greeted dialog, after cmd if the line is a
// server reply (cmd != ""), and returns the dialog state before the line
// and what the line yielded.
func find(t testing.TB, cmd, line string) (Dialog, Found) {
	t.Helper()
	d := greeted(t)
	if cmd == "" {
		return d, d.ClientLine([]byte(line))
	}
	d.ClientLine([]byte(cmd))
	before := d
	return before, d.ServerLine([]byte(line))
}

func TestRewrite(t *testing.T) {
	tests := []struct {
		name string
		cmd  string // outstanding command for a server line, "" for a client line
		line string
		to   string
		want string
	}{
		{"PORT lengthening", "", "PORT 10,0,0,1,4,1", "198.51.100.200:50000",
			"PORT 198,51,100,200,195,80"},
		{"PORT shortening", "", "PORT 192,168,100,100,200,200", "203.0.113.1:1024",
			"PORT 203,0,113,1,4,0"},
		{"PORT same length", "", "PORT 10,0,0,1,4,1", "10.0.0.2:1025", "PORT 10,0,0,2,4,1"},
		{"PORT keeps spaces and case", "", "  port   10,0,0,1,4,1  ", "198.51.100.7:1025",
			"  port   198,51,100,7,4,1  "},
		{"PORT keeps padding", "", "PORT 010,000,000,001,004,001", "198.51.100.7:1025",
			"PORT 198,051,100,007,004,001"},
		{"PORT keeps telnet prefix", "", "\xff\xf4\xff\xf2PORT 10,0,0,1,4,1", "198.51.100.7:1025",
			"\xff\xf4\xff\xf2PORT 198,51,100,7,4,1"},
		{"EPRT v4", "", "EPRT |1|10.0.0.1|6446|", "198.51.100.7:50000", "EPRT |1|198.51.100.7|50000|"},
		{"EPRT v6 shortening", "", "EPRT |2|2001:db8:aaaa:bbbb:cccc:dddd:eeee:ffff|65535|", "[2001:db8::7]:21",
			"EPRT |2|2001:db8::7|21|"},
		{"EPRT keeps delimiter", "", "EPRT !1!10.0.0.1!6446!", "198.51.100.7:6446", "EPRT !1!198.51.100.7!6446!"},
		{"EPRT v4 to v6", "", "EPRT |1|10.0.0.1|6446|", "[2001:db8::7]:6446", "EPRT |2|2001:db8::7|6446|"},
		{"EPRT v6 to v4", "", "EPRT ~2~2001:db8::1~6446~ ", "198.51.100.7:6446", "EPRT ~1~198.51.100.7~6446~ "},
		{"LPRT v4", "", "LPRT 4,4,10,0,0,1,2,4,1", "198.51.100.7:50000", "LPRT 4,4,198,51,100,7,2,195,80"},
		{"LPRT v4 to v6", "", "LPRT 4,4,10,0,0,1,2,4,1", "[2001:db8::7]:1025",
			"LPRT 6,16,32,1,13,184,0,0,0,0,0,0,0,0,0,0,0,7,2,4,1"},
		{"LPRT v6 to v4", "", "LPRT 6,16,32,1,13,184,0,0,0,0,0,0,0,0,0,0,0,1,2,25,46", "198.51.100.7:6446",
			"LPRT 4,4,198,51,100,7,2,25,46"},
		{"227 keeps text", "PASV", "227 Entering Passive Mode (10,0,0,1,4,1). Enjoy", "198.51.100.7:50000",
			"227 Entering Passive Mode (198,51,100,7,195,80). Enjoy"},
		{"227 no parentheses", "PASV", "227 =10,0,0,1,4,1", "198.51.100.7:1025", "227 =198,51,100,7,4,1"},
		{"227 shortening", "PASV", "227 Entering Passive Mode (192,168,100,100,200,200)", "10.0.0.1:1",
			"227 Entering Passive Mode (10,0,0,1,0,1)"},
		{"229 lengthening", "EPSV", "229 Entering Extended Passive Mode (|||21|)", "198.51.100.7:65535",
			"229 Entering Extended Passive Mode (|||65535|)"},
		{"229 shortening, address ignored", "EPSV", "229 Entering Extended Passive Mode (!!!65535!)", "[2001:db8::1]:21",
			"229 Entering Extended Passive Mode (!!!21!)"},
		{"228 v4", "LPSV", "228 Entering Long Passive Mode (4,4,10,0,0,1,2,4,1)", "198.51.100.7:1025",
			"228 Entering Long Passive Mode (4,4,198,51,100,7,2,4,1)"},
		{"228 v6 to v4", "LPSV", "228 Long (6,16,32,1,13,184,0,0,0,0,0,0,0,0,0,0,0,1,2,25,46)", "198.51.100.7:6446",
			"228 Long (4,4,198,51,100,7,2,25,46)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before, f := find(t, tt.cmd, tt.line)
			if !f.Usable() {
				t.Fatalf("line not usable: Kind %v Err %v", f.Kind, f.Err)
			}
			to := netip.MustParseAddrPort(tt.to)
			got, err := f.Rewrite(nil, []byte(tt.line), to)
			if err != nil {
				t.Fatalf("Rewrite: %v", err)
			}
			if string(got) != tt.want {
				t.Fatalf("Rewrite = %q, want %q", got, tt.want)
			}
			checkRoundTrip(t, before, tt.cmd == "", f, []byte(tt.line), got, to)
		})
	}
}

// checkRoundTrip checks that out, the rewrite of line (found as f with
// dialog state before), parses again as the same kind announcing to, and
// that the bytes around the address text are unchanged.
func checkRoundTrip(t testing.TB, before Dialog, client bool, f Found, line, out []byte, to netip.AddrPort) {
	t.Helper()
	if len(out) > before.limit() {
		// A rewrite may lengthen a line past MaxLine; the engine never
		// parses its own output, so judge the text, not the limit.
		before.maxLine = uint32(len(out))
	}
	var g Found
	if client {
		g = before.ClientLine(out)
	} else {
		g = before.ServerLine(out)
	}
	want := to
	if f.Kind == Kind229 {
		want = netip.AddrPortFrom(netip.Addr{}, to.Port())
	}
	if g.Kind != f.Kind || g.Err != nil || g.Addr != want {
		t.Fatalf("re-parse of %q: Kind %v Addr %v Err %v, want %v %v", out, g.Kind, g.Addr, g.Err, f.Kind, want)
	}
	if !bytes.Equal(out[:f.start], line[:f.start]) {
		t.Fatalf("bytes before the address changed: %q -> %q", line[:f.start], out[:f.start])
	}
	tail := len(line) - f.end
	if !bytes.Equal(out[len(out)-tail:], line[f.end:]) {
		t.Fatalf("bytes after the address changed: %q -> %q", line[f.end:], out[len(out)-tail:])
	}
}

func TestRewriteErrors(t *testing.T) {
	scoped := netip.AddrPortFrom(netip.MustParseAddr("fe80::1%eth0"), 1025)
	tests := []struct {
		name string
		cmd  string
		line string
		to   netip.AddrPort
		err  error
	}{
		{"PORT to v6", "", "PORT 10,0,0,1,4,1", netip.MustParseAddrPort("[2001:db8::1]:1025"), ErrFamily},
		{"227 to v6", "PASV", pasvReply, netip.MustParseAddrPort("[2001:db8::1]:1025"), ErrFamily},
		{"PORT to mapped v4", "", "PORT 10,0,0,1,4,1", netip.MustParseAddrPort("[::ffff:198.51.100.7]:1025"), ErrFamily},
		{"EPRT to mapped v4", "", "EPRT |1|10.0.0.1|6446|", netip.MustParseAddrPort("[::ffff:198.51.100.7]:1025"), ErrFamily},
		{"LPRT to mapped v4", "", "LPRT 4,4,10,0,0,1,2,4,1", netip.MustParseAddrPort("[::ffff:198.51.100.7]:1025"), ErrFamily},
		{"EPRT to zone", "", "EPRT |2|2001:db8::1|6446|", scoped, ErrFamily},
		{"PORT to port 0", "", "PORT 10,0,0,1,4,1", netip.MustParseAddrPort("198.51.100.7:0"), ErrBadTarget},
		{"229 to port 0", "EPSV", epsvReply, netip.MustParseAddrPort("198.51.100.7:0"), ErrBadTarget},
		{"PORT to invalid", "", "PORT 10,0,0,1,4,1", netip.AddrPortFrom(netip.Addr{}, 1025), ErrBadTarget},
		{"EPRT delimiter clash", "", "EPRT :1:10.0.0.1:6446:", netip.MustParseAddrPort("[2001:db8::1]:1025"), ErrBadTarget},
		{"EPRT hex letter delimiter clash", "", "EPRT a2a::1a6446a", netip.MustParseAddrPort("[2001:db8::a]:1025"), ErrBadTarget},
		{"malformed", "", "PORT 10,0,0,1,0,0", netip.MustParseAddrPort("198.51.100.7:1025"), ErrNoAddress},
		{"unsolicited", "NOOP", pasvReply, netip.MustParseAddrPort("198.51.100.7:1025"), ErrUnsolicited},
		{"not an address line", "", "NOOP", netip.MustParseAddrPort("198.51.100.7:1025"), ErrNoAddress},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, f := find(t, tt.cmd, tt.line)
			dst := []byte("kept")
			got, err := f.Rewrite(dst, []byte(tt.line), tt.to)
			if !errors.Is(err, tt.err) {
				t.Fatalf("Rewrite error = %v, want one wrapping %v", err, tt.err)
			}
			if string(got) != "kept" {
				t.Fatalf("Rewrite changed dst on error: %q", got)
			}
		})
	}
}

// TestRewriteWrongLine checks that a Found is not applied to a line it was
// not found in.
func TestRewriteWrongLine(t *testing.T) {
	_, f := find(t, "", "PORT 10,0,0,1,4,1")
	to := netip.MustParseAddrPort("198.51.100.7:1025")
	for _, line := range []string{
		"",
		"PORT 10,0,0,1",
		"PORT 10,0,0,2,4,1",
		"PORT 10,0,0,1,4,1",
		"PORTX10,0,0,1,4,1",
	} {
		_, err := f.Rewrite(nil, []byte(line), to)
		if line == "PORT 10,0,0,1,4,1" || line == "PORTX10,0,0,1,4,1" {
			// The span still reads the same address: accepted (only the
			// span is checked).
			if err != nil {
				t.Errorf("Rewrite(%q) = %v", line, err)
			}
			continue
		}
		if !errors.Is(err, ErrNoAddress) {
			t.Errorf("Rewrite(%q) error = %v, want ErrNoAddress", line, err)
		}
	}
	_, e := find(t, "", "EPRT |1|10.0.0.1|6446|")
	if _, err := e.Rewrite(nil, []byte("EPRT |1|10.0.0.1|6446!"), to); !errors.Is(err, ErrNoAddress) {
		t.Errorf("EPRT with changed delimiter: %v", err)
	}
	_, p := find(t, "EPSV", epsvReply)
	if _, err := p.Rewrite(nil, []byte("229 Entering Extended Passive Mode (|||6447|)"), to); !errors.Is(err, ErrNoAddress) {
		t.Errorf("229 with changed port: %v", err)
	}
	var zero Found
	if _, err := zero.Rewrite(nil, []byte("PORT 10,0,0,1,4,1"), to); !errors.Is(err, ErrNoAddress) {
		t.Errorf("zero Found: %v", err)
	}
}

// TestNoAllocs checks the hot paths allocate nothing: parsing valid,
// malformed and unsolicited lines, and rewriting into a large enough dst.
func TestNoAllocs(t *testing.T) {
	base := greeted(t)
	lines := []struct {
		cmd, line string
	}{
		{"", "PORT 192,0,2,10,4,1"},
		{"", "EPRT |2|2001:db8::1|6446|"},
		{"", "LPRT 4,4,192,0,2,10,2,4,1"},
		{"", "PORT 192,0,2,10,0,0"},
		{"", "EPRT |2|fe80::1%eth0|6446|"},
		{"", "RETR x"},
		{"PASV", pasvReply},
		{"EPSV", epsvReply},
		{"NOOP", pasvReply},
		{"PASV", "227 Logout."},
	}
	dst := make([]byte, 0, 512)
	to4 := netip.MustParseAddrPort("198.51.100.200:50000")
	to6 := netip.MustParseAddrPort("[2001:db8:1234::5678]:50000")
	for _, l := range lines {
		line := []byte(l.line)
		allocs := testing.AllocsPerRun(100, func() {
			d := base
			var f Found
			if l.cmd == "" {
				f = d.ClientLine(line)
			} else {
				d.ClientLine([]byte(l.cmd))
				f = d.ServerLine(line)
			}
			d.MayRewrite(Client, line)
			d.MayRewrite(Server, line)
			if f.Usable() {
				to := to4
				if f.Addr.Addr().Is6() {
					to = to6
				}
				if _, err := f.Rewrite(dst[:0], line, to); err != nil {
					t.Fatal(err)
				}
			}
		})
		if allocs != 0 {
			t.Errorf("%q: %v allocs per run, want 0", l.line, allocs)
		}
	}
}
