package conntrack

import (
	"encoding/binary"
	"errors"
	"testing"

	"github.com/ftpalg/ftpalg/alg"
	"github.com/ftpalg/ftpalg/conntrack/seqnum"
)

// FuzzProcessRaw feeds arbitrary bytes as packets: the engine must never
// panic, and whatever it emits must be a well-formed packet.
func FuzzProcessRaw(f *testing.F) {
	f.Add(pkt{src: simClient, dst: simServer, seq: 1, flags: flagSYN}.build(f))
	f.Add(pkt{src: simClient, dst: simServer, seq: 2, ack: 9, flags: flagACK, payload: []byte("PORT 192,0,2,10,200,10\r\n")}.build(f))
	f.Add([]byte{0x45, 0, 0, 20})
	f.Fuzz(func(t *testing.T, raw []byte) {
		e := New(Config{}, &fakeNAT{clientPublic: simClientPublic})
		for range 2 { // twice: the second time the flow exists
			res := e.Process(raw, testNow)
			if res.Verdict == AcceptModified {
				parse(t, res.Packet)
			}
		}
	})
}

// FuzzSegments drives one control connection with an arbitrary sequence of
// segments in both directions: any sequence numbers, flags, payloads,
// SACK blocks. The engine must never panic, must emit only well-formed
// packets, and must keep its per-connection memory bounded.
//
// Each segment is encoded as: 1 byte direction (bit 0) and flags (0x02 FIN,
// 0x04 RST, 0x40 a SACK block), 2 bytes signed
// offset from the sender's next sequence number, 1 byte payload length,
// then the payload (taken from the FTP-like dictionary below when the
// length byte's high bit is set, so the fuzzer finds address lines fast).
func FuzzSegments(f *testing.F) {
	for _, s := range [][]byte{
		seedSeg(0, 0, "PORT 192,0,2,10,200,10\r\n"),
		append(seedSeg(0, 0, "PASV\r\n"), seedSeg(1, 0, "227 Entering Passive Mode (192,0,2,20,200,10).\r\n")...),
		append(seedSeg(0, 0, "PORT 192,0,"), seedSeg(0, 0, "2,10,200,10\r\n")...),
		append(seedSeg(0, 0, "PORT 192,0,2,10,200,10\r\n"), seedSeg(0, -24, "PORT 192,0,2,10,200,10\r\n")...),
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		e := New(Config{MaxLine: 128, AllowBeforeLogin: true, TLS: TLSPolicy(len(in) % 2)}, &fakeNAT{clientPublic: simClientPublic, serverPublic: simServerPublic})
		next := [2]seqnum.Value{1000, 5000}
		for _, p := range []pkt{
			{src: simClient, dst: simServer, seq: next[0] - 1, flags: flagSYN},
			{src: simServer, dst: simClient, seq: next[1] - 1, ack: next[0], flags: flagSYN | flagACK},
		} {
			e.Process(p.build(t), testNow)
		}
		driveSegments(t, e, next, in)
	})
}

// driveSegments runs the segments encoded in in (see FuzzSegments) through
// e, with next the senders' next sequence numbers, and checks what comes
// out and that per-connection memory stays bounded.
func driveSegments(t *testing.T, e *Engine, next [2]seqnum.Value, in []byte) {
	{
		for len(in) >= 4 {
			hdr, off, n := in[0], int16(binary.BigEndian.Uint16(in[1:])), int(in[3])
			in = in[4:]
			var payload []byte
			if n&0x80 != 0 {
				payload = []byte(dictionary[(n&0x7f)%len(dictionary)])
			} else {
				n = min(n, len(in))
				payload, in = in[:n], in[n:]
			}
			dir := int(hdr & 1)
			flags := uint8(flagACK)
			if hdr&0x02 != 0 {
				flags |= flagFIN
			}
			if hdr&0x04 != 0 {
				flags |= flagRST
			}
			p := pkt{src: simClient, dst: simServer, seq: next[dir].Shift(seqnum.Delta(off)), ack: next[1-dir], flags: flags, payload: payload}
			if dir == 1 {
				p.src, p.dst = simServer, simClient
			}
			if hdr&0x40 != 0 {
				p.sacks = [][2]seqnum.Value{{next[1-dir] - 30, next[1-dir] - 10}}
			}
			if off >= 0 {
				next[dir] = p.seq.Add(seqnum.Size(len(payload)))
			}
			res := e.Process(p.build(t), testNow)
			if res.Verdict == AcceptModified {
				parse(t, res.Packet)
			}
		}
		for _, f := range e.tab.m {
			for _, h := range []*half{&f.c, &f.s} {
				var line []byte
				if h.part != nil {
					line = h.part.line
				}
				if len(h.held()) > 128 || len(line) > 128 || len(h.m.edits) > 64 {
					t.Fatalf("unbounded state: held %d line %d edits %d", len(h.held()), len(line), len(h.m.edits))
				}
			}
		}
	}
}

