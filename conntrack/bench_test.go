package conntrack

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/ftpalg/ftpalg/conntrack/seqnum"
)

// benchNAT is a NAT that does not allocate, so the figures are the engine's.
type benchNAT struct{}

func (benchNAT) PublicAddr(c Conn, fromClient bool) (netip.Addr, error) {
	if fromClient {
		return simClientPublic, nil
	}
	return simServerPublic, nil
}
func (benchNAT) ReservePort(_ netip.Addr, want uint16) (uint16, error) { return natPort(want), nil }

// setSeq moves a prebuilt packet to a new sequence number, as the next
// in-order segment of its stream.
func setSeq(b []byte, tcpOff int, seq seqnum.Value) {
	sum := binary.BigEndian.Uint16(b[tcpOff+tcpSumOff:])
	sum = checksumUpdate32(sum, put32(b, tcpOff+tcpSeqOff, uint32(seq)), uint32(seq))
	binary.BigEndian.PutUint16(b[tcpOff+tcpSumOff:], sum)
}

func benchEngine(b *testing.B) (*Engine, seqnum.Value, seqnum.Value) {
	e := New(Config{VerifyChecksum: true, AllowBeforeLogin: true}, benchNAT{})
	cisn, sisn := seqnum.Value(1000), seqnum.Value(5000)
	for _, p := range []pkt{
		{src: simClient, dst: simServer, seq: cisn, flags: flagSYN},
		{src: simServer, dst: simClient, seq: sisn, ack: cisn + 1, flags: flagSYN | flagACK},
	} {
		e.Process(p.build(b), testNow)
	}
	return e, cisn + 1, sisn + 1
}

// BenchmarkPassThrough is an in-order data segment of a tracked connection
// that needs no change: the path every NOOP, LIST and reply takes.
func BenchmarkPassThrough(b *testing.B) {
	e, cseq, sseq := benchEngine(b)
	raw := pkt{src: simClient, dst: simServer, seq: cseq, ack: sseq, flags: flagACK, payload: []byte("NOOP\r\n")}.build(b)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		setSeq(raw, 20, cseq)
		cseq = cseq.Add(6)
		if res := e.Process(raw, testNow); res.Verdict != Accept {
			b.Fatalf("verdict %v", res.Verdict)
		}
	}
}

// BenchmarkRewrite is a PORT segment that is rewritten (longer), with a
// pinhole event, a new edit and a rebuilt packet. Every 32nd iteration the
// server acknowledges, so that edits are folded as in a real session.
func BenchmarkRewrite(b *testing.B) {
	e, cseq, sseq := benchEngine(b)
	line := []byte("PORT 192,0,2,10,200,10\r\n")
	raw := pkt{src: simClient, dst: simServer, seq: cseq, ack: sseq, flags: flagACK, payload: line}.build(b)
	ack := pkt{src: simServer, dst: simClient, seq: sseq, ack: cseq, flags: flagACK}.build(b)
	delta := seqnum.Delta(len("PORT 198,51,100,1,200,10\r\n") - len(line))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		setSeq(raw, 20, cseq)
		cseq = cseq.Add(seqnum.Size(len(line)))
		// A pinhole and a rewrite; the first length change also asks
		// for liberal window tracking.
		want := 2
		if i == 0 {
			want++
		}
		if res := e.Process(raw, testNow); res.Verdict != AcceptModified || len(res.Events) != want {
			b.Fatalf("iteration %d: verdict %v events %+v", i, res.Verdict, res.Events)
		}
		if i%32 == 31 {
			a := cseq.Shift(seqnum.Delta(i+1) * delta)
			sum := binary.BigEndian.Uint16(ack[20+tcpSumOff:])
			sum = checksumUpdate32(sum, put32(ack, 20+tcpAckOff, uint32(a)), uint32(a))
			binary.BigEndian.PutUint16(ack[20+tcpSumOff:], sum)
			e.Process(ack, testNow)
		}
	}
}
