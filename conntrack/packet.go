package conntrack

import (
	"encoding/binary"
	"errors"
	"net/netip"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/ftpalg/ftpalg/conntrack/seqnum"
)

// TCP header layout, RFC 9293 section 3.1.
const (
	tcpSeqOff   = 4
	tcpAckOff   = 8
	tcpSumOff   = 16
	tcpMinHdr   = 20
	optEnd      = 0
	optNOP      = 1
	optSACK     = 5
	maxSACKs    = 4
	flagFIN     = 0x01
	flagSYN     = 0x02
	flagRST     = 0x04
	flagACK     = 0x10
	ipv4SumOff  = 10
	ipv4LenOff  = 2
	ipv6LenOff  = 4
	ipv6HdrSize = 40
)

// Errors for packets the engine does not track. They are counted, and the
// packet is passed unchanged: the engine only ever touches TCP segments it
// fully understood.
var (
	ErrNotTCP      = errors.New("not an IPv4 or IPv6 TCP packet")
	ErrMalformed   = errors.New("malformed IP or TCP header")
	ErrBadChecksum = errors.New("bad TCP checksum")
)

// segment is a decoded TCP segment. Its slices alias the packet.
type segment struct {
	src, dst   netip.AddrPort
	tcpOff     int // offset of the TCP header in the packet
	payloadOff int // offset of the payload in the packet
	seq, ack   seqnum.Value
	flags      uint8
	payload    []byte
	sackOffs   [maxSACKs]int // packet offsets of SACK blocks (8 bytes each)
	nSACK      int
}

func (s *segment) has(flag uint8) bool { return s.flags&flag != 0 }

// decoder turns raw IP packets into segments with gopacket's
// DecodingLayerParser, reusing its layers so the pass-through path does not
// allocate.
type decoder struct {
	ip4     layers.IPv4
	ip6     layers.IPv6
	tcp     layers.TCP
	payload gopacket.Payload
	p4, p6  *gopacket.DecodingLayerParser
	decoded []gopacket.LayerType
}

func newDecoder() *decoder {
	d := &decoder{decoded: make([]gopacket.LayerType, 0, 4)}
	d.p4 = gopacket.NewDecodingLayerParser(layers.LayerTypeIPv4, &d.ip4, &d.tcp, &d.payload)
	d.p6 = gopacket.NewDecodingLayerParser(layers.LayerTypeIPv6, &d.ip6, &d.tcp, &d.payload)
	d.p4.IgnoreUnsupported = true
	d.p6.IgnoreUnsupported = true
	return d
}

// decode fills seg from pkt. It verifies the TCP checksum when verify is set.
func (d *decoder) decode(pkt []byte, seg *segment, verify bool) error {
	if len(pkt) < 1 {
		return ErrNotTCP
	}
	var parser *gopacket.DecodingLayerParser
	switch pkt[0] >> 4 {
	case 4:
		parser = d.p4
	case 6:
		parser = d.p6
	default:
		return ErrNotTCP
	}
	d.decoded = d.decoded[:0]
	if err := parser.DecodeLayers(pkt, &d.decoded); err != nil {
		return ErrMalformed
	}
	isTCP := false
	for _, lt := range d.decoded {
		if lt == layers.LayerTypeTCP {
			isTCP = true
		}
	}
	if !isTCP {
		return ErrNotTCP
	}
	*seg = segment{}
	if pkt[0]>>4 == 4 {
		if d.ip4.Flags&layers.IPv4MoreFragments != 0 || d.ip4.FragOffset != 0 {
			return ErrNotTCP // conntrack defragments before FORWARD; never expected here
		}
		if int(d.ip4.Length) != len(pkt) {
			return ErrMalformed
		}
		src, _ := netip.AddrFromSlice(d.ip4.SrcIP.To4())
		dst, _ := netip.AddrFromSlice(d.ip4.DstIP.To4())
		seg.src = netip.AddrPortFrom(src, uint16(d.tcp.SrcPort))
		seg.dst = netip.AddrPortFrom(dst, uint16(d.tcp.DstPort))
		seg.tcpOff = int(d.ip4.IHL) * 4
	} else {
		if d.ip6.NextHeader != layers.IPProtocolTCP || int(d.ip6.Length)+ipv6HdrSize != len(pkt) {
			return ErrNotTCP // extension headers: passed through untouched
		}
		src, _ := netip.AddrFromSlice(d.ip6.SrcIP)
		dst, _ := netip.AddrFromSlice(d.ip6.DstIP)
		seg.src = netip.AddrPortFrom(src, uint16(d.tcp.SrcPort))
		seg.dst = netip.AddrPortFrom(dst, uint16(d.tcp.DstPort))
		seg.tcpOff = ipv6HdrSize
	}
	hdrLen := int(d.tcp.DataOffset) * 4
	if hdrLen < tcpMinHdr || seg.tcpOff+hdrLen > len(pkt) {
		return ErrMalformed
	}
	seg.payloadOff = seg.tcpOff + hdrLen
	seg.payload = pkt[seg.payloadOff:]
	seg.seq = seqnum.Value(d.tcp.Seq)
	seg.ack = seqnum.Value(d.tcp.Ack)
	seg.flags = pkt[seg.tcpOff+13]
	if !seg.has(flagACK) {
		seg.ack = 0
	}
	if verify && !tcpChecksumOK(seg.src.Addr(), seg.dst.Addr(), pkt[seg.tcpOff:]) {
		return ErrBadChecksum
	}
	findSACKs(pkt, seg.tcpOff+tcpMinHdr, seg.payloadOff, seg)
	return nil
}

// findSACKs records the packet offsets of the SACK blocks (RFC 2018) in the
// TCP options between off and end. Malformed options end the walk; the
// segment is then forwarded with its options untouched.
func findSACKs(pkt []byte, off, end int, seg *segment) {
	for off < end {
		kind := pkt[off]
		if kind == optEnd {
			return
		}
		if kind == optNOP {
			off++
			continue
		}
		if off+1 >= end {
			return
		}
		n := int(pkt[off+1])
		if n < 2 || off+n > end {
			return
		}
		if kind == optSACK {
			for b := off + 2; b+8 <= off+n && seg.nSACK < maxSACKs; b += 8 {
				seg.sackOffs[seg.nSACK] = b
				seg.nSACK++
			}
		}
		off += n
	}
}

// sackBlock reads SACK block i of seg from pkt.
func (s *segment) sackBlock(pkt []byte, i int) (left, right seqnum.Value) {
	o := s.sackOffs[i]
	return seqnum.Value(binary.BigEndian.Uint32(pkt[o:])), seqnum.Value(binary.BigEndian.Uint32(pkt[o+4:]))
}
