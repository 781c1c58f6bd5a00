package conntrack

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/alg"
	"github.com/ftpalg/ftpalg/conntrack/seqnum"
)

// conn is a hand-driven control connection through an engine.
type conn struct {
	t        *testing.T
	e        *Engine
	nat      *fakeNAT
	cli, srv netip.AddrPort
	cseq     seqnum.Value // client's next sequence number (sender space)
	sseq     seqnum.Value
	events   []Event
	now      time.Time
}

func newConn(t *testing.T, cfg Config, nat *fakeNAT, cli, srv string, cisn, sisn uint32) *conn {
	t.Helper()
	c := &conn{t: t, nat: nat, e: New(cfg, nat), cli: netip.MustParseAddrPort(cli), srv: netip.MustParseAddrPort(srv),
		cseq: seqnum.Value(cisn), sseq: seqnum.Value(sisn)}
	c.send(pkt{src: c.cli, dst: c.srv, seq: c.cseq, flags: flagSYN})
	c.send(pkt{src: c.srv, dst: c.cli, seq: c.sseq, ack: c.cseq.Add(1), flags: flagSYN | flagACK})
	c.cseq, c.sseq = c.cseq.Add(1), c.sseq.Add(1)
	return c
}

// natConn is a connection through a NAT on both sides. Its tests are about
// stream mechanics, so announcements count without a login (login gating
// has tests of its own, and the random sessions log in).
func natConn(t *testing.T) *conn {
	return newConn(t, Config{VerifyChecksum: true, AllowBeforeLogin: true}, &fakeNAT{clientPublic: simClientPublic, serverPublic: simServerPublic},
		"192.0.2.10:40001", "192.0.2.20:21", 1000, 5000)
}

// send runs p through the engine and returns the parsed output, or nil for a drop.
func (c *conn) send(p pkt) *pkt {
	c.t.Helper()
	if c.now.IsZero() {
		c.now = testNow
	}
	out, res := throughAt(c.t, c.e, p.build(c.t), c.now)
	c.events = append(c.events, res.Events...)
	if out == nil {
		return nil
	}
	q := parse(c.t, out)
	return &q
}

// client sends data at the client's current sequence number and advances it.
func (c *conn) client(data string) *pkt {
	c.t.Helper()
	p := c.send(pkt{src: c.cli, dst: c.srv, seq: c.cseq, ack: c.sseq, flags: flagACK, payload: []byte(data)})
	c.cseq = c.cseq.Add(seqnum.Size(len(data)))
	return p
}

func (c *conn) server(data string) *pkt {
	c.t.Helper()
	p := c.send(pkt{src: c.srv, dst: c.cli, seq: c.sseq, ack: c.cseq, flags: flagACK, payload: []byte(data)})
	c.sseq = c.sseq.Add(seqnum.Size(len(data)))
	return p
}

func (c *conn) count(k EventKind) int {
	n := 0
	for _, ev := range c.events {
		if ev.Kind == k {
			n++
		}
	}
	return n
}

func TestPortRewriteAndShift(t *testing.T) {
	c := natConn(t)
	orig, want := "PORT 192,0,2,10,200,11\r\n", "PORT 198,51,100,1,4,211\r\n" // port 51211 -> 1235, one byte longer
	out := c.client(orig)
	if string(out.payload) != want || out.seq != 1001 {
		t.Fatalf("got %v, want %q at 1001", out, want)
	}
	if c.count(EventPinhole) != 1 || c.count(EventRewrite) != 1 {
		t.Fatalf("events: %+v", c.events)
	}
	ph := c.events[0].Pinhole
	if ph.Peer != c.srv.Addr() || ph.Public != netip.MustParseAddrPort("198.51.100.1:1235") || ph.Target != netip.MustParseAddrPort("192.0.2.10:51211") {
		t.Fatalf("pinhole %v", ph)
	}
	// The next client segment is shifted by the delta ...
	if out = c.client("NOOP\r\n"); out.seq != 1001+25 {
		t.Fatalf("NOOP at %d, want %d", out.seq, 1001+25)
	}
	// ... and the server's ACK of everything is shifted back.
	ack := c.send(pkt{src: c.srv, dst: c.cli, seq: c.sseq, ack: 1001 + 25 + 6, flags: flagACK})
	if ack.ack != c.cseq {
		t.Fatalf("server ack %d, want %d in the client's space", ack.ack, c.cseq)
	}
}

