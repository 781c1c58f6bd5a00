package conntrack

import (
	"bytes"
	"testing"

	"github.com/ftpalg/ftpalg/conntrack/seqnum"
)

// TestRestoreKeepsLineStart is a crash between two saves: the previous
// process saved the connection after a rewritten PORT (durably, at a line
// start), then released a whole-line NOOP without saving again, and died.
// A PORT that comes after the NOOP, beyond the saved release point, must
// still be read as a line and rewritten: what was released after the last
// save can only be whole lines, because a segment that begins or ends
// inside a line is saved durably. Before boundaryAfterSave, that PORT
// passed unrewritten (the server answered 500 Illegal PORT command).
func TestRestoreKeepsLineStart(t *testing.T) {
	nat := &fakeNAT{clientPublic: simClientPublic, serverPublic: simServerPublic}
	cfg := Config{}
	e := New(cfg, nat)
	now := testNow
	cISN, sISN := seqnum.Value(1000), seqnum.Value(5000)
	c, s := cISN.Add(1), sISN.Add(1) // next sequence numbers, sender space
	toServer := func(e *Engine, data string) ([]byte, Result) {
		p := pkt{src: simClient, dst: simServer, seq: c, ack: s, flags: flagACK, payload: []byte(data)}
		c = c.Add(seqnum.Size(len(data)))
		return throughAt(t, e, p.build(t), now)
	}
	toClient := func(e *Engine, data string) {
		p := pkt{src: simServer, dst: simClient, seq: s, ack: c, flags: flagACK, payload: []byte(data)}
		s = s.Add(seqnum.Size(len(data)))
		throughAt(t, e, p.build(t), now)
	}
	throughAt(t, e, pkt{src: simClient, dst: simServer, seq: cISN, flags: flagSYN}.build(t), now)
	throughAt(t, e, pkt{src: simServer, dst: simClient, seq: sISN, ack: c, flags: flagSYN | flagACK}.build(t), now)
	toClient(e, "220 hello\r\n")
	toServer(e, "USER ftp\r\n")
	toClient(e, "230 ok\r\n")
	out, _ := toServer(e, "PORT 192,0,2,10,19,137\r\n")
	if !bytes.Contains(out, []byte("PORT 198,51,100,1,")) {
		t.Fatalf("the first PORT was not rewritten: %q", out)
	}
	var saved []FlowState
	for _, st := range e.Changed() {
		if st.Mapping {
			saved = append(saved, st)
		}
	}
	if len(saved) != 1 {
		t.Fatalf("%d durable states after the rewrite, want 1", len(saved))
	}
	toClient(e, "200 ok\r\n")
	toServer(e, "NOOP\r\n") // released; its dialog change is lost with the process

	e2 := New(cfg, nat)
	if err := e2.Restore(saved[0], now); err != nil {
		t.Fatal(err)
	}
	out, res := toServer(e2, "PORT 192,0,2,10,19,138\r\n")
	if res.Verdict != AcceptModified || !bytes.Contains(out, []byte("PORT 198,51,100,1,")) {
		t.Fatalf("the PORT after the restart was not rewritten (verdict %v): %q", res.Verdict, out)
	}
}

// TestPickupReadsFirstLine is a restart with no saved state for a
// connection (it was never rewritten, so nothing was saved): the new
// process first sees the client's ACK, then a PORT. That PORT starts a
// line and is rewritten; ignoring the first line after a pickup let it
// reach the server unrewritten.
func TestPickupReadsFirstLine(t *testing.T) {
	e := New(Config{}, &fakeNAT{clientPublic: simClientPublic, serverPublic: simServerPublic})
	c, s := seqnum.Value(70000), seqnum.Value(90000)
	throughAt(t, e, pkt{src: simClient, dst: simServer, seq: c, ack: s, flags: flagACK}.build(t), testNow)
	out, res := throughAt(t, e, pkt{src: simClient, dst: simServer, seq: c, ack: s, flags: flagACK,
		payload: []byte("PORT 192,0,2,10,19,137\r\n")}.build(t), testNow)
	if res.Verdict != AcceptModified || !bytes.Contains(out, []byte("PORT 198,51,100,1,")) {
		t.Fatalf("the first PORT after a pickup was not rewritten (verdict %v): %q", res.Verdict, out)
	}
}