// FuzzLabels: any 128 label bits either decode into a state that encodes
// back to exactly those bits, or are refused with ErrLabels; an engine
// that resumes a connection from them, then gets arbitrary segments (as in
// FuzzSegments), never panics, emits only well-formed packets and stays
// bounded. The two sequence bases place the segments around the labels'
// positions.
func FuzzLabels(f *testing.F) {
	port := LabelState{Halves: [2]LabelHalf{{Pos: 1000, Shift: 4, Step: 4}}, LoggedIn: true, Rewritten: true}.Encode()
	pasv := LabelState{Halves: [2]LabelHalf{{}, {Pos: 5000, Shift: -3, Step: -3}}, Answer: alg.AnswerPASV, LoggedIn: true, Rewritten: true}.Encode()
	multi := LabelState{Halves: [2]LabelHalf{{Pos: 1000, Shift: 9, Step: 4}}, Multi: true, Rewritten: true}.Encode()
	over := LabelState{Overflow: true, Rewritten: true}.Encode()
	for _, s := range []struct {
		l    Labels
		c, s uint32
		in   []byte
	}{
		// the rewritten PORT comes again: replayed, same step
		{port, 1000, 5000, seedSeg(0, 0, "PORT 192,0,2,10,200,10\r\n")},
		// the next PORT after the takeover
		{port, 1030, 5000, append(seedSeg(1, 0, "200 ok\r\n"), seedSeg(0, 0, "PORT 192,0,2,10,200,10\r\n")...)},
		// the 227 answering a PASV sent through the old process
		{pasv, 1000, 5100, seedSeg(1, 0, "227 Entering Passive Mode (192,0,2,20,200,10).\r\n")},
		// a segment before pos with MULTI: dropped
		{multi, 990, 5000, seedSeg(0, 0, "NOOP\r\nPORT 192,0,2,10,200,10\r\n")},
		{over, 1000, 5000, seedSeg(0, 0, "NOOP\r\n")},
		{Labels{^uint64(0), ^uint64(0)}, 1000, 5000, seedSeg(0, 0, "NOOP\r\n")},
		// labels without SEEN (written before bit 121 had a meaning):
		// decoded, and encoded again with it (found by the fuzzer)
		{Labels{0x00400009000003dd, 0x8400000000000013}, 1000, 5000, seedSeg(0, 0, "NOOP\r\n")},
	} {
		f.Add(s.l[0], s.l[1], s.c, s.s, s.in)
	}
	f.Fuzz(func(t *testing.T, lo, hi uint64, cseq, sseq uint32, in []byte) {
		l := Labels{lo, hi}
		st, err := l.Decode()
		switch {
		case err != nil && !errors.Is(err, ErrLabels):
			t.Fatalf("Decode(%s) = %v, not ErrLabels", l, err)
		case err == nil && st.Encode() != withSeen(l):
			// Encode always sets SEEN (the kernel's mark): the rest
			// must come back exactly.
			t.Fatalf("Decode(%s) = %+v encodes to %s", l, st, st.Encode())
		}
		src := fixedLabels(l)
		e := New(Config{MaxLine: 128, WriteLabels: true, LabelSource: &src}, &fakeNAT{clientPublic: simClientPublic, serverPublic: simServerPublic})
		driveSegments(t, e, [2]seqnum.Value{seqnum.Value(cseq), seqnum.Value(sseq)}, in)
	})
}

// fixedLabels is a LabelSource with the same labels for every connection.
type fixedLabels Labels

func (l *fixedLabels) Entry(Conn) (CTEntry, error) { return CTEntry{Labels: Labels(*l)}, nil }

var dictionary = []string{
	"PORT 192,0,2,10,200,10\r\n", "PASV\r\n", "EPSV\r\n", "227 Entering Passive Mode (192,0,2,20,200,10).\r\n",
	"229 Entering Extended Passive Mode (|||50000|)\r\n", "EPRT |1|192.0.2.10|5000|\r\n", "NOOP\r\n", "200 ok\r\n",
	"PORT 192,0,", "2,10,200,10\r\n", "227-multi\r\n", "227 end\r\n", "\r\n", "AUTH TLS\r\n", "234 go\r\n",
}

// seedSeg encodes one segment for FuzzSegments.
func seedSeg(dir byte, off int16, payload string) []byte {
	b := []byte{dir, 0, 0, byte(len(payload))}
	binary.BigEndian.PutUint16(b[1:], uint16(off))
	return append(b, payload...)
}

// withSeen returns l with SEEN set, as every Encode leaves it.
func withSeen(l Labels) Labels {
	l.setField(LabelSeen, 1, 1)
	return l
}
