package conntrack

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"testing"

	"github.com/ftpalg/ftpalg/conntrack/seqnum"
)

// entrySource is a LabelSource with one entry for every connection, which
// a test changes as conntrack would.
type entrySource struct {
	ent     CTEntry
	lookups int
}

func (s *entrySource) Entry(Conn) (CTEntry, error) {
	s.lookups++
	return s.ent, nil
}

// seenOnly is what the SYN rule of rules.Config.SkipHandshake leaves on a
// new connection's entry.
func seenOnly() Labels {
	var l Labels
	l.setField(LabelSeen, 1, 1)
	return l
}

// midConn is a connection whose handshake the engine did not see: its first
// segment is the server's greeting, as with SkipHandshake.
func midConn(t *testing.T, cfg Config, src *entrySource) *conn {
	t.Helper()
	cfg.LabelSource = src
	nat := &fakeNAT{clientPublic: simClientPublic}
	c := &conn{t: t, nat: nat, e: New(cfg, nat), cli: netip.MustParseAddrPort("192.0.2.10:40001"),
		srv: netip.MustParseAddrPort("198.51.100.20:21"), cseq: 1001, sseq: 5001}
	c.server("220 ready\r\n")
	return c
}

// lastRefusal returns the reason of the last refusal in c's events.
func (c *conn) lastRefusal() error {
	for i := len(c.events) - 1; i >= 0; i-- {
		if c.events[i].Kind == EventRefusal {
			return c.events[i].Reason
		}
	}
	return nil
}

// TestSkippedHandshakeFresh checks that a connection first seen at its
// greeting is held to the login rule exactly when its entry says its SYN
// passed ftpalg's rules (SEEN and no state, with SkipHandshake): NAT
// slipstreaming must not get through because the SYN skipped the queue.
// Without that proof (SEEN unset: the entry predates the rules; a daemon
// whose pure-ACK rule sets SEEN itself; an entry that existed when the
// process started, whose login a predecessor may have seen half of) the
// connection may have logged in unseen, and is picked up as before.
func TestSkippedHandshakeFresh(t *testing.T) {
	loggedIn := LabelState{LoggedIn: true}.Encode()
	for _, tc := range []struct {
		name        string
		skip        bool
		labels      Labels
		preexisting bool
		enforced    bool // a PORT before the login is refused
	}{
		{"SEEN, handshake skipped: fresh", true, seenOnly(), false, true},
		{"no SEEN: entry predates the rules", true, Labels{}, false, false},
		{"SEEN set by the pure-ACK rule (no SkipHandshake)", false, seenOnly(), false, false},
		{"LOGGED_IN: resumed", true, loggedIn, false, false},
		{"SEEN, entry older than the process: dialog unknown", true, seenOnly(), true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := &entrySource{ent: CTEntry{Labels: tc.labels, ID: 7, Preexisting: tc.preexisting}}
			c := midConn(t, Config{SkipHandshake: tc.skip}, src)
			out := c.client("USER x\r\nPASS y\r\nPORT 192,0,2,10,200,10\r\n")
			refused := errors.Is(c.lastRefusal(), ErrNotLoggedIn)
			if refused != tc.enforced || refused == (c.count(EventPinhole) != 0) {
				t.Fatalf("PORT before a login: refused %v, %d pinholes (events %+v); want refused %v", refused, c.count(EventPinhole), c.events, tc.enforced)
			}
			if refused && !bytes.Contains(out.payload, []byte("PORT 192,0,2,10,200,10")) {
				t.Fatalf("refused PORT changed: %q", out.payload)
			}
			if src.lookups != 1 {
				t.Fatalf("%d entry lookups, want 1 (at the first segment)", src.lookups)
			}
			if !tc.enforced {
				return
			}
			c.server("331 pw\r\n230 ok\r\n200 ok\r\n")
			c.events = nil
			c.client("PORT 192,0,2,10,200,11\r\n")
			if c.count(EventPinhole) != 1 {
				t.Fatalf("after the login: events %+v, want a pinhole", c.events)
			}
		})
	}
}