func TestSplitLineIsHeldAndRewritten(t *testing.T) {
	c := natConn(t)
	first := c.client("NOOP\r\nPORT 192,0,")
	if string(first.payload) != "NOOP\r\n" {
		t.Fatalf("first segment released %q; the partial PORT line must be held", first.payload)
	}
	second := c.client("2,10,200,10\r\n")
	if string(second.payload) != "PORT 198,51,100,1,200,10\r\n" || second.seq != 1007 {
		t.Fatalf("second segment %v", second)
	}
}

func TestSplitNonAddressLineIsNotHeld(t *testing.T) {
	c := natConn(t)
	if out := c.client("RETR some-"); out != nil && string(out.payload) != "RETR some-" {
		t.Fatalf("released %q", out.payload)
	}
	if out := c.client("file\r\n"); string(out.payload) != "file\r\n" {
		t.Fatalf("released %q", out.payload)
	}
}

// A sender that only retransmits the held bytes after its retransmission
// timeout is waiting for an ACK (Nagle): the line is released unchanged and
// reported, never stalled. A copy that arrives sooner is a network
// duplicate and is held like the original.
func TestStalledSenderReleasesUnchanged(t *testing.T) {
	c := natConn(t)
	start := c.cseq
	if out := c.client("PORT 192,0,2,"); len(out.payload) != 0 {
		t.Fatalf("held part released: %q", out.payload)
	}
	retransmit := pkt{src: c.cli, dst: c.srv, seq: start, ack: c.sseq, flags: flagACK, payload: []byte("PORT 192,0,2,")}
	c.now = testNow.Add(time.Millisecond)
	if out := c.send(retransmit); len(out.payload) != 0 {
		t.Fatalf("a network duplicate released the held bytes: %v", out)
	}
	c.now = testNow.Add(250 * time.Millisecond)
	out := c.send(retransmit)
	if string(out.payload) != "PORT 192,0,2," || out.seq != start {
		t.Fatalf("retransmission of held bytes after an RTO: %v", out)
	}
	out = c.client("10,200,10\r\n")
	if string(out.payload) != "10,200,10\r\n" {
		t.Fatalf("rest of a released line must pass unchanged, got %q", out.payload)
	}
	var reason error
	for _, ev := range c.events {
		if ev.Kind == EventRefusal {
			reason = ev.Reason
		}
	}
	if !errors.Is(reason, ErrSplit) || c.count(EventPinhole) != 0 {
		t.Fatalf("want an ErrSplit refusal and no pinhole, got %+v", c.events)
	}
}

func TestGapIsDropped(t *testing.T) {
	c := natConn(t)
	if out := c.send(pkt{src: c.cli, dst: c.srv, seq: c.cseq.Add(10), ack: c.sseq, flags: flagACK, payload: []byte("x\r\n")}); out != nil {
		t.Fatalf("a segment after a hole must be dropped until the hole is filled, got %v", out)
	}
}

