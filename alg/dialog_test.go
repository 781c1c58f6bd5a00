package alg

import (
	"errors"
	"math"
	"strings"
	"testing"
	"unsafe"
)

// step is one line of a scripted dialog and what it must yield.
type step struct {
	side Side
	line string
	kind Kind
	addr string
	err  error
}

func c(line string) step { return step{side: Client, line: line} }
func s(line string) step { return step{side: Server, line: line} }

// want sets the expected result of a step.
func (st step) want(k Kind, addr string, err error) step {
	st.kind, st.addr, st.err = k, addr, err
	return st
}

func run(t *testing.T, d *Dialog, steps []step) {
	t.Helper()
	for i, st := range steps {
		var f Found
		if st.side == Client {
			f = d.ClientLine([]byte(st.line))
		} else {
			f = d.ServerLine([]byte(st.line))
		}
		if f.Kind != st.kind || (st.err == nil) != (f.Err == nil) || st.err != nil && !errors.Is(f.Err, st.err) {
			t.Fatalf("step %d (%v %q): got Kind %v Err %v, want Kind %v Err %v", i, st.side, st.line, f.Kind, f.Err, st.kind, st.err)
		}
		if f.Usable() && f.Addr != parseWant(t, st.addr) {
			t.Fatalf("step %d (%v %q): Addr %v, want %v", i, st.side, st.line, f.Addr, st.addr)
		}
	}
}

const (
	pasvReply = "227 Entering Passive Mode (192,0,2,10,4,1)."
	pasvAddr  = "192.0.2.10:1025"
	epsvReply = "229 Entering Extended Passive Mode (|||6446|)"
	epsvAddr  = ":6446" // 229: a port without address
)

