package daemon

import (
	"encoding/binary"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/conntrack"
)

// The packet path under parallel load: each goroutine drives a connection
// of its own with in-order NOOP segments (the path most control packets
// take), either all through one Gateway and its lock (--queues 1) or each
// through a shard of its own (--queues N, one reader thread per queue).
// Run with -cpu 1,2,... to see the lock's cost grow with the readers.

// benchFlow is one connection's NOOP segment, moved along its stream.
type benchFlow struct {
	pkt []byte
	seq uint32
}

func newBenchFlow(b *testing.B, g *Gateway, port uint16) *benchFlow {
	cli := netip.AddrPortFrom(netip.MustParseAddr("192.0.2.10"), port)
	srv := netip.MustParseAddrPort("198.51.100.20:21")
	now := time.Now()
	g.Handle(tcpPacket(b, cli, srv, 100, 0, true, ""), now)
	g.Handle(tcpPacket(b, srv, cli, 500, 101, true, ""), now)
	return &benchFlow{pkt: tcpPacket(b, cli, srv, 101, 501, false, "NOOP\r\n"), seq: 101}
}

// next runs the flow's next segment through g.
func (f *benchFlow) next(b *testing.B, g *Gateway, now time.Time) {
	binary.BigEndian.PutUint32(f.pkt[20+4:], f.seq) // checksums are not verified here
	f.seq += 6
	if v, _ := g.Handle(f.pkt, now); v != conntrack.Accept {
		b.Fatalf("verdict %v", v)
	}
}

func benchGateway(b *testing.B, shard, shards int) *Gateway {
	pins := NewPinholes(newFakeFirewall(), newPorts(b), time.Minute, Limits{}, quiet)
	b.Cleanup(pins.Stop)
	e := conntrack.New(conntrack.Config{AllowBeforeLogin: true, Shard: uint64(shard), Shards: uint64(shards)}, nil)
	return NewGateway(e, pins, nil, quiet)
}

func BenchmarkGatewayOneLock(b *testing.B) {
	g := benchGateway(b, 0, 1)
	var port atomic.Uint32
	port.Store(40000)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		f := newBenchFlow(b, g, uint16(port.Add(1)))
		now := time.Now()
		for pb.Next() {
			f.next(b, g, now)
		}
	})
}

func BenchmarkShards(b *testing.B) {
	var port atomic.Uint32
	port.Store(40000)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		g := benchGateway(b, 0, 1) // a shard of its own: nothing shared on the path
		f := newBenchFlow(b, g, uint16(port.Add(1)))
		now := time.Now()
		for pb.Next() {
			f.next(b, g, now)
		}
	})
}