// A retransmission that cuts through a rewritten line gets the same bytes
// at the same receiver positions as the first transmission.
func TestRetransmissionReplaysRewrite(t *testing.T) {
	c := natConn(t)
	first := c.client("USER a\r\nPORT 192,0,2,10,200,10\r\nNOOP\r\n")
	for _, cut := range [][2]int{{0, 5}, {3, 20}, {8, 15}, {20, 36}, {30, 38}, {0, 38}} {
		re := c.send(pkt{src: c.cli, dst: c.srv, seq: seqnum.Value(1001 + cut[0]), ack: c.sseq, flags: flagACK,
			payload: []byte("USER a\r\nPORT 192,0,2,10,200,10\r\nNOOP\r\n"[cut[0]:cut[1]])})
		off := int(re.seq - first.seq)
		if off < 0 || off+len(re.payload) > len(first.payload) || !bytes.Equal(re.payload, first.payload[off:off+len(re.payload)]) {
			t.Fatalf("retransmission %v of %v: got %v, not a slice of the first transmission %q", cut, cut, re, first.payload)
		}
	}
	if c.count(EventPinhole) != 1 {
		t.Fatalf("retransmissions must not open pinholes again: %d", c.count(EventPinhole))
	}
}

func TestSACKMappedBack(t *testing.T) {
	c := natConn(t)
	c.client("PORT 192,0,2,10,200,11\r\n") // 24 bytes -> 25
	c.client("NOOP\r\n")                   // client bytes [1025,1031) -> receiver [1026,1032)
	out := c.send(pkt{src: c.srv, dst: c.cli, seq: c.sseq, ack: 1001, flags: flagACK,
		sacks: [][2]seqnum.Value{{1026, 1032}, {1010, 1020}}})
	if out.ack != 1001 {
		t.Fatalf("ack %d", out.ack)
	}
	// The block inside the rewritten line snaps inward to nothing of it.
	want := [][2]seqnum.Value{{1025, 1031}, {1023, 1001}}
	if len(out.sacks) != 2 || out.sacks[0] != want[0] || out.sacks[1] != want[1] {
		t.Fatalf("sacks %v, want %v", out.sacks, want)
	}
}

// A FIN occupies a sequence number: its ACK is valid, with and without data
// in the FIN segment, before and after a rewrite.
func TestFINAcknowledged(t *testing.T) {
	for _, data := range []string{"", "QUIT\r\n"} {
		c := natConn(t)
		c.client("PORT 192,0,2,10,200,11\r\n")
		fin := c.send(pkt{src: c.cli, dst: c.srv, seq: c.cseq, ack: c.sseq, flags: flagFIN | flagACK, payload: []byte(data)})
		end := fin.seq.Add(seqnum.Size(len(data)) + 1)
		if out := c.send(pkt{src: c.srv, dst: c.cli, seq: c.sseq, ack: end, flags: flagACK}); out == nil {
			t.Fatalf("ACK of the FIN (data %q) dropped", data)
		} else if want := c.cseq.Add(seqnum.Size(len(data)) + 1); out.ack != want {
			t.Fatalf("ACK of the FIN mapped to %d, want %d", out.ack, want)
		}
	}
}