// TestSkippedFIN checks the ACK of a client's FIN the engine did not see:
// one past the client's last released byte, it is the FIN the rules let
// pass (SkipHandshake, connection not rewritten, or kernel-mapped with one
// edit in flight), so it is accepted and the stream taken as ended there. Where
// the rules queue FINs (a connection ftpalg maps), or without
// SkipHandshake, the same ACK acknowledges a byte never sent and is
// refused.
func TestSkippedFIN(t *testing.T) {
	t.Run("not rewritten", func(t *testing.T) {
		for _, skip := range []bool{true, false} {
			c := midConn(t, Config{SkipHandshake: skip, WriteLabels: true}, &entrySource{ent: CTEntry{Labels: seenOnly(), ID: 7}})
			c.client("QUIT\r\n")
			// The client's FIN passed unseen; the server's reply
			// acknowledges it.
			out := c.send(pkt{src: c.srv, dst: c.cli, seq: c.sseq, ack: c.cseq.Add(1), flags: flagACK, payload: []byte("221 bye\r\n")})
			if skip && (out == nil || out.ack != c.cseq.Add(1)) {
				t.Fatalf("SkipHandshake: reply acknowledging the unseen FIN: %v, events %+v; want it passed as it is", out, c.events)
			}
			if !skip && (out != nil || !errors.Is(c.lastRefusal(), ErrInvalidAck)) {
				t.Fatalf("without SkipHandshake: %v, events %+v; want a drop for ErrInvalidAck", out, c.events)
			}
			if !skip {
				continue
			}
			// The server's FIN is queued (it would overtake its 221): an
			// ACK of one the engine did not see acknowledges a byte never
			// sent.
			if out := c.send(pkt{src: c.cli, dst: c.srv, seq: c.cseq.Add(1), ack: c.sseq.Add(9 + 1), flags: flagACK}); out != nil || !errors.Is(c.lastRefusal(), ErrInvalidAck) {
				t.Fatalf("ACK of a server FIN never queued passed: %v", out)
			}
			// Two past is not a FIN.
			if out := c.send(pkt{src: c.srv, dst: c.cli, seq: c.sseq.Add(9), ack: c.cseq.Add(2), flags: flagACK}); out != nil {
				t.Fatalf("ACK two past the client's stream passed: %v", out)
			}
		}
	})
	t.Run("rewritten", func(t *testing.T) {
		c := midConn(t, Config{SkipHandshake: true, WriteLabels: true}, &entrySource{ent: CTEntry{Labels: seenOnly(), ID: 7}})
		c.login()
		out := c.client("PORT 192,0,2,10,200,10\r\n")
		if c.count(EventRewrite) != 1 || out == nil {
			t.Fatalf("PORT not rewritten: %+v", c.events)
		}
		end := out.seq.Add(seqnum.Size(len(out.payload))) // the server's view of the client's stream
		if got := c.send(pkt{src: c.srv, dst: c.cli, seq: c.sseq, ack: end.Add(1), flags: flagACK, payload: []byte("200 ok\r\n")}); got != nil || !errors.Is(c.lastRefusal(), ErrInvalidAck) {
			t.Fatalf("rewritten connection, ACK of a FIN never queued: %v, events %+v; want a drop for ErrInvalidAck", got, c.events)
		}
	})
}

