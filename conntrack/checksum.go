package conntrack

import (
	"encoding/binary"
	"net/netip"
)

// Internet checksum helpers (RFC 1071), with the incremental update of
// RFC 1624 for the common case where only sequence and acknowledgement
// numbers change and a full pass over the segment would be wasted work.

// sum adds b to a running one's-complement accumulator.
func sum(acc uint32, b []byte) uint32 {
	for len(b) >= 2 {
		acc += uint32(b[0])<<8 | uint32(b[1])
		b = b[2:]
	}
	if len(b) == 1 {
		acc += uint32(b[0]) << 8
	}
	return acc
}

// fold reduces an accumulator to 16 bits and complements it.
func fold(acc uint32) uint16 {
	for acc>>16 != 0 {
		acc = acc&0xffff + acc>>16
	}
	return ^uint16(acc)
}

// pseudoSum is the accumulator of the TCP pseudo-header (RFC 9293 3.1,
// RFC 8200 8.1) for a segment of length n.
func pseudoSum(src, dst netip.Addr, n int) uint32 {
	var acc uint32
	if src.Is4() {
		s, d := src.As4(), dst.As4()
		acc = sum(sum(0, s[:]), d[:])
	} else {
		s, d := src.As16(), dst.As16()
		acc = sum(sum(0, s[:]), d[:])
	}
	return acc + 6 + uint32(n) // protocol TCP
}

// tcpChecksum computes the checksum of seg (TCP header and payload) with the
// checksum field taken as zero.
func tcpChecksum(src, dst netip.Addr, seg []byte) uint16 {
	acc := pseudoSum(src, dst, len(seg))
	acc = sum(acc, seg[:16])
	acc = sum(acc, seg[18:])
	return fold(acc)
}

// tcpChecksumOK reports whether seg carries a correct checksum.
func tcpChecksumOK(src, dst netip.Addr, seg []byte) bool {
	return fold(sum(pseudoSum(src, dst, len(seg)), seg)) == 0
}

// ipv4HeaderChecksum computes the header checksum of hdr with the checksum
// field taken as zero.
func ipv4HeaderChecksum(hdr []byte) uint16 {
	return fold(sum(sum(0, hdr[:10]), hdr[12:]))
}

// checksumUpdate32 returns the checksum after a 32-bit field covered by it
// changed from old to new (RFC 1624 equation 3: HC' = ~(~HC + ~m + m')).
func checksumUpdate32(hc uint16, old, new uint32) uint16 {
	acc := uint32(^hc)
	acc += uint32(^uint16(old>>16)) + uint32(^uint16(old))
	acc += new>>16 + new&0xffff
	return fold(acc)
}

// put32 writes v at b[off:] and returns the value it replaced.
func put32(b []byte, off int, v uint32) uint32 {
	old := binary.BigEndian.Uint32(b[off:])
	binary.BigEndian.PutUint32(b[off:], v)
	return old
}
