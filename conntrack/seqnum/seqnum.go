// Package seqnum implements TCP sequence-number arithmetic that is correct
// across the 2^32 wrap.
//
// TCP sequence numbers are positions in a byte stream modulo 2^32 (RFC 9293
// section 3.4). Two numbers can only be ordered relative to each other, and
// only when they are less than 2^31 apart, which always holds for numbers
// that refer to the same window of a live connection. Comparing them as plain
// integers breaks at the wrap; every comparison here goes through the signed
// difference instead (int32(a-b) < 0), as in RFC 1982 serial arithmetic.
package seqnum

// Value is a TCP sequence or acknowledgement number.
type Value uint32

// Size is a length in sequence space (a count of bytes, SYN and FIN flags).
type Size uint32

// Delta is a signed shift between two sequence spaces, for example the
// difference between the bytes a sender wrote and the bytes a receiver sees
// after a payload rewrite.
type Delta int32

// LessThan reports whether v comes before w.
func (v Value) LessThan(w Value) bool { return int32(v-w) < 0 }

// LessThanEq reports whether v comes before w or equals it.
func (v Value) LessThanEq(w Value) bool { return int32(v-w) <= 0 }

// InRange reports whether v lies in the half-open range [a, b).
func (v Value) InRange(a, b Value) bool { return a.LessThanEq(v) && v.LessThan(b) }

// Add returns v advanced by s bytes.
func (v Value) Add(s Size) Value { return v + Value(s) }

// Shift returns v moved by d, which may be negative.
func (v Value) Shift(d Delta) Value { return v + Value(uint32(d)) }

// Size returns the distance from v forward to w. It is meaningful only when
// v.LessThanEq(w).
func (v Value) Size(w Value) Size { return Size(w - v) }

// Sub returns the signed distance from w to v (v - w).
func (v Value) Sub(w Value) Delta { return Delta(int32(v - w)) }

// Max returns the later of v and w.
func Max(v, w Value) Value {
	if v.LessThan(w) {
		return w
	}
	return v
}

// Min returns the earlier of v and w.
func Min(v, w Value) Value {
	if v.LessThan(w) {
		return v
	}
	return w
}