// TestDestroyed checks that the end of a connection comes from conntrack
// with SkipHandshake, for the entry it was picked up with only, and that a
// later connection on the same port pair is told from it by its entry's ID
// when the old entry's DESTROY has not come (yet).
func TestDestroyed(t *testing.T) {
	t.Run("destroy events", func(t *testing.T) {
		c := midConn(t, Config{SkipHandshake: true}, &entrySource{ent: CTEntry{Labels: seenOnly(), ID: 7}})
		conn := Conn{Client: c.cli, Server: c.srv}
		if evs := c.e.Destroyed(conn, 8, false); len(evs) != 0 || c.e.Len() != 1 {
			t.Fatalf("DESTROY of another entry (ID 8): events %+v, %d flows; want none, 1", evs, c.e.Len())
		}
		// Closed, but the engine saw neither FIN nor RST: an earlier
		// entry on the port pair that got the same ID.
		if evs := c.e.Destroyed(conn, 7, true); len(evs) != 0 || c.e.Len() != 1 {
			t.Fatalf("closed DESTROY of an open connection: events %+v, %d flows; want none, 1", evs, c.e.Len())
		}
		evs := c.e.Destroyed(conn, 7, false)
		if len(evs) != 1 || evs[0].Kind != EventFlowEnd || c.e.Len() != 0 {
			t.Fatalf("DESTROY of its entry: events %+v, %d flows; want one flow-end, 0", evs, c.e.Len())
		}
		if evs := c.e.Destroyed(conn, 7, false); len(evs) != 0 {
			t.Fatalf("second DESTROY: %+v", evs)
		}
	})
	t.Run("port pair reused", func(t *testing.T) {
		for _, tc := range []struct {
			name    string
			id      uint32
			newConn bool
		}{
			{"same entry: far segment stays with it", 7, false},
			{"another entry: a later connection", 9, true},
		} {
			t.Run(tc.name, func(t *testing.T) {
				src := &entrySource{ent: CTEntry{Labels: seenOnly(), ID: 7}}
				c := midConn(t, Config{SkipHandshake: true}, src)
				c.login()
				src.ent.ID = tc.id
				c.events = nil
				// The later connection's greeting, at its own ISN.
				c.sseq, c.cseq = c.sseq.Add(1<<31), c.cseq.Add(1<<31)
				c.server("220 again\r\n")
				ended := c.count(EventFlowEnd) == 1
				if ended != tc.newConn || src.lookups != 2 {
					t.Fatalf("flow ended %v after %d lookups (events %+v); want %v after 2", ended, src.lookups, c.events, tc.newConn)
				}
				if !tc.newConn {
					return
				}
				// The new connection is fresh: no login yet.
				c.client("USER x\r\nPASS y\r\nPORT 192,0,2,10,200,10\r\n")
				if !errors.Is(c.lastRefusal(), ErrNotLoggedIn) {
					t.Fatalf("later connection: events %+v, want its PORT refused before a login", c.events)
				}
			})
		}
	})
}

// TestReopenedPortPair checks that a server's greeting on the port pair of
// a connection whose server FIN was released starts a new connection,
// whatever its ID (conntrack often gives the new entry the old one's), and
// that a retransmission from before that FIN does not.
func TestReopenedPortPair(t *testing.T) {
	for _, tc := range []struct {
		name    string
		at      seqnum.Delta // the segment's seq against the old FIN's
		newConn bool
	}{
		{"retransmission before the FIN", -9, false},
		{"after the FIN", 1000, true},
		{"far before the FIN", -(1 << 20), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := &entrySource{ent: CTEntry{Labels: seenOnly(), ID: 7}}
			c := midConn(t, Config{SkipHandshake: true}, src)
			c.login()
			c.server("221 bye\r\n")
			fin := c.sseq
			c.send(pkt{src: c.srv, dst: c.cli, seq: fin, ack: c.cseq, flags: flagACK | flagFIN})
			c.events = nil
			c.send(pkt{src: c.srv, dst: c.cli, seq: fin.Shift(tc.at), ack: c.cseq, flags: flagACK, payload: []byte("221 bye\r\n")})
			if ended := c.count(EventFlowEnd) == 1; ended != tc.newConn {
				t.Fatalf("flow ended %v (events %+v), want %v", ended, c.events, tc.newConn)
			}
		})
	}
}

// TestSkippedHandshakeSessions runs generated sessions whose SYN, SYN/ACK,
// and payload-free ACKs and FINs skip the engine as the rules of
// SkipHandshake let them (sim.skips): the engine picks each
// connection up at its first payload segment, must still rewrite every
// announcement once, map every number, and accept the ACKs of FINs it
// never saw. Userspace-mapped and kernel-mapped, with pipelined rewrites,
// and with restarts that keep only the labels (a successor then picks
// each direction up at its next payload segment as well).
func TestSkippedHandshakeSessions(t *testing.T) {
	n := simSessions(30, 6)
	for _, mode := range []struct {
		name string
		o    simOptions
	}{
		{"userspace", simOptions{}},
		{"kernel", simOptions{kernel: true}},
		{"kernel pipelined", simOptions{kernel: true, pipeline: true}},
		{"labels restarts", simOptions{byLabels: true}},
		{"kernel labels restarts", simOptions{byLabels: true, kernel: true}},
	} {
		for seed := uint64(6000); seed < uint64(6000+n); seed++ {
			t.Run(fmt.Sprintf("%s/%d", mode.name, seed), func(t *testing.T) {
				o := mode.o
				o.handshake = true
				if o.byLabels {
					o.restarts = restartSteps(seed)
				}
				runSim(t, seed, 40+int(seed%5)*40, o)
			})
		}
	}
}