// The segments that can arrive out of order with the stream's own end and
// start: none may be moved into a hole, and the connection's offsets must
// stay right for each.
func TestEndAndStartOutOfOrder(t *testing.T) {
	t.Run("bare FIN beyond a hole is dropped, then passes after the lost bytes", func(t *testing.T) {
		c := natConn(t)
		c.client("PORT 192,0,2,10,200,11\r\n") // one byte longer: offsets apply
		lost := c.cseq
		c.cseq = c.cseq.Add(6) // "QUIT\r\n" lost before the engine
		if out := c.send(pkt{src: c.cli, dst: c.srv, seq: c.cseq, ack: c.sseq, flags: flagFIN | flagACK}); out != nil {
			t.Fatalf("a FIN beyond a hole passed as %v: the receiver's stream would end at the hole", out)
		}
		if out := c.send(pkt{src: c.cli, dst: c.srv, seq: lost, ack: c.sseq, flags: flagACK, payload: []byte("QUIT\r\n")}); out == nil || out.seq != lost.Add(1) {
			t.Fatalf("the retransmitted bytes: %v, want them at %d", out, lost.Add(1))
		}
		fin := c.send(pkt{src: c.cli, dst: c.srv, seq: c.cseq, ack: c.sseq, flags: flagFIN | flagACK})
		if fin == nil || fin.seq != c.cseq.Add(1) {
			t.Fatalf("the FIN again: %v, want it at %d", fin, c.cseq.Add(1))
		}
		if out := c.send(pkt{src: c.srv, dst: c.cli, seq: c.sseq, ack: c.cseq.Add(2), flags: flagACK}); out == nil || out.ack != c.cseq.Add(1) {
			t.Fatalf("the ACK of the FIN: %v, want ack %d", out, c.cseq.Add(1))
		}
	})
	t.Run("RST and pure ACK beyond a hole keep their own position", func(t *testing.T) {
		c := natConn(t)
		c.client("PORT 192,0,2,10,200,11\r\n")
		at := c.cseq.Add(6)
		for _, fl := range []uint8{flagACK, flagRST | flagACK} {
			if out := c.send(pkt{src: c.cli, dst: c.srv, seq: at, ack: c.sseq, flags: fl}); out == nil || out.seq != at.Add(1) {
				t.Fatalf("flags %#x beyond a hole: %v, want it at %d", fl, out, at.Add(1))
			}
		}
	})
	t.Run("bare FIN after held bytes releases them with it", func(t *testing.T) {
		c := natConn(t)
		if out := c.client("PORT 192,0,2"); out == nil || len(out.payload) != 0 {
			t.Fatalf("partial PORT line not held: %v", out)
		}
		fin := c.send(pkt{src: c.cli, dst: c.srv, seq: c.cseq, ack: c.sseq, flags: flagFIN | flagACK})
		if fin == nil || string(fin.payload) != "PORT 192,0,2" || fin.flags&flagFIN == 0 || fin.seq != 1001 {
			t.Fatalf("FIN after held bytes: %v, want them released with the FIN at 1001", fin)
		}
		if out := c.send(pkt{src: c.srv, dst: c.cli, seq: c.sseq, ack: c.cseq.Add(1), flags: flagACK}); out == nil {
			t.Fatal("the ACK of the held bytes and the FIN dropped")
		}
	})
	t.Run("a late duplicate SYN is not a new connection", func(t *testing.T) {
		c := natConn(t)
		c.client("PORT 192,0,2,10,200,11\r\n")
		c.send(pkt{src: c.cli, dst: c.srv, seq: 1000, flags: flagSYN})
		if c.count(EventFlowEnd) != 0 {
			t.Fatalf("a duplicate SYN ended the connection: %+v", c.events)
		}
		want := c.cseq.Add(1) // one byte longer after the PORT rewrite
		if out := c.client("NOOP\r\n"); out == nil || out.seq != want {
			t.Fatalf("the offset was lost: %v", out)
		}
		c.send(pkt{src: c.cli, dst: c.srv, seq: 777777, flags: flagSYN})
		if c.count(EventFlowEnd) != 1 {
			t.Fatalf("a SYN with a new ISN must start a new connection: %+v", c.events)
		}
	})
	t.Run("a shifted connection stays tracked for TIME_WAIT", func(t *testing.T) {
		c := natConn(t)
		c.client("PORT 192,0,2,10,200,11\r\n")
		c.send(pkt{src: c.cli, dst: c.srv, seq: c.cseq, ack: c.sseq, flags: flagFIN | flagACK})
		c.send(pkt{src: c.srv, dst: c.cli, seq: c.sseq, ack: c.cseq.Add(2), flags: flagFIN | flagACK})
		if ev := c.e.Expire(testNow.Add(time.Minute)); len(ev) != 0 {
			t.Fatalf("forgotten a minute after both FINs: %+v", ev)
		}
		if ev := c.e.Expire(testNow.Add(121 * time.Second)); len(ev) != 1 {
			t.Fatalf("still tracked after TIME_WAIT: %+v", ev)
		}
	})
}