func TestDialogScripts(t *testing.T) {
	tests := []struct {
		name  string
		steps []step
	}{
		{"plain session", []step{
			s("220 ProFTPD Server ready."),
			c("USER anonymous"), s("331 Anonymous login ok"),
			c("PASS x"), s("230 Anonymous access granted"),
			c("TYPE I"), s("200 Type set to I"),
			c("PASV"), s(pasvReply).want(Kind227, pasvAddr, nil),
			c("RETR f"), s("150 Opening BINARY mode data connection"), s("226 Transfer complete"),
			c("EPSV"), s(epsvReply).want(Kind229, epsvAddr, nil),
			c("LIST"), s("150 Here comes the listing"), s("226 Done"),
			c("PORT 192,0,2,10,4,1").want(KindPORT, pasvAddr, nil), s("200 PORT ok"),
			c("QUIT"), s("221 Goodbye"),
		}},
		{"greeting pops nothing even with a command pipelined before it", []step{
			c("USER anonymous"),
			s("220 ready"),
			c("PASV"),
			s("331 Anonymous login ok"),
			s(pasvReply).want(Kind227, pasvAddr, nil),
		}},
		{"multi-line greeting", []step{
			s("220-Welcome"),
			s("227 Entering Passive Mode (6,6,6,6,6,6) is not the end"),
			s("220 ready"),
			c("PASV"),
			s(pasvReply).want(Kind227, pasvAddr, nil),
		}},
		{"preliminary greeting", []step{
			s("120 Service ready in 1 minute"),
			s("220 ready"),
			c("PASV"),
			s(pasvReply).want(Kind227, pasvAddr, nil),
		}},
		{"picked up mid-stream: first reply is not a greeting", []step{
			c("PASV"),
			s(pasvReply).want(Kind227, pasvAddr, nil),
		}},
		{"220 after the greeting answers REIN", []step{
			s("220 ready"),
			c("REIN"), c("PASV"),
			s("120 wait"), s("220 ready again"),
			s(pasvReply).want(Kind227, pasvAddr, nil),
		}},
		{"multi-line 227: continuation lines are text, final line counts", []step{
			s("220 ready"),
			c("PASV"),
			s("227-Entering Passive Mode (6,6,6,6,6,6)"),
			s("227-(6,6,6,6,6,6)"),
			s(" 227 (6,6,6,6,6,6)"),
			s("228 Entering Long Passive Mode (4,4,6,6,6,6,2,6,6)"),
			s("229 Entering Extended Passive Mode (|||6666|)"),
			s("200 ok"),
			s(pasvReply).want(Kind227, pasvAddr, nil),
			c("NOOP"), s("200 NOOP ok"),
		}},
		{"multi-line 227 ended by bare code", []step{
			s("220 ready"),
			c("PASV"),
			s("227-Entering Passive Mode"),
			s("227").want(Kind227, "", ErrMalformed),
			c("PASV"),
			s(pasvReply).want(Kind227, pasvAddr, nil),
		}},
		{"227 inside another multi-line reply is text and pops nothing", []step{
			s("220 ready"),
			c("PASS secret"), c("PASV"),
			s("230-Message of the day"),
			s(pasvReply),
			s("230 Login successful"),
			s("227 Entering Passive Mode (192,0,2,11,4,1)").want(Kind227, "192.0.2.11:1025", nil),
		}},
		{"pipelined passive commands", []step{
			s("220 ready"),
			c("PASV"), c("EPSV"), c("LPSV"), c("NOOP"), c("PASV"),
			s(pasvReply).want(Kind227, pasvAddr, nil),
			s(epsvReply).want(Kind229, epsvAddr, nil),
			s("228 Entering Long Passive Mode (4,4,192,0,2,10,2,4,1)").want(Kind228, pasvAddr, nil),
			s(pasvReply).want(Kind227, "", ErrUnsolicited),
			s(pasvReply).want(Kind227, pasvAddr, nil),
		}},
		{"pipelined replies out of order are unsolicited", []step{
			s("220 ready"),
			c("PASV"), c("EPSV"),
			s(epsvReply).want(Kind229, "", ErrUnsolicited),
			s(pasvReply).want(Kind227, "", ErrUnsolicited),
		}},
		{"refused PASV then unsolicited 227", []step{
			s("220 ready"),
			c("PASV"), s("500 PASV not understood"),
			s(pasvReply).want(Kind227, "", ErrUnsolicited),
		}},
		{"pure-ftpd 227 Logout after QUIT passes", []step{
			s("220 ready"),
			c("QUIT"),
			s("227-Logout."),
			s("227 Logout.").want(Kind227, "", ErrUnsolicited),
		}},
		{"unsolicited 227 with nothing outstanding", []step{
			s("220 ready"),
			s(pasvReply).want(Kind227, "", ErrUnsolicited),
			c("PASV"),
			s(pasvReply).want(Kind227, pasvAddr, nil),
		}},
		{"ABOR with telnet prefix during transfer", []step{
			s("220 ready"),
			c("PASV"), s(pasvReply).want(Kind227, pasvAddr, nil),
			c("RETR big"), s("150 Opening"),
			c("\xff\xf4\xff\xf2ABOR"),
			s("426 Transfer aborted"), s("226 ABOR ok"),
			c("EPSV"), s(epsvReply).want(Kind229, epsvAddr, nil),
		}},
		{"empty and garbage client lines are commands", []step{
			s("220 ready"),
			c(""), c("\xff\x01junk"), c("PASV"),
			s("500 empty"), s("500 junk"),
			s(pasvReply).want(Kind227, pasvAddr, nil),
		}},
		{"server lines that are not replies pop nothing", []step{
			s("220 ready"),
			c("PASV"),
			s(""), s("hello"), s("99 x"), s("700 x"), s("22"),
			s(pasvReply).want(Kind227, pasvAddr, nil),
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := NewDialog(Config{})
			run(t, &d, tt.steps)
		})
	}
}

