package conntrack

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"

	"github.com/ftpalg/ftpalg/alg"
	"github.com/ftpalg/ftpalg/conntrack/seqnum"
)

// ErrLabels reports conntrack labels that do not hold a state ftpalg wrote.
var ErrLabels = errors.New("conntrack labels do not hold an ftpalg state")

// Labels are the 128 conntrack label bits of a control connection's entry,
// where ftpalg keeps what a successor (a restarted process, or the ftpalg of
// a standby router, to which conntrackd replicates labels) needs to carry on
// a connection it never saw. Bit N is the bit `iptables -m connlabel --label
// N` and nft `ct label N` test. Layout (bit numbers, each field from its low
// bit):
//
//	  0- 31  client-to-server pos   sender sequence number where the last edit of that direction starts
//	 32- 51  client-to-server shift receiver minus sender sequence, at or after the end of that edit (two's complement)
//	 52- 59  client-to-server step  that edit's length change (two's complement); before it the shift was shift-step
//	 60- 91  server-to-client pos
//	 92-111  server-to-client shift
//	112-119  server-to-client step
//	120      KERNEL: the kernel's seqadj extension maps the connection's sequence numbers (SeqAdj), not ftpalg
//	121      SEEN: set by the kernel (the pure-ACK rule's `--set`, rules.LabelSeen) and in every write; no state
//	122      MULTI: more than one edit of some direction was in flight when written
//	123      OVERFLOW: the state did not fit (|shift| >= 2^19 or |step| >= 128); a successor must not take over
//	124-125  ANSWER: what the next final server reply answers (alg.Answer: 0 none, 1 PASV, 2 EPSV, 3 LPSV)
//	126      LOGGED_IN: the server accepted a login
//	127      REWRITTEN: some payload of the connection was rewritten
//
// A direction that was never edited has pos, shift and step 0.
//
// On the wire (CTA_LABELS, CTA_LABELS_MASK) the kernel sends and takes its
// struct nf_conn_labels as is: an array of unsigned long in host byte order,
// bit N being bit N%W of long N/W (W the bits of a long; test_bit()). On a
// little-endian machine that is simply byte N/8, bit N%8, whatever W is; on
// a big-endian one the bytes of each long are reversed. Bytes and
// LabelsFromBytes convert for the running machine; wire and fromWire take
// the order and long size explicitly, so every layout is tested anywhere.
type Labels [2]uint64 // bit N is bit N%64 of word N/64

// Label bit numbers of decision 2's layout.
const (
	labelHalfBits  = 60
	labelPosBits   = 32
	labelShiftBits = 20
	labelStepBits  = 8
	LabelMulti     = 122
	LabelOverflow  = 123
	labelAnswer    = 124 // 2 bits
	LabelLoggedIn  = 126
	LabelRewritten = 127
	LabelSeen      = 121
	LabelKernel    = 120
)

// Limits of the two's complement fields: a value fits when -limit < v < limit.
const (
	labelShiftLimit = 1 << (labelShiftBits - 1)
	labelStepLimit  = 1 << (labelStepBits - 1)
)

// Bit reports label bit n (0-127).
func (l Labels) Bit(n int) bool { return n >= 0 && n < 128 && l[n/64]>>(n%64)&1 != 0 }

func (l Labels) field(off, n uint) uint64 {
	w, b := off/64, off%64
	v := l[w] >> b
	if b+n > 64 {
		v |= l[w+1] << (64 - b)
	}
	return v & (1<<n - 1)
}

func (l *Labels) setField(off, n uint, v uint64) {
	v &= 1<<n - 1
	w, b := off/64, off%64
	l[w] = l[w]&^((1<<n-1)<<b) | v<<b
	if b+n > 64 {
		hi := n - (64 - b)
		l[w+1] = l[w+1]&^(1<<hi-1) | v>>(64-b)
	}
}

// signExtend reads the low n bits of v as two's complement.
func signExtend(v uint64, n uint) int64 { return int64(v<<(64-n)) >> (64 - n) }

// LabelHalf is one direction's sequence mapping as the labels keep it.
type LabelHalf struct {
	Pos   seqnum.Value // where the last edit starts, in the sender's space
	Shift seqnum.Delta // receiver minus sender, from the end of that edit on
	Step  seqnum.Delta // that edit's length change
}

func (h LabelHalf) zero() bool { return h == LabelHalf{} }

func (h LabelHalf) fits() bool {
	return -labelShiftLimit < h.Shift && h.Shift < labelShiftLimit && -labelStepLimit < h.Step && h.Step < labelStepLimit
}