func TestInvalidAckDropped(t *testing.T) {
	c := natConn(t)
	c.client("NOOP\r\n")
	if out := c.send(pkt{src: c.srv, dst: c.cli, seq: c.sseq, ack: c.cseq.Add(100), flags: flagACK}); out != nil {
		t.Fatalf("an ACK of bytes never sent must be dropped, got %v", out)
	}
}

func TestRefusals(t *testing.T) {
	tests := []struct {
		name   string
		line   string
		server bool
		reason error
	}{
		{"bounce to third host", "PORT 203,0,113,99,200,10\r\n", false, ErrBounce},
		{"privileged port", "PORT 192,0,2,10,0,22\r\n", false, ErrLowPort},
		{"EPRT foreign", "EPRT |1|198.51.100.77|5000|\r\n", false, ErrBounce},
		{"unsolicited 227", "227 Entering Passive Mode (192,0,2,20,200,10).\r\n", true, alg.ErrUnsolicited},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := natConn(t)
			var out *pkt
			if tt.server {
				out = c.server(tt.line)
			} else {
				out = c.client(tt.line)
			}
			if string(out.payload) != tt.line {
				t.Fatalf("refused line changed: %q", out.payload)
			}
			if c.count(EventPinhole) != 0 || c.count(EventRefusal) != 1 || !errors.Is(c.events[0].Reason, tt.reason) {
				t.Fatalf("events %+v, want one refusal %v", c.events, tt.reason)
			}
		})
	}
}

func TestPassiveAnswersOnly(t *testing.T) {
	c := natConn(t)
	c.client("PASV\r\n")
	out := c.server("227 Entering Passive Mode (192,0,2,20,200,10).\r\n")
	if string(out.payload) != "227 Entering Passive Mode (203,0,113,7,200,10).\r\n" {
		t.Fatalf("227 %q", out.payload)
	}
	out = c.server("227 Logout.\r\n")
	if string(out.payload) != "227 Logout.\r\n" {
		t.Fatalf("227 Logout %q", out.payload)
	}
}

// Without NAT nothing is rewritten, and a pinhole is still opened.
func TestRoutedIPv6EPSV(t *testing.T) {
	c := newConn(t, Config{VerifyChecksum: true, AllowBeforeLogin: true}, &fakeNAT{}, "[2001:db8:1::10]:40001", "[2001:db8:2::20]:21", 7, 9)
	c.client("EPSV\r\n")
	out := c.server("229 Entering Extended Passive Mode (|||50000|)\r\n")
	if string(out.payload) != "229 Entering Extended Passive Mode (|||50000|)\r\n" {
		t.Fatalf("%q", out.payload)
	}
	if c.count(EventRewrite) != 0 || c.count(EventPinhole) != 1 {
		t.Fatalf("events %+v", c.events)
	}
	ph := c.events[0].Pinhole
	if ph.Peer != c.cli.Addr() || ph.Public != netip.MustParseAddrPort("[2001:db8:2::20]:50000") || ph.Target != ph.Public {
		t.Fatalf("pinhole %v", ph)
	}
}

func TestNeedLiberalOnce(t *testing.T) {
	c := natConn(t)
	c.client("PORT 192,0,2,10,200,11\r\n")
	c.client("PORT 192,0,2,10,200,14\r\n")
	if n := c.count(EventLiberal); n != 1 {
		t.Fatalf("%d liberal events, want one", n)
	}
}