// TestRewrittenDialogDurable: once a connection was rewritten, a command
// that only moves its dialog on is reported as durable (FlowState.Mapping),
// so the daemon saves it before the packet is released: a successor after
// a crash must know that a PASV awaits its 227.
func TestRewrittenDialogDurable(t *testing.T) {
	e := New(Config{}, &fakeNAT{clientPublic: simClientPublic, serverPublic: simServerPublic})
	c, s := seqnum.Value(1000), seqnum.Value(5000)
	send := func(fromClient bool, data string) {
		p := pkt{src: simServer, dst: simClient, seq: s, ack: c, flags: flagACK, payload: []byte(data)}
		if fromClient {
			p = pkt{src: simClient, dst: simServer, seq: c, ack: s, flags: flagACK, payload: []byte(data)}
			c = c.Add(seqnum.Size(len(data)))
		} else {
			s = s.Add(seqnum.Size(len(data)))
		}
		throughAt(t, e, p.build(t), testNow)
	}
	send(true, "NOOP\r\n")
	send(false, "200 ok\r\n")
	if st := e.Changed(); len(st) != 0 {
		t.Fatalf("a connection never rewritten is saved: %+v", st)
	}
	send(true, "PORT 192,0,2,10,19,137\r\n")
	e.Changed()
	send(false, "200 ok\r\n")
	send(true, "PASV\r\n")
	st := e.Changed()
	if len(st) != 1 || !st[0].Mapping {
		t.Fatalf("the PASV of a rewritten connection is not durable: %+v", st)
	}
}

// TestRestoreAckBeyondDroppedCommand is the gap of a restart: the saved
// state ends after TYPE I's reply; the client's PORT was dropped while no
// ftpalg was bound, and the client's next pure ACK carries the sequence
// number after it. The retransmitted PORT must still be parsed and
// rewritten, not passed on as bytes the previous process released.
func TestRestoreAckBeyondDroppedCommand(t *testing.T) {
	nat := &fakeNAT{clientPublic: simClientPublic, serverPublic: simServerPublic}
	e := New(Config{}, nat)
	c, s := seqnum.Value(1000), seqnum.Value(5000)
	send := func(e *Engine, fromClient bool, data string) ([]byte, Result) {
		p := pkt{src: simServer, dst: simClient, seq: s, ack: c, flags: flagACK, payload: []byte(data)}
		if fromClient {
			p = pkt{src: simClient, dst: simServer, seq: c, ack: s, flags: flagACK, payload: []byte(data)}
			c = c.Add(seqnum.Size(len(data)))
		} else {
			s = s.Add(seqnum.Size(len(data)))
		}
		return throughAt(t, e, p.build(t), testNow)
	}
	send(e, true, "PORT 192,0,2,10,19,137\r\n")
	send(e, false, "200 ok\r\n")
	send(e, true, "TYPE I\r\n")
	send(e, false, "200 binary\r\n")
	var saved FlowState
	for _, st := range e.Changed() {
		saved = st
	}
	e2 := New(Config{}, nat)
	if err := e2.Restore(saved, testNow); err != nil {
		t.Fatal(err)
	}
	port := "PORT 192,0,2,10,19,138\r\n"
	at := c
	c = c.Add(seqnum.Size(len(port))) // sent, dropped in the gap
	throughAt(t, e2, pkt{src: simClient, dst: simServer, seq: c, ack: s, flags: flagACK}.build(t), testNow)
	out, res := throughAt(t, e2, pkt{src: simClient, dst: simServer, seq: at, ack: s, flags: flagACK, payload: []byte(port)}.build(t), testNow)
	if res.Verdict != AcceptModified || !bytes.Contains(out, []byte("PORT 198,51,100,1,")) {
		t.Fatalf("the retransmitted PORT was not rewritten (verdict %v): %q", res.Verdict, out)
	}
}

