package alg

import (
	"bytes"
	"errors"
	"net/netip"
	"strings"
	"testing"
)

// The fuzz targets check properties, not examples:
//
//   - no input panics;
//   - a Found is either the zero value, or has a Kind and an error wrapping
//     one of the package sentinels, or is usable;
//   - a usable Found rewrites to any valid same-family target, and the
//     result parses again as the same kind announcing exactly that target,
//     with every byte outside the address text unchanged (EPRT may refuse a
//     target whose text contains its delimiter, and only then);
//   - MayRewrite holds every prefix of a usable line (it is conservative);
//   - the bounded Dialog agrees with an unbounded reference model.
//
// Annotated seeds live in testdata/fuzz/<FuzzName>/; see
// testdata/fuzz/README.md.

// fuzzTarget builds a rewrite target of the family of like from fuzzer
// bytes.
func fuzzTarget(raw []byte, port uint16, v6 bool) netip.AddrPort {
	if port == 0 {
		port = 1
	}
	var b [16]byte
	copy(b[:], raw)
	if !v6 {
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[:4])), port)
	}
	a := netip.AddrFrom16(b)
	if a.Is4In6() {
		b[10] = 0 // not representable on purpose; keep the target valid
		a = netip.AddrFrom16(b)
	}
	return netip.AddrPortFrom(a, port)
}

// checkFound checks the invariants of one Found. before is the dialog
// state before the line, so that re-parsing and MayRewrite see the same
// state.
func checkFoundInvariants(t *testing.T, before Dialog, side Side, f Found, line, raw []byte, port uint16) {
	t.Helper()
	if f.Kind == KindNone {
		// Only the verb fields may be set on a line without an address.
		if f != (Found{Verb: f.Verb, Answers: f.Answers}) {
			t.Fatalf("KindNone with data: %+v", f)
		}
		return
	}
	if f.Err != nil {
		if !errors.Is(f.Err, ErrMalformed) && !errors.Is(f.Err, ErrUnsolicited) && !errors.Is(f.Err, ErrLineTooLong) {
			t.Fatalf("Err %v wraps no sentinel", f.Err)
		}
		if _, err := f.Rewrite(nil, line, netip.MustParseAddrPort("192.0.2.1:1")); err == nil {
			t.Fatal("Rewrite of an unusable Found succeeded")
		}
		return
	}
	if f.Addr.Port() == 0 {
		t.Fatalf("usable %v with port 0", f.Kind)
	}
	if f.start < 0 || f.start >= f.end || f.end > len(line) {
		t.Fatalf("span [%d,%d) outside line of %d bytes", f.start, f.end, len(line))
	}
	a := f.Addr.Addr()
	switch f.Kind {
	case Kind229:
		if a.IsValid() {
			t.Fatalf("229 with address %v", a)
		}
	case KindPORT, Kind227:
		if !a.Is4() {
			t.Fatalf("%v with address %v", f.Kind, a)
		}
	default:
		if !a.Is4() && !(a.Is6() && !a.Is4In6() && a.Zone() == "") {
			t.Fatalf("%v with address %v", f.Kind, a)
		}
	}

	// Conservative MayRewrite: every prefix is held. Long lines are costly
	// to check at every length, so there the check covers the regions
	// where the grammar changes state (the start, around the address, the
	// end) and a sample in between.
	for i := 0; i <= len(line); i++ {
		near := func(x int) bool { return i >= x-8 && i <= x+8 }
		if len(line) > 128 && i > 64 && !near(f.start) && !near(f.end) && !near(len(line)) && i%(len(line)/64+1) != 0 {
			continue
		}
		if !before.MayRewrite(side, line[:i]) {
			t.Fatalf("MayRewrite(%v, %q) = false for a prefix of usable %q", side, line[:i], line)
		}
	}
	if !before.MayRewrite(side, append(line[:len(line):len(line)], '\r')) {
		t.Fatalf("MayRewrite(%v, %q) = false with the CR of CRLF arrived", side, line)
	}

	// Same-family rewrite, then the other family where the kind allows it.
	families := []bool{a.Is6()}
	if f.Kind == KindEPRT || f.Kind == KindLPRT || f.Kind == Kind228 {
		families = append(families, !a.Is6())
	}
	for i, v6 := range families {
		to := fuzzTarget(raw, port, v6)
		out, err := f.Rewrite(make([]byte, 0, 8), line, to)
		if err != nil {
			if f.Kind == KindEPRT && errors.Is(err, ErrBadTarget) && strings.IndexByte(to.Addr().String(), f.delim) >= 0 {
				continue // the delimiter occurs in the new address text
			}
			if i == 0 {
				t.Fatalf("Rewrite(%q, %v): %v", line, to, err)
			}
			t.Fatalf("cross-family Rewrite(%q, %v): %v", line, to, err)
		}
		checkRoundTrip(t, before, side == Client, f, line, out, to)
	}
}

