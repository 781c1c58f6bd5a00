package conntrack

import (
	"net/netip"
	"testing"

	"github.com/ftpalg/ftpalg/alg"
	"github.com/ftpalg/ftpalg/conntrack/seqnum"
)

func TestPathOf(t *testing.T) {
	for _, tt := range []struct {
		hook Hook
		from alg.Side
		want Path
	}{
		{HookForward, alg.Client, PathForward},
		{HookForward, alg.Server, PathForward},
		{HookLocalIn, alg.Client, PathLocalServer},  // a command arriving for the local server
		{HookLocalOut, alg.Server, PathLocalServer}, // the local server's reply leaving
		{HookLocalOut, alg.Client, PathLocalClient}, // the local client's command leaving
		{HookLocalIn, alg.Server, PathLocalClient},  // a reply arriving for the local client
		{Hook(9), alg.Client, PathForward},          // unknown hooks never claim a local end
	} {
		if got := pathOf(tt.hook, tt.from); got != tt.want {
			t.Errorf("pathOf(%v, %v) = %v, want %v", tt.hook, tt.from, got, tt.want)
		}
	}
	for p, s := range map[Path]string{PathForward: "forward", PathLocalServer: "local-server", PathLocalClient: "local-client", Path(7): "path(7)"} {
		if p.String() != s {
			t.Errorf("Path(%d).String() = %q, want %q", p, p.String(), s)
		}
	}
}

// hookConn drives one control connection whose packets are queued at the
// hooks a local path uses: the client's at cliHook, the server's at srvHook.
type hookConn struct {
	t                *testing.T
	e                *Engine
	cli, srv         netip.AddrPort
	cseq, sseq       seqnum.Value
	cliHook, srvHook Hook
	events           []Event
}

func (c *hookConn) send(fromClient bool, flags uint8, data string) pkt {
	c.t.Helper()
	p := pkt{src: c.srv, dst: c.cli, seq: c.sseq, ack: c.cseq, flags: flags, payload: []byte(data)}
	hook := c.srvHook
	if fromClient {
		p = pkt{src: c.cli, dst: c.srv, seq: c.cseq, ack: c.sseq, flags: flags, payload: []byte(data)}
		hook = c.cliHook
	}
	in := p.build(c.t)
	res := c.e.ProcessAt(in, hook, testNow)
	c.events = append(c.events, res.Events...)
	out := in
	switch res.Verdict {
	case AcceptModified:
		out = append([]byte(nil), res.Packet...)
	case Drop:
		c.t.Fatalf("dropped %v", p)
	}
	n := seqnum.Size(len(data))
	if flags&flagSYN != 0 {
		n++
	}
	if fromClient {
		c.cseq = c.cseq.Add(n)
	} else {
		c.sseq = c.sseq.Add(n)
	}
	return parse(c.t, out)
}

func newHookConn(t *testing.T, nat *fakeNAT, cli, srv string, cliHook, srvHook Hook) *hookConn {
	c := &hookConn{t: t, e: New(Config{VerifyChecksum: true}, nat), cli: netip.MustParseAddrPort(cli), srv: netip.MustParseAddrPort(srv),
		cseq: 7000, sseq: 9000, cliHook: cliHook, srvHook: srvHook}
	c.send(true, flagSYN, "")
	c.send(false, flagSYN|flagACK, "")
	c.send(false, flagACK, "220 ready\r\n")
	c.send(true, flagACK, "USER ftp\r\n")
	c.send(false, flagACK, "331 pass\r\n")
	c.send(true, flagACK, "PASS x\r\n")
	c.send(false, flagACK, "230 ok\r\n")
	return c
}

// The same parser and policy run on the local paths; every event and the
// connection's FlowInfo name the path.
func TestLocalPaths(t *testing.T) {
	t.Run("local server published through DNAT", func(t *testing.T) {
		// The server is this machine's inside address; clients reach it
		// at 198.51.100.1 through a DNAT (the fake NAT's serverPublic).
		c := newHookConn(t, &fakeNAT{serverPublic: simServerPublic}, "198.51.100.30:40000", "192.0.2.1:21", HookLocalIn, HookLocalOut)
		c.send(true, flagACK, "PASV\r\n")
		out := c.send(false, flagACK, "227 Entering Passive Mode (192,0,2,1,117,48).\r\n")
		if string(out.payload) == "227 Entering Passive Mode (192,0,2,1,117,48).\r\n" {
			t.Fatalf("227 not rewritten: %q", out.payload)
		}
		var ph *Event
		for i := range c.events {
			if c.events[i].Path != PathLocalServer {
				t.Errorf("event %v has path %v", c.events[i].Kind, c.events[i].Path)
			}
			if c.events[i].Kind == EventPinhole {
				ph = &c.events[i]
			}
		}
		if ph == nil || ph.Pinhole.Peer != c.cli.Addr() || ph.Pinhole.Target != netip.MustParseAddrPort("192.0.2.1:30000") ||
			ph.Pinhole.Public.Addr() != simServerPublic {
			t.Fatalf("pinhole event %+v", ph)
		}
		c.e.Flows(func(f FlowInfo) {
			if f.Path != PathLocalServer {
				t.Errorf("flow %v path %v", f.Conn, f.Path)
			}
		})
	})
	t.Run("local client behind its own MASQUERADE", func(t *testing.T) {
		c := newHookConn(t, &fakeNAT{clientPublic: simClientPublic}, "192.0.2.1:40000", "198.51.100.20:21", HookLocalOut, HookLocalIn)
		out := c.send(true, flagACK, "PORT 192,0,2,1,117,49\r\n")
		if string(out.payload) == "PORT 192,0,2,1,117,49\r\n" {
			t.Fatalf("PORT not rewritten: %q", out.payload)
		}
		n := 0
		for _, ev := range c.events {
			if ev.Path != PathLocalClient {
				t.Errorf("event %v has path %v", ev.Kind, ev.Path)
			}
			if ev.Kind == EventPinhole && ev.Pinhole.Peer == c.srv.Addr() && ev.Pinhole.Target == netip.MustParseAddrPort("192.0.2.1:30001") {
				n++
			}
		}
		if n != 1 {
			t.Fatalf("want one pinhole to the local client, events %+v", c.events)
		}
	})
	t.Run("local server naming a foreign address", func(t *testing.T) {
		c := newHookConn(t, &fakeNAT{}, "198.51.100.30:40000", "198.51.100.1:21", HookLocalIn, HookLocalOut)
		c.send(true, flagACK, "PASV\r\n")
		line := "227 Entering Passive Mode (203,0,113,9,117,48).\r\n"
		if out := c.send(false, flagACK, line); string(out.payload) != line {
			t.Fatalf("refused line changed: %q", out.payload)
		}
		for _, ev := range c.events {
			if ev.Kind == EventPinhole {
				t.Fatalf("pinhole opened for a bounce: %+v", ev)
			}
		}
		if last := c.events[len(c.events)-1]; last.Kind != EventRefusal || last.Path != PathLocalServer {
			t.Fatalf("last event %+v, want a local-server refusal", last)
		}
	})
}