func TestDialogAuth(t *testing.T) {
	tests := []struct {
		name   string
		steps  []step
		opaque bool
	}{
		{"AUTH TLS accepted", []step{s("220 ready"), c("AUTH TLS"), s("234 AUTH TLS successful")}, true},
		{"auth ssl lower case", []step{s("220 ready"), c("auth ssl"), s("234 go ahead")}, true},
		{"AUTH multi-line 234", []step{s("220 ready"), c("AUTH TLS"), s("234-go"), s("234 ahead")}, true},
		{"AUTH refused", []step{s("220 ready"), c("AUTH TLS"), s("504 not here")}, false},
		{"AUTH GSSAPI needs ADAT", []step{s("220 ready"), c("AUTH GSSAPI"), s("334 ADAT=")}, false},
		{"234 answering something else", []step{s("220 ready"), c("USER x"), s("234 odd")}, false},
		{"234 with AUTH still queued behind", []step{s("220 ready"), c("USER x"), c("AUTH TLS"), s("234 odd")}, false},
		{"234 as greeting", []step{c("AUTH TLS"), s("220 ready"), s("234 go")}, true},
		{"234 continuation line is text", []step{s("220 ready"), c("AUTH TLS"), s("200-x"), s("234 go"), s("200 x")}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := NewDialog(Config{})
			run(t, &d, tt.steps)
			if d.Opaque() != tt.opaque {
				t.Fatalf("Opaque() = %v, want %v", d.Opaque(), tt.opaque)
			}
			if !tt.opaque {
				return
			}
			// Once opaque, nothing is an address any more.
			d.ClientLine([]byte("PASV"))
			if f := d.ClientLine([]byte("PORT 192,0,2,10,4,1")); f != (Found{}) {
				t.Fatalf("opaque ClientLine = %+v", f)
			}
			if f := d.ServerLine([]byte(pasvReply)); f != (Found{}) {
				t.Fatalf("opaque ServerLine = %+v", f)
			}
			if d.MayRewrite(Client, []byte("PO")) || d.MayRewrite(Server, []byte("22")) {
				t.Fatal("opaque MayRewrite = true")
			}
			if f := d.ClientOverlong([]byte("PORT 1")); f != (Found{}) {
				t.Fatalf("opaque ClientOverlong = %+v", f)
			}
			if f := d.ServerOverlong([]byte("227 (1")); f != (Found{}) {
				t.Fatalf("opaque ServerOverlong = %+v", f)
			}
		})
	}
}

func TestDialogFIFOOverflow(t *testing.T) {
	d := greeted(t)
	for i := 0; i < queueLen; i++ {
		d.ClientLine([]byte("NOOP"))
	}
	d.ClientLine([]byte("PASV")) // does not fit: counted, not remembered
	if got := d.Pending(); got != queueLen+1 {
		t.Fatalf("Pending() = %d, want %d", got, queueLen+1)
	}
	run(t, &d, []step{s("200 NOOP ok")})
	// Room in the queue again, but a command is counted behind it: order
	// demands this one is counted too.
	d.ClientLine([]byte("PASV"))
	for i := 1; i < queueLen; i++ {
		run(t, &d, []step{s("200 NOOP ok")})
	}
	run(t, &d, []step{
		s(pasvReply).want(Kind227, "", ErrUnsolicited), // the first lost PASV: fail closed
		s(pasvReply).want(Kind227, "", ErrUnsolicited), // the second
		s(pasvReply).want(Kind227, "", ErrUnsolicited), // nothing outstanding
		c("PASV"),
		s(pasvReply).want(Kind227, pasvAddr, nil), // back in step
	})
	if got := d.Pending(); got != 0 {
		t.Fatalf("Pending() = %d, want 0", got)
	}
}

func TestDialogDesync(t *testing.T) {
	d := greeted(t)
	for i := 0; i < queueLen+65536; i++ {
		d.ClientLine([]byte("NOOP"))
	}
	for i := 0; i < 10; i++ {
		d.ServerLine([]byte("200 ok"))
	}
	run(t, &d, []step{
		c("PASV"),
		s(pasvReply).want(Kind227, "", ErrUnsolicited),
	})
	if d.MayRewrite(Server, []byte("227")) {
		t.Fatal("MayRewrite after desync = true")
	}
}

