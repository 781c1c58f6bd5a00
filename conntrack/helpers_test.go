package conntrack

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/ftpalg/ftpalg/conntrack/seqnum"
)

// fakeNAT answers like the kernel would for a client behind a NAT and a
// server behind a port forward, with a deterministic port choice that makes
// some rewrites longer and some shorter.
type fakeNAT struct {
	clientPublic, serverPublic netip.Addr
	err                        error
	reserved                   []uint16
}

func (n *fakeNAT) PublicAddr(c Conn, fromClient bool) (netip.Addr, error) {
	if n.err != nil {
		return netip.Addr{}, n.err
	}
	sender := c.Server.Addr()
	pub := n.serverPublic
	if fromClient {
		sender, pub = c.Client.Addr(), n.clientPublic
	}
	if !pub.IsValid() {
		return sender, nil
	}
	return pub, nil
}

func (n *fakeNAT) ReservePort(_ netip.Addr, want uint16) (uint16, error) {
	p := natPort(want)
	n.reserved = append(n.reserved, p)
	return p, nil
}

// natPort is the fake NAT's port choice: 5-digit ports become 4-digit and
// the reverse, every third one is kept.
func natPort(want uint16) uint16 {
	switch {
	case want%3 == 0:
		return want
	case want >= 10000:
		return 1024 + want%1000
	default:
		return 60000 + want%1000
	}
}

// pkt describes a test segment.
type pkt struct {
	src, dst netip.AddrPort
	seq, ack seqnum.Value
	flags    uint8
	payload  []byte
	sacks    [][2]seqnum.Value
}

// build serializes p with gopacket and correct checksums.
func (p pkt) build(t testing.TB) []byte {
	t.Helper()
	tcp := &layers.TCP{
		SrcPort: layers.TCPPort(p.src.Port()), DstPort: layers.TCPPort(p.dst.Port()),
		Seq: uint32(p.seq), Ack: uint32(p.ack), Window: 65535,
		FIN: p.flags&flagFIN != 0, SYN: p.flags&flagSYN != 0, RST: p.flags&flagRST != 0,
		ACK: p.flags&flagACK != 0, PSH: len(p.payload) > 0,
	}
	tcp.Options = append(tcp.Options, layers.TCPOption{OptionType: layers.TCPOptionKindNop}, layers.TCPOption{OptionType: layers.TCPOptionKindNop})
	if len(p.sacks) > 0 {
		var d []byte
		for _, b := range p.sacks {
			d = binary.BigEndian.AppendUint32(d, uint32(b[0]))
			d = binary.BigEndian.AppendUint32(d, uint32(b[1]))
		}
		tcp.Options = append(tcp.Options, layers.TCPOption{OptionType: layers.TCPOptionKindSACK, OptionData: d})
	}
	var ip gopacket.NetworkLayer
	if p.src.Addr().Is4() {
		ip = &layers.IPv4{Version: 4, TTL: 64, Protocol: layers.IPProtocolTCP, Flags: layers.IPv4DontFragment,
			SrcIP: net.IP(p.src.Addr().AsSlice()), DstIP: net.IP(p.dst.Addr().AsSlice())}
	} else {
		ip = &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolTCP,
			SrcIP: net.IP(p.src.Addr().AsSlice()), DstIP: net.IP(p.dst.Addr().AsSlice())}
	}
	if err := tcp.SetNetworkLayerForChecksum(ip); err != nil {
		t.Fatal(err)
	}
	buf := gopacket.NewSerializeBuffer()
	err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
		ip.(gopacket.SerializableLayer), tcp, gopacket.Payload(p.payload))
	if err != nil {
		t.Fatal(err)
	}
	return append([]byte(nil), buf.Bytes()...)
}

// parse decodes an engine output packet and checks that its lengths and
// checksums are right.
func parse(t testing.TB, b []byte) pkt {
	t.Helper()
	d := newDecoder()
	var s segment
	if err := d.decode(b, &s, true); err != nil {
		t.Fatalf("engine output does not decode: %v", err)
	}
	if b[0]>>4 == 4 && ipv4HeaderChecksum(b[:s.tcpOff]) != binary.BigEndian.Uint16(b[ipv4SumOff:]) {
		t.Fatalf("bad IPv4 header checksum")
	}
	p := pkt{src: s.src, dst: s.dst, seq: s.seq, ack: s.ack, flags: s.flags, payload: append([]byte(nil), s.payload...)}
	for i := 0; i < s.nSACK; i++ {
		l, r := s.sackBlock(b, i)
		p.sacks = append(p.sacks, [2]seqnum.Value{l, r})
	}
	return p
}

// through runs a packet through the engine and returns what leaves it
// (nil for a drop).
func throughAt(t testing.TB, e *Engine, in []byte, now time.Time) ([]byte, Result) {
	t.Helper()
	res := e.Process(in, now)
	switch res.Verdict {
	case Accept:
		return in, res
	case AcceptModified:
		return append([]byte(nil), res.Packet...), res
	}
	return nil, res
}

func (p pkt) String() string {
	return fmt.Sprintf("%s->%s seq=%d ack=%d flags=%#x len=%d %q", p.src, p.dst, p.seq, p.ack, p.flags, len(p.payload), p.payload)
}