// TestResumedPassiveRetransmitted is a SIGKILL after the previous process
// wrote the labels of a rewritten 227 but before it released the 227 (and,
// with --state-dir, before it wrote the state file, so only the labels
// carry the connection): the client never got the 227, so it sends its PASV
// again, and the server its 227. The labels say nothing is outstanding and
// where the 227 starts, not where the client's stream is, so the PASV looks
// like a new command; counted as one, it made every later final reply
// answer the command before its own, and the session's next 227 was refused
// as unsolicited (TestRestartBusy ServerForward/PASV/SIGKILL in CI: "passive
// reply answers no outstanding passive command"). The client's ACK tells:
// it does not reach the 227. Both orders of the two retransmissions, and a
// PASV the client sends after it got the 227 (a new command, whose 227 must
// be rewritten).
func TestResumedPassiveRetransmitted(t *testing.T) {
	const (
		reply = "227 Entering Passive Mode (192,0,2,20,157,203).\r\n" // one byte longer at 203.0.113.7
		next  = "227 Entering Passive Mode (192,0,2,20,221,83).\r\n"
	)
	for _, tc := range []struct {
		name      string
		order     []string // again after the restart: "PASV" from the client, "227" from the server
		delivered bool     // the 227 reached the client before the restart
	}{
		{"PASV first", []string{"PASV", "227"}, false},
		{"227 first", []string{"227", "PASV"}, false},
		{"227 delivered, new PASV", nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			nat := &fakeNAT{clientPublic: simClientPublic, serverPublic: simServerPublic}
			cfg := Config{WriteLabels: true}
			c := newConn(t, cfg, nat, simClient.String(), simServer.String(), 1000, 5000)
			c.server("220 hello\r\n")
			c.client("USER ftp\r\n")
			c.server("230 ok\r\n")
			c.client("TYPE I\r\n")
			c.server("200 binary\r\n")
			pasvAt, replyAt := c.cseq, c.sseq
			c.client("PASV\r\n")
			c.events = nil
			out := c.server(reply)
			if out == nil || !bytes.Contains(out.payload, []byte("203,0,113,7")) {
				t.Fatalf("the first 227 was not rewritten: %v", out)
			}
			var labels Labels
			for _, ev := range c.events {
				if ev.Kind == EventLabels {
					labels = ev.Labels
				}
			}
			if !labels.Bit(LabelRewritten) {
				t.Fatalf("no labels written for the rewritten 227: %+v", c.events)
			}
			// Where the client's view of the server's stream ends: before
			// the 227 unless it was delivered (ACKs are in that space).
			rack := replyAt
			if tc.delivered {
				rack = out.seq.Add(seqnum.Size(len(out.payload)))
			}
			toServer := func(data string) {
				t.Helper()
				if c.send(pkt{src: c.cli, dst: c.srv, seq: c.cseq, ack: rack, flags: flagACK, payload: []byte(data)}) == nil {
					t.Fatalf("%q dropped", data)
				}
				c.cseq = c.cseq.Add(seqnum.Size(len(data)))
			}
			toClient := func(data string) *pkt {
				t.Helper()
				p := c.send(pkt{src: c.srv, dst: c.cli, seq: c.sseq, ack: c.cseq, flags: flagACK, payload: []byte(data)})
				if p == nil {
					t.Fatalf("%q dropped", data)
				}
				c.sseq = c.sseq.Add(seqnum.Size(len(data)))
				rack = p.seq.Add(seqnum.Size(len(p.payload)))
				return p
			}

			// The previous process is gone; the successor knows the
			// connection only from its labels (a dump at start).
			c.e = New(cfg, nat)
			c.events = nil
			if _, err := c.e.Resume(Conn{Client: simClient, Server: simServer}, labels, testNow); err != nil {
				t.Fatal(err)
			}
			for _, step := range tc.order {
				switch step {
				case "PASV":
					if c.send(pkt{src: c.cli, dst: c.srv, seq: pasvAt, ack: replyAt, flags: flagACK, payload: []byte("PASV\r\n")}) == nil {
						t.Fatal("the PASV sent again was dropped")
					}
				case "227":
					p := c.send(pkt{src: c.srv, dst: c.cli, seq: replyAt, ack: c.cseq, flags: flagACK, payload: []byte(reply)})
					if p == nil || p.seq != out.seq || !bytes.Equal(p.payload, out.payload) {
						t.Fatalf("the 227 sent again leaves as %v, want %v", p, out)
					}
					rack = p.seq.Add(seqnum.Size(len(p.payload)))
				}
			}
			if !tc.delivered {
				// The session goes on: a download, then the next PASV.
				toServer("RETR b000.bin\r\n")
				toClient("150 Opening BINARY mode data connection\r\n")
				toClient("226 Transfer complete.\r\n")
				toServer("TYPE I\r\n")
				toClient("200 Switching to Binary mode.\r\n")
			}
			toServer("PASV\r\n")
			p := toClient(next)
			if !bytes.Contains(p.payload, []byte("203,0,113,7")) || c.count(EventRefusal) != 0 {
				t.Fatalf("the next 227 after the takeover was not rewritten: %v; events %+v", p, c.events)
			}
		})
	}
}