func TestDialogOverlong(t *testing.T) {
	long := func(prefix string) string { return prefix + strings.Repeat(" ", 100) }
	cfg := Config{MaxLine: 64}
	t.Run("client line over MaxLine counts as one ordinary command", func(t *testing.T) {
		d := NewDialog(cfg)
		run(t, &d, []step{
			s("220 ready"),
			c(long("PASV")),
			c("PASV"),
			s(pasvReply).want(Kind227, "", ErrUnsolicited),
			s(pasvReply).want(Kind227, pasvAddr, nil),
		})
	})
	t.Run("overlong PORT reports ErrLineTooLong", func(t *testing.T) {
		d := NewDialog(cfg)
		run(t, &d, []step{c(long("PORT 192,0,2,10,4,1")).want(KindPORT, "", ErrLineTooLong)})
		f := d.ClientOverlong([]byte("eprt |1|"))
		checkFound(t, f, KindEPRT, "", ErrLineTooLong)
		f = d.ClientOverlong(nil)
		checkFound(t, f, KindNone, "", nil)
		if got := d.Pending(); got != 3 {
			t.Fatalf("Pending() = %d, want 3", got)
		}
	})
	t.Run("overlong AUTH stays AUTH", func(t *testing.T) {
		d := NewDialog(cfg)
		run(t, &d, []step{s("220 ready"), c(long("AUTH TLS")), s("234 go")})
		if !d.Opaque() {
			t.Fatal("not opaque")
		}
	})
	t.Run("overlong 227 answering PASV", func(t *testing.T) {
		d := NewDialog(cfg)
		run(t, &d, []step{
			s("220 ready"),
			c("PASV"), c("PASV"),
			s(long(pasvReply)).want(Kind227, "", ErrLineTooLong),
			s(pasvReply).want(Kind227, pasvAddr, nil),
		})
	})
	t.Run("overlong unsolicited 227", func(t *testing.T) {
		d := greeted(t)
		f := d.ServerOverlong([]byte("227 Entering"))
		checkFound(t, f, Kind227, "", ErrUnsolicited)
	})
	t.Run("overlong continuation and short heads pop nothing", func(t *testing.T) {
		d := NewDialog(cfg)
		run(t, &d, []step{s("220 ready"), c("PASV"), s("211-Features")})
		for _, head := range []string{long(" x"), long("227 (6,6,6,6,6,6)"), "227"} {
			if f := d.ServerOverlong([]byte(head)); f != (Found{}) {
				t.Fatalf("ServerOverlong(%q) = %+v", head, f)
			}
		}
		run(t, &d, []step{s("211 End"), s(pasvReply).want(Kind227, "", ErrUnsolicited)})
	})
	t.Run("overlong line can end a multi-line reply", func(t *testing.T) {
		d := NewDialog(cfg)
		run(t, &d, []step{s("220 ready"), c("STAT"), c("PASV"), s("211-Status")})
		if f := d.ServerOverlong([]byte(long("211 End"))); f != (Found{}) {
			t.Fatalf("ServerOverlong = %+v", f)
		}
		run(t, &d, []step{s(pasvReply).want(Kind227, pasvAddr, nil)})
	})
	t.Run("MaxLine bounds lines exactly", func(t *testing.T) {
		d := NewDialog(Config{MaxLine: len("PORT 192,0,2,10,4,1")})
		run(t, &d, []step{
			c("PORT 192,0,2,10,4,1").want(KindPORT, pasvAddr, nil),
			c("PORT 192,0,2,10,4,1 ").want(KindPORT, "", ErrLineTooLong),
		})
	})
}

func TestNewDialogConfig(t *testing.T) {
	for _, tt := range []struct {
		max  int
		want int
	}{{0, DefaultMaxLine}, {-1, DefaultMaxLine}, {1, 1}, {100000, 100000},
		// Clamped to what maxLine holds; on 32-bit CPUs (armv7, mips) int
		// itself is the bound.
		{math.MaxInt, int(min(uint64(math.MaxInt), math.MaxUint32))}} {
		d := NewDialog(Config{MaxLine: tt.max})
		if got := d.limit(); got != tt.want {
			t.Errorf("MaxLine %d: limit %d, want %d", tt.max, got, tt.want)
		}
	}
	var zero Dialog
	if zero.limit() != DefaultMaxLine {
		t.Fatalf("zero Dialog limit %d, want %d", zero.limit(), DefaultMaxLine)
	}
	run(t, &zero, []step{c("PASV"), s(pasvReply).want(Kind227, pasvAddr, nil)})
}

func TestDialogSize(t *testing.T) {
	if size := unsafe.Sizeof(Dialog{}); size > 64 {
		t.Fatalf("Dialog is %d bytes; it is per connection, keep it small", size)
	}
	t.Logf("Dialog is %d bytes, Found %d bytes", unsafe.Sizeof(Dialog{}), unsafe.Sizeof(Found{}))
}