func TestLifecycle(t *testing.T) {
	c := natConn(t)
	c.client("NOOP\r\n")
	if c.e.Len() != 1 {
		t.Fatal("not tracked")
	}
	c.send(pkt{src: c.cli, dst: c.srv, seq: c.cseq, ack: c.sseq, flags: flagRST | flagACK})
	if ev := c.e.Expire(testNow.Add(time.Minute)); len(ev) != 1 || ev[0].Kind != EventFlowEnd || c.e.Len() != 0 {
		t.Fatalf("after RST and close timeout: %+v, %d tracked", ev, c.e.Len())
	}
	// Idle expiry and the table cap.
	e := New(Config{MaxFlows: 2, IdleTimeout: time.Hour}, &fakeNAT{})
	for i := range 3 {
		p := pkt{src: netip.AddrPortFrom(simClient.Addr(), uint16(40000+i)), dst: simServer, seq: 1, flags: flagSYN}
		res := e.Process(p.build(t), testNow)
		if i == 2 && (len(res.Events) != 2 || !errors.Is(res.Events[0].Reason, ErrTableFull) || res.Events[1].Kind != EventFlowEnd) {
			t.Fatalf("eviction events %+v", res.Events)
		}
	}
	if e.Len() != 2 || e.Stats().Evicted != 1 {
		t.Fatalf("cap not enforced: %d tracked", e.Len())
	}
	if ev := e.Expire(testNow.Add(2 * time.Hour)); len(ev) != 2 || e.Len() != 0 {
		t.Fatalf("idle expiry: %+v", ev)
	}
}

// The incremental checksum update must agree with a full recompute.
func TestIncrementalChecksumMatchesFull(t *testing.T) {
	for _, src := range []string{"192.0.2.10:40001", "[2001:db8:1::10]:40001"} {
		a := netip.MustParseAddrPort(src)
		b := netip.AddrPortFrom(a.Addr().Prev(), 21)
		for i := range 200 {
			p := pkt{src: a, dst: b, seq: seqnum.Value(i * 7919), ack: seqnum.Value(i * 104729), flags: flagACK,
				payload: []byte(strings.Repeat("x", i%37)), sacks: [][2]seqnum.Value{{seqnum.Value(i), seqnum.Value(i * 3)}}}
			raw := p.build(t)
			var s segment
			if err := newDecoder().decode(raw, &s, true); err != nil {
				t.Fatal(err)
			}
			e := New(Config{}, &fakeNAT{})
			nseq, nack := seqnum.Value(0xfffffff0-uint32(i)), seqnum.Value(uint32(i)*31)
			sacks := [maxSACKs][2]seqnum.Value{{nseq, nack}}
			got := e.patchNumbers(raw, &s, nseq, nack, &sacks, true)
			full := pkt{src: a, dst: b, seq: nseq, ack: nack, flags: flagACK, payload: p.payload, sacks: [][2]seqnum.Value{{nseq, nack}}}.build(t)
			if !bytes.Equal(got, full) {
				t.Fatalf("incremental %x\nfull        %x", got, full)
			}
			if binary.BigEndian.Uint16(got[s.tcpOff+tcpSumOff:]) != tcpChecksum(a.Addr(), b.Addr(), got[s.tcpOff:]) {
				t.Fatal("checksum disagrees with tcpChecksum")
			}
		}
	}
}

func TestBadChecksumDropped(t *testing.T) {
	c := natConn(t)
	raw := pkt{src: c.cli, dst: c.srv, seq: c.cseq, ack: c.sseq, flags: flagACK, payload: []byte("NOOP\r\n")}.build(t)
	raw[len(raw)-1] ^= 0xff
	if res := c.e.Process(raw, testNow); res.Verdict != Drop {
		t.Fatalf("verdict %v", res.Verdict)
	}
}