func FuzzClientLine(f *testing.F) {
	for _, s := range []string{
		"PORT 192,0,2,10,4,1", "port 010,000,000,001,004,001", "EPRT |1|192.0.2.10|1025|",
		"EPRT |2|2001:db8::1|6446|", "LPRT 4,4,192,0,2,10,2,4,1", "\xff\xf4\xff\xf2PORT 1,2,3,4,5,6",
		"PORT 1,2,3,4,0,0", "EPRT :1:192.0.2.10:1025:", "PASV", "",
	} {
		f.Add([]byte(s), []byte{198, 51, 100, 7}, uint16(50000))
	}
	f.Fuzz(func(t *testing.T, line, raw []byte, port uint16) {
		d := NewDialog(Config{})
		before := d
		found := d.ClientLine(line)
		if d.Pending() != 1 {
			t.Fatalf("Pending() = %d after one line", d.Pending())
		}
		checkFoundInvariants(t, before, Client, found, line, raw, port)
	})
}

// serverSetups are the dialog states FuzzServerLine feeds a reply into,
// chosen by the fuzzer: which command is outstanding, and whether a
// multi-line reply with the matching code is open.
var serverSetups = []struct{ cmd, multi string }{
	{"PASV", ""}, {"EPSV", ""}, {"LPSV", ""}, {"NOOP", ""},
	{"PASV", "227-first"}, {"EPSV", "229-first"}, {"LPSV", "228-first"}, {"AUTH TLS", ""},
}

func FuzzServerLine(f *testing.F) {
	for i, s := range []string{
		pasvReply, "227 =192,0,2,10,4,1", epsvReply, "228 (4,4,192,0,2,10,2,4,1)",
		"227 Logout.", "234 go", "227 (192,000,002,010,004,001)",
	} {
		f.Add([]byte(s), uint8(i), []byte{198, 51, 100, 7}, uint16(50000))
	}
	f.Fuzz(func(t *testing.T, line []byte, which uint8, raw []byte, port uint16) {
		setup := serverSetups[int(which)%len(serverSetups)]
		d := greeted(t)
		d.ClientLine([]byte(setup.cmd))
		if setup.multi != "" {
			d.ServerLine([]byte(setup.multi))
		}
		before := d
		found := d.ServerLine(line)
		if found.Usable() && wantCmd(found.Kind) != cmdOf(setup.cmd) {
			t.Fatalf("%v usable after %q", found.Kind, setup.cmd)
		}
		checkFoundInvariants(t, before, Server, found, line, raw, port)
	})
}

func cmdOf(verb string) cmd {
	c, _ := parseCommand([]byte(verb))
	return c
}

// model is an unbounded, deliberately naive restatement of the dialog
// rules (slices and strings instead of a ring buffer and bytes) that
// FuzzDialog compares the real Dialog against.
type model struct {
	q        []cmd
	multi    string
	greeted  bool
	opaque   bool
	max      int
	overflow bool // the queue once held more than the real FIFO can
}

func (m *model) client(line []byte, overlong bool) Found {
	if m.opaque {
		return Found{}
	}
	var c cmd
	var f Found
	if overlong || len(line) > m.max {
		k, vc := verbOf(line)
		c = cmdOther
		if vc == cmdAUTH {
			c = cmdAUTH
		}
		if k != KindNone {
			f = Found{Kind: k, Err: newLineError(k, rTooLong)}
		}
	} else {
		c, f = parseCommand(line)
	}
	m.q = append(m.q, c)
	if len(m.q) > queueLen {
		m.overflow = true
	}
	return f
}

