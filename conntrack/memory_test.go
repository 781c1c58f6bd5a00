package conntrack

import (
	"net/netip"
	"runtime"
	"testing"
	"unsafe"

	"github.com/ftpalg/ftpalg/conntrack/seqnum"
)

// TestIdleFlowMemory bounds the heap an idle, logged-in control connection
// costs the engine, its table slot included: the largest part of ftpalg's
// memory per idle connection (the target is 1 KB of RSS at
// 100,000; the Go collector adds about a third to the heap, see
// daemon.gcPercent). Measured on amd64 with Go 1.26: 769 bytes with flows in
// the 640-byte size class and a map keyed by Conn, 570 with partial line
// state out of the flow (partial) and a ConnKey table.
func TestIdleFlowMemory(t *testing.T) {
	if unsafe.Sizeof(uintptr(0)) != 8 {
		t.Skip("figures are for 64-bit platforms")
	}
	// A flow above 480 bytes moves to Go's 512-byte size class, and past
	// 512 to 576: each step is 5-10% of an idle connection's memory.
	if n := unsafe.Sizeof(flow{}); n > 480 {
		t.Errorf("a flow is %d bytes, want at most 480", n)
	}
	const n = 20000
	e := New(Config{VerifyChecksum: true}, benchNAT{})
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := range n {
		login(t, e, netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(10 + i/50000)}), uint16(1024+i%50000)))
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	per := float64(after.HeapAlloc-before.HeapAlloc) / n
	t.Logf("%d idle logged-in connections: %.0f bytes of heap each (flow %d bytes)", e.Len(), per, unsafe.Sizeof(flow{}))
	if e.Len() != n {
		t.Fatalf("%d connections tracked, want %d", e.Len(), n)
	}
	if per > 640 {
		t.Errorf("%.0f bytes of heap per idle connection, want at most 640", per)
	}
	runtime.KeepAlive(e)
}

// login runs a connection from client through its handshake, the greeting
// and an anonymous login, each line in one segment as FTP clients and
// servers send them.
func login(t testing.TB, e *Engine, client netip.AddrPort) {
	t.Helper()
	c, s := seqnum.Value(1000), seqnum.Value(5000)
	send := func(p pkt) {
		t.Helper()
		if res := e.Process(p.build(t), testNow); res.Verdict != Accept {
			t.Fatalf("%v: verdict %v", p, res.Verdict)
		}
	}
	send(pkt{src: client, dst: simServer, seq: c, flags: flagSYN})
	send(pkt{src: simServer, dst: client, seq: s, ack: c + 1, flags: flagSYN | flagACK})
	c, s = c+1, s+1
	send(pkt{src: client, dst: simServer, seq: c, ack: s, flags: flagACK})
	for _, x := range []struct {
		fromClient bool
		line       string
	}{{false, "220 ready\r\n"}, {true, "USER anonymous\r\n"}, {false, "331 password\r\n"}, {true, "PASS a@b\r\n"}, {false, "230 in\r\n"}} {
		if x.fromClient {
			send(pkt{src: client, dst: simServer, seq: c, ack: s, flags: flagACK, payload: []byte(x.line)})
			c = c.Add(seqnum.Size(len(x.line)))
		} else {
			send(pkt{src: simServer, dst: client, seq: s, ack: c, flags: flagACK, payload: []byte(x.line)})
			s = s.Add(seqnum.Size(len(x.line)))
		}
	}
}

// TestPartialLineLetGo checks that a half keeps its partial line state
// only while a line is partial: released (NOOP) or held back (PORT, which
// may be rewritten once whole).
func TestPartialLineLetGo(t *testing.T) {
	e := New(Config{VerifyChecksum: true}, benchNAT{})
	client := netip.MustParseAddrPort("192.0.2.10:40000")
	login(t, e, client)
	f := e.tab.get(Conn{Client: client, Server: simServer})
	if f == nil || f.c.part != nil || f.s.part != nil {
		t.Fatalf("after the login: flow %v", f)
	}
	c := seqnum.Value(1001 + len("USER anonymous\r\nPASS a@b\r\n"))
	s := seqnum.Value(5001 + len("220 ready\r\n331 password\r\n230 in\r\n"))
	for _, tt := range []struct {
		parts [2]string
		held  bool // the first part is held back: the line may be rewritten
	}{{[2]string{"NO", "OP\r\n"}, false}, {[2]string{"PORT 192,0,2,10,", "200,10\r\n"}, true}} {
		parts := tt.parts
		head := e.Process(pkt{src: client, dst: simServer, seq: c, ack: s, flags: flagACK, payload: []byte(parts[0])}.build(t), testNow)
		if f.c.part == nil {
			t.Errorf("%q: no partial line state after its first part (verdict %v)", parts[0]+parts[1], head.Verdict)
		}
		if held := len(f.c.held()); (held > 0) != tt.held {
			t.Errorf("%q: %d bytes held after its first part, want held %v", parts[0]+parts[1], held, tt.held)
		}
		c = c.Add(seqnum.Size(len(parts[0])))
		tail := e.Process(pkt{src: client, dst: simServer, seq: c, ack: s, flags: flagACK, payload: []byte(parts[1])}.build(t), testNow)
		t.Logf("%q: verdicts %v, %v", parts[0]+parts[1], head.Verdict, tail.Verdict)
		c = c.Add(seqnum.Size(len(parts[1])))
		if f.c.part != nil {
			t.Errorf("%q: partial line state kept after the line: %+v", parts[0]+parts[1], *f.c.part)
		}
	}
}