// A line that grows past the limit is reported once, when it does, even if
// its end never comes; its bytes pass untouched.
func TestLongLineReportedOnce(t *testing.T) {
	c := newConn(t, Config{MaxLine: 64, AllowBeforeLogin: true}, &fakeNAT{clientPublic: simClientPublic}, "192.0.2.10:40001", "198.51.100.20:21", 1, 1)
	chunk := strings.Repeat("A", 40)
	for range 5 {
		if out := c.client(chunk); string(out.payload) != chunk {
			t.Fatalf("long line bytes changed: %q", out.payload)
		}
	}
	if c.count(EventRefusal) != 1 || !errors.Is(c.events[0].Reason, alg.ErrLineTooLong) {
		t.Fatalf("events %+v, want one ErrLineTooLong", c.events)
	}
	c.client("\r\nPORT 192,0,2,10,200,11\r\n" + strings.Repeat("B", 100) + "\r\n")
	if c.count(EventRefusal) != 2 || c.count(EventPinhole) != 1 {
		t.Fatalf("after the long line: %+v", c.events)
	}
}

func TestUntrackedPassUntouched(t *testing.T) {
	e := New(Config{}, &fakeNAT{})
	for _, raw := range [][]byte{
		nil, {0x45}, {0x60, 0, 0}, bytes.Repeat([]byte{0x45}, 60),
		pkt{src: simClient, dst: netip.MustParseAddrPort("192.0.2.20:80"), seq: 1, flags: flagSYN}.build(t),
	} {
		if res := e.Process(raw, testNow); res.Verdict != Accept {
			t.Fatalf("verdict %v for %x", res.Verdict, raw)
		}
	}
}

func loginConn(t *testing.T, cfg Config) *conn {
	c := newConn(t, cfg, &fakeNAT{clientPublic: simClientPublic}, "192.0.2.10:40001", "198.51.100.20:21", 1000, 5000)
	c.server("220 ready\r\n")
	return c
}

func (c *conn) login() {
	c.client("USER anonymous\r\n")
	c.server("331 Please specify the password.\r\n")
	c.client("PASS guest\r\n")
	c.server("230 Login successful.\r\n")
}

// Nothing opens before the server accepted a login: lines smuggled into
// port 21 (NAT slipstreaming) arrive before any reply could.
func TestLoginRequired(t *testing.T) {
	c := loginConn(t, Config{})
	if out := c.client("USER x\r\nPASS y\r\nPORT 192,0,2,10,200,10\r\n"); !bytes.Contains(out.payload, []byte("PORT 192,0,2,10,200,10")) {
		t.Fatalf("PORT before login changed: %q", out.payload)
	}
	if c.count(EventPinhole) != 0 || !errors.Is(c.events[len(c.events)-1].Reason, ErrNotLoggedIn) {
		t.Fatalf("events %+v", c.events)
	}
	c.server("331 pw\r\n230 ok\r\n")
	c.client("PORT 192,0,2,10,200,10\r\n")
	c.server("200 ok\r\n")
	c.events = nil
	c.client("PORT 192,0,2,10,200,11\r\n")
	if c.count(EventPinhole) != 1 {
		t.Fatalf("after login: events %+v", c.events)
	}

	// A connection first seen after its SYN (a restart) has an unknown
	// login state and is not held to it.
	e := New(Config{}, &fakeNAT{clientPublic: simClientPublic})
	res := e.Process(pkt{src: simClient, dst: simServer, seq: 77, ack: 1, flags: flagACK, payload: []byte("NOOP\r\nPORT 192,0,2,10,200,10\r\n")}.build(t), testNow)
	if len(res.Events) != 3 || res.Events[0].Kind != EventPinhole || res.Events[2].Kind != EventLiberal {
		t.Fatalf("picked-up connection: %+v", res.Events)
	}
}