// LabelState is the decoded content of Labels.
type LabelState struct {
	Halves    [2]LabelHalf // the client's stream, then the server's
	Multi     bool
	Overflow  bool
	Answer    alg.Answer
	LoggedIn  bool
	Rewritten bool
	// Kernel: the entry's seqadj extension holds the halves' mapping
	// (SeqAdj: Pos, Shift-Step, Shift) and the kernel applies it; a
	// successor must not map again.
	Kernel bool
}

// Encode packs s. When a half does not fit, the result has OVERFLOW set and
// no sequence fields: a successor must not guess.
func (s LabelState) Encode() Labels {
	var l Labels
	overflow := s.Overflow || !s.Halves[0].fits() || !s.Halves[1].fits()
	if !overflow {
		for i, h := range s.Halves {
			off := uint(i * labelHalfBits)
			l.setField(off, labelPosBits, uint64(h.Pos))
			l.setField(off+labelPosBits, labelShiftBits, uint64(h.Shift))
			l.setField(off+labelPosBits+labelShiftBits, labelStepBits, uint64(h.Step))
		}
	}
	set := func(bit uint, on bool) {
		if on {
			l.setField(bit, 1, 1)
		}
	}
	set(LabelMulti, s.Multi && !overflow)
	set(LabelOverflow, overflow)
	l.setField(labelAnswer, 2, uint64(s.Answer))
	set(LabelLoggedIn, s.LoggedIn)
	set(LabelRewritten, s.Rewritten)
	set(LabelKernel, s.Kernel && !overflow)
	set(LabelSeen, true)
	return l
}

// Empty reports whether l holds no state: no bit set but SEEN, which the
// kernel sets on any control connection it lets pass without queueing.
func (l Labels) Empty() bool {
	l.setField(LabelSeen, 1, 0)
	return l == Labels{}
}

// Decode unpacks l. Labels with sequence fields, MULTI or KERNEL beside
// OVERFLOW were not written by ftpalg (an administrator's own connlabel
// rules?) and give ErrLabels.
func (l Labels) Decode() (LabelState, error) {
	var s LabelState
	for i := range s.Halves {
		off := uint(i * labelHalfBits)
		s.Halves[i] = LabelHalf{
			Pos:   seqnum.Value(l.field(off, labelPosBits)),
			Shift: seqnum.Delta(signExtend(l.field(off+labelPosBits, labelShiftBits), labelShiftBits)),
			Step:  seqnum.Delta(signExtend(l.field(off+labelPosBits+labelShiftBits, labelStepBits), labelStepBits)),
		}
	}
	s.Multi, s.Overflow = l.Bit(LabelMulti), l.Bit(LabelOverflow)
	s.Answer = alg.Answer(l.field(labelAnswer, 2))
	s.LoggedIn, s.Rewritten, s.Kernel = l.Bit(LabelLoggedIn), l.Bit(LabelRewritten), l.Bit(LabelKernel)
	if s.Overflow && (!s.Halves[0].zero() || !s.Halves[1].zero() || s.Multi || s.Kernel) {
		return LabelState{}, fmt.Errorf("%w: sequence fields beside OVERFLOW (%s)", ErrLabels, l)
	}
	return s, nil
}

// String prints the labels as the 32 hex digits `conntrack -L -o labels`
// style tools show for bit 127 first.
func (l Labels) String() string {
	return fmt.Sprintf("%016x%016x", l[1], l[0])
}

// longBytes is the size of the kernel's unsigned long: Go's uint on Linux.
const longBytes = strconv.IntSize / 8

// Bytes returns l as CTA_LABELS carries it on this machine.
func (l Labels) Bytes() [16]byte { return l.wire(binary.NativeEndian, longBytes) }

// LabelsFromBytes reads CTA_LABELS as this machine's kernel sends it. A
// shorter attribute (a kernel with fewer label words) is zero-extended.
func LabelsFromBytes(b []byte) (Labels, error) { return fromWire(b, binary.NativeEndian, longBytes) }

// wire lays l out as an array of longs of size long (4 or 8 bytes) in
// order.
func (l Labels) wire(order binary.ByteOrder, long int) [16]byte {
	var b [16]byte
	for i := 0; i < 16; i += long {
		bit := i * 8
		v := l.field(uint(bit), uint(long*8))
		if long == 8 {
			order.PutUint64(b[i:], v)
		} else {
			order.PutUint32(b[i:], uint32(v))
		}
	}
	return b
}

func fromWire(b []byte, order binary.ByteOrder, long int) (Labels, error) {
	if len(b) > 16 || len(b)%long != 0 {
		return Labels{}, fmt.Errorf("%w: CTA_LABELS of %d bytes", ErrLabels, len(b))
	}
	var l Labels
	for i := 0; i < len(b); i += long {
		var v uint64
		if long == 8 {
			v = order.Uint64(b[i:])
		} else {
			v = uint64(order.Uint32(b[i:]))
		}
		l.setField(uint(i*8), uint(long*8), v)
	}
	return l, nil
}
