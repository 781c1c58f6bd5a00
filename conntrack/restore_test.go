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