func TestTLSPolicy(t *testing.T) {
	t.Run("refuse", func(t *testing.T) {
		c := loginConn(t, Config{TLS: TLSRefuse})
		// A split AUTH is held and rewritten whole.
		if out := c.client("AU"); len(out.payload) != 0 {
			t.Fatalf("partial AUTH released: %q", out.payload)
		}
		if out := c.client("TH TLS\r\n"); string(out.payload) != refusedAuth+"\r\n" {
			t.Fatalf("AUTH sent to the server as %q", out.payload)
		}
		if out := c.server("504 Unknown AUTH type.\r\n"); string(out.payload) != refusedReply+"\r\n" {
			t.Fatalf("client told %q", out.payload)
		}
		if !errors.Is(c.events[0].Reason, ErrTLSRefused) || c.count(EventLiberal) != 1 {
			t.Fatalf("events %+v: want the refusal and one liberal event (the AUTH line grew)", c.events)
		}
		// The session goes on in plain text, addresses still rewritten.
		c.login()
		c.events = nil
		if out := c.client("PORT 192,0,2,10,200,11\r\n"); string(out.payload) != "PORT 198,51,100,1,4,211\r\n" {
			t.Fatalf("after refused AUTH: %q", out.payload)
		}
	})
	t.Run("pass", func(t *testing.T) {
		c := loginConn(t, Config{})
		if out := c.client("AUTH TLS\r\n"); string(out.payload) != "AUTH TLS\r\n" {
			t.Fatalf("AUTH changed: %q", out.payload)
		}
		c.server("234 Proceed with negotiation.\r\n")
		if c.count(EventRefusal) != 1 || !errors.Is(c.events[0].Reason, ErrTLS) || c.e.Stats().TLS != 1 {
			t.Fatalf("events %+v", c.events)
		}
		// TLS records are opaque: nothing is parsed, nothing opens.
		c.client("\x16\x03\x01\x00\x05PORT 192,0,2,10,200,10\r\n")
		if c.count(EventPinhole) != 0 {
			t.Fatal("a PORT inside TLS bytes opened a pinhole")
		}
	})
}

func TestAdmitLimit(t *testing.T) {
	limit := errors.New("3 pending for 192.0.2.10")
	cfg := Config{AllowBeforeLogin: true, Admit: func(uint64, Conn) error { return limit }}
	c := newConn(t, cfg, &fakeNAT{clientPublic: simClientPublic}, "192.0.2.10:40001", "198.51.100.20:21", 1000, 5000)
	if out := c.client("PORT 192,0,2,10,200,11\r\n"); string(out.payload) != "PORT 192,0,2,10,200,11\r\n" {
		t.Fatalf("refused PORT changed: %q", out.payload)
	}
	if c.count(EventPinhole) != 0 || !errors.Is(c.events[0].Reason, ErrLimit) || !errors.Is(c.events[0].Reason, limit) {
		t.Fatalf("events %+v", c.events)
	}
}

// TestShardSessionIDs checks that engines side by side (Config.Shard of
// Shards) number their connections without overlap, and that one engine
// counts 1, 2, 3 as before.
func TestShardSessionIDs(t *testing.T) {
	ids := func(cfg Config) []uint64 {
		e := New(cfg, &fakeNAT{})
		var out []uint64
		for i := range 3 {
			cli := netip.AddrPortFrom(netip.MustParseAddr("192.0.2.10"), uint16(40000+i))
			throughAt(t, e, pkt{src: cli, dst: netip.MustParseAddrPort("198.51.100.20:21"), seq: 1, flags: flagSYN}.build(t), testNow)
		}
		e.Flows(func(f FlowInfo) { out = append(out, f.Session) })
		slices.Sort(out)
		return out
	}
	if got := ids(Config{}); !slices.Equal(got, []uint64{1, 2, 3}) {
		t.Errorf("one engine: session IDs %v, want [1 2 3]", got)
	}
	seen := map[uint64]int{}
	for shard := range uint64(3) {
		for _, id := range ids(Config{Shard: shard, Shards: 3}) {
			if id%3 != shard {
				t.Errorf("shard %d of 3 numbered a session %d", shard, id)
			}
			seen[id]++
		}
	}
	for id, n := range seen {
		if n > 1 {
			t.Errorf("session ID %d used by %d shards", id, n)
		}
	}
	if len(seen) != 9 {
		t.Errorf("%d distinct IDs over 3 shards of 3 connections, want 9", len(seen))
	}
}