func (m *model) server(line []byte, overlong bool) Found {
	if m.opaque {
		return Found{}
	}
	over := overlong || len(line) > m.max
	if over && len(line) < 4 {
		return Found{}
	}
	var code string
	if m.multi != "" {
		if !strings.HasPrefix(string(line), m.multi) || len(line) > 3 && line[3] != ' ' {
			return Found{}
		}
		code, m.multi = m.multi, ""
	} else {
		if len(line) < 3 || line[0] < '1' || line[0] > '6' || !isDigit(line[1]) || !isDigit(line[2]) {
			return Found{}
		}
		switch {
		case len(line) == 3 || line[3] == ' ':
			code = string(line[:3])
		case line[3] == '-':
			m.multi = string(line[:3])
			return Found{}
		default:
			return Found{}
		}
	}
	if code[0] == '1' {
		return Found{}
	}
	answered := cmdNone
	if m.greeted || code != "220" {
		if len(m.q) > 0 {
			answered, m.q = m.q[0], m.q[1:]
		}
	}
	m.greeted = true
	if code == "234" && answered == cmdAUTH {
		m.opaque = true
		return Found{}
	}
	kinds := map[string]Kind{"227": Kind227, "228": Kind228, "229": Kind229}
	wants := map[string]cmd{"227": cmdPASV, "228": cmdLPSV, "229": cmdEPSV}
	k, ok := kinds[code]
	switch {
	case !ok:
		return Found{}
	case answered != wants[code]:
		return Found{Kind: k, Err: newLineError(k, rUnsolicited)}
	case over:
		return Found{Kind: k, Err: newLineError(k, rTooLong)}
	}
	return parseReply(k, line)
}

func errClass(err error) string {
	switch {
	case err == nil:
		return "nil"
	case errors.Is(err, ErrUnsolicited):
		return "unsolicited"
	case errors.Is(err, ErrLineTooLong):
		return "too long"
	case errors.Is(err, ErrMalformed):
		return "malformed"
	}
	return "other: " + err.Error()
}

// FuzzDialog runs a script of lines through a Dialog and the model. The
// script is split at '\n'; the first byte of each piece picks the
// operation (mod 6: client line, client line, server line, server line,
// client overlong, server overlong) and the rest is the line.
func FuzzDialog(f *testing.F) {
	seeds := []string{
		"\x02220 ready\n\x00PASV\n\x02" + pasvReply + "\n\x00EPSV\n\x02" + epsvReply,
		"\x00USER a\n\x00PASV\n\x02220 hi\n\x02331 ok\n\x02" + pasvReply,
		"\x02220 ready\n\x00AUTH TLS\n\x02234 go\n\x00PASV\n\x02" + pasvReply,
		"\x02220 ready\n\x00PASV\n\x02227-a\n\x02227 b\n\x02" + pasvReply,
		"\x02220 ready\n\x04PASV\n\x00PASV\n\x05227 (1,2,3,4,5,6)\n\x02" + pasvReply,
	}
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	const maxLine = 48
	f.Fuzz(func(t *testing.T, script []byte) {
		d := NewDialog(Config{MaxLine: maxLine})
		m := model{max: maxLine}
		for _, piece := range bytes.Split(script, []byte("\n")) {
			if len(piece) == 0 {
				continue
			}
			op, line := piece[0]%6, piece[1:]
			var got, want Found
			var held bool
			var side Side
			switch op {
			case 0, 1:
				side = Client
				held = d.MayRewrite(Client, line)
				got, want = d.ClientLine(line), m.client(line, false)
			case 2, 3:
				side = Server
				held = d.MayRewrite(Server, line)
				got, want = d.ServerLine(line), m.server(line, false)
			case 4:
				got, want = d.ClientOverlong(line), m.client(line, true)
			case 5:
				got, want = d.ServerOverlong(line), m.server(line, true)
			}
			if got.Usable() && op < 4 && !held {
				t.Fatalf("%v line %q usable but MayRewrite was false", side, line)
			}
			if m.overflow {
				// Replies to commands that did not fit are unsolicited in
				// the real dialog: it may only be stricter.
				if m.opaque {
					return
				}
				if got.Usable() && (!want.Usable() || got.Addr != want.Addr) {
					t.Fatalf("op %d %q: real %+v usable, model %+v", op, line, got, want)
				}
				continue
			}
			if got.Kind != want.Kind || errClass(got.Err) != errClass(want.Err) || got.Usable() && got.Addr != want.Addr {
				t.Fatalf("op %d %q: real Kind %v Addr %v Err %v; model Kind %v Addr %v Err %v",
					op, line, got.Kind, got.Addr, got.Err, want.Kind, want.Addr, want.Err)
			}
			if d.Opaque() != m.opaque || d.Pending() != len(m.q) {
				t.Fatalf("op %d %q: real opaque %v pending %d; model %v %d", op, line, d.Opaque(), d.Pending(), m.opaque, len(m.q))
			}
		}
	})
}
