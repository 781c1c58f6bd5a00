package conntrack

import (
	"encoding/binary"
	"errors"
	"testing"

	"github.com/ftpalg/ftpalg/alg"
	"github.com/ftpalg/ftpalg/conntrack/seqnum"
)

// bits lists the set label bits of l.
func bits(l Labels) []int {
	var out []int
	for n := range 128 {
		if l.Bit(n) {
			out = append(out, n)
		}
	}
	return out
}

// Each field at its boundaries lands on exactly the connlabel bits of the
// layout, and decodes back.
func TestLabelsLayout(t *testing.T) {
	tests := []struct {
		name string
		s    LabelState
		bits []int // set bits, ascending
	}{
		{"zero", LabelState{}, nil},
		{"c2s pos bit 0", LabelState{Halves: [2]LabelHalf{{Pos: 1}}}, []int{0}},
		{"c2s pos bit 31", LabelState{Halves: [2]LabelHalf{{Pos: 1 << 31}}}, []int{31}},
		{"c2s shift 1", LabelState{Halves: [2]LabelHalf{{Shift: 1}}}, []int{32}},
		{"c2s shift max", LabelState{Halves: [2]LabelHalf{{Shift: labelShiftLimit - 1}}}, seq(32, 50)},
		{"c2s shift -1", LabelState{Halves: [2]LabelHalf{{Shift: -1}}}, seq(32, 51)},
		{"c2s shift min+1", LabelState{Halves: [2]LabelHalf{{Shift: -labelShiftLimit + 1}}}, []int{32, 51}},
		{"c2s step 1", LabelState{Halves: [2]LabelHalf{{Step: 1}}}, []int{52}},
		{"c2s step 127", LabelState{Halves: [2]LabelHalf{{Step: 127}}}, seq(52, 58)},
		{"c2s step -1", LabelState{Halves: [2]LabelHalf{{Step: -1}}}, seq(52, 59)},
		{"c2s step -127", LabelState{Halves: [2]LabelHalf{{Step: -127}}}, []int{52, 59}},
		{"s2c pos bit 0 (word 0)", LabelState{Halves: [2]LabelHalf{{}, {Pos: 1}}}, []int{60}},
		{"s2c pos bit 3 (word 0)", LabelState{Halves: [2]LabelHalf{{}, {Pos: 1 << 3}}}, []int{63}},
		{"s2c pos bit 4 (word 1)", LabelState{Halves: [2]LabelHalf{{}, {Pos: 1 << 4}}}, []int{64}},
		{"s2c pos all", LabelState{Halves: [2]LabelHalf{{}, {Pos: ^seqnum.Value(0)}}}, seq(60, 91)},
		{"s2c shift -1", LabelState{Halves: [2]LabelHalf{{}, {Shift: -1}}}, seq(92, 111)},
		{"s2c step -1", LabelState{Halves: [2]LabelHalf{{}, {Step: -1}}}, seq(112, 119)},
		{"kernel", LabelState{Kernel: true}, []int{120}},
		{"multi", LabelState{Multi: true}, []int{122}},
		{"answer PASV", LabelState{Answer: alg.AnswerPASV}, []int{124}},
		{"answer EPSV", LabelState{Answer: alg.AnswerEPSV}, []int{125}},
		{"answer LPSV", LabelState{Answer: alg.AnswerLPSV}, []int{124, 125}},
		{"logged in", LabelState{LoggedIn: true}, []int{126}},
		{"rewritten", LabelState{Rewritten: true}, []int{127}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := tt.s.Encode()
			if !l.Bit(LabelSeen) {
				t.Fatalf("SEEN (bit %d) not set in %s: a write would clear what the pure-ACK rule set", LabelSeen, l)
			}
			l.setField(LabelSeen, 1, 0)
			if got := bits(l); !equalInts(got, tt.bits) {
				t.Fatalf("bits %v besides SEEN, want %v", got, tt.bits)
			}
			back, err := l.Decode()
			if err != nil || back != tt.s {
				t.Fatalf("Decode = %+v, %v; want %+v", back, err, tt.s)
			}
		})
	}
}

// Values that do not fit set OVERFLOW and nothing of the sequence fields.
func TestLabelsOverflow(t *testing.T) {
	for _, h := range []LabelHalf{
		{Shift: labelShiftLimit}, {Shift: -labelShiftLimit}, {Shift: 1 << 30},
		{Step: labelStepLimit}, {Step: -labelStepLimit}, {Pos: 7, Step: 200},
	} {
		for side := range 2 {
			var s LabelState
			s.Halves[side] = h
			s.Multi, s.LoggedIn, s.Rewritten, s.Answer = true, true, true, alg.AnswerEPSV
			l := s.Encode()
			if got := bits(l); !equalInts(got, []int{LabelSeen, 123, 125, 126, 127}) {
				t.Errorf("%+v on side %d: bits %v, want OVERFLOW and the dialog bits only", h, side, got)
			}
			d, err := l.Decode()
			if err != nil || !d.Overflow || d.Multi || d.Halves != [2]LabelHalf{} {
				t.Errorf("%+v: decoded %+v, %v", h, d, err)
			}
		}
	}
}

func TestLabelsNotOurs(t *testing.T) {
	for _, l := range []Labels{
		{0, 1<<(LabelOverflow-64) | 1<<(LabelKernel-64)}, // KERNEL beside OVERFLOW
		{1, 1 << (LabelOverflow - 64)},                   // pos beside OVERFLOW
		{0, 1<<(LabelOverflow-64) | 1<<(LabelMulti-64)},  // MULTI beside OVERFLOW
	} {
		if _, err := l.Decode(); !errors.Is(err, ErrLabels) {
			t.Errorf("Decode(%s) = %v, want ErrLabels", l, err)
		}
	}
}

// SEEN alone, as the kernel's pure-ACK rule leaves an entry ftpalg never
// wrote, is no state: Empty, and decoded as the zero state.
func TestLabelsSeen(t *testing.T) {
	var seen Labels
	seen.setField(LabelSeen, 1, 1)
	if !seen.Empty() || !(Labels{}).Empty() {
		t.Fatalf("%s or zero labels not Empty", seen)
	}
	if d, err := seen.Decode(); err != nil || d != (LabelState{}) {
		t.Fatalf("Decode(%s) = %+v, %v; want the zero state", seen, d, err)
	}
	if (LabelState{}).Encode() != seen {
		t.Fatalf("zero state encodes to %s, want SEEN only (%s)", (LabelState{}).Encode(), seen)
	}
	logged := LabelState{LoggedIn: true}.Encode()
	if logged.Empty() {
		t.Fatalf("%s (LOGGED_IN) reported Empty", logged)
	}
}

// The kernel's labels are unsigned longs in host order: bit N is bit N%W of
// long N/W. Every combination of byte order and long size.
func TestLabelsWire(t *testing.T) {
	var l Labels
	l.setField(0, 1, 1)   // bit 0
	l.setField(9, 1, 1)   // bit 9
	l.setField(33, 1, 1)  // bit 33
	l.setField(127, 1, 1) // bit 127
	tests := []struct {
		name  string
		order binary.ByteOrder
		long  int
		want  [16]byte
	}{
		// little-endian: byte N/8, bit N%8, whatever the long size
		{"le64", binary.LittleEndian, 8, [16]byte{0: 0x01, 1: 0x02, 4: 0x02, 15: 0x80}},
		{"le32", binary.LittleEndian, 4, [16]byte{0: 0x01, 1: 0x02, 4: 0x02, 15: 0x80}},
		// big-endian 64-bit (s390x, ppc64): the bytes of each long reversed
		{"be64", binary.BigEndian, 8, [16]byte{7: 0x01, 6: 0x02, 3: 0x02, 8: 0x80}},
		// big-endian 32-bit (mips, armeb): bytes reversed within 4
		{"be32", binary.BigEndian, 4, [16]byte{3: 0x01, 2: 0x02, 7: 0x02, 12: 0x80}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := l.wire(tt.order, tt.long); got != tt.want {
				t.Fatalf("wire = % x, want % x", got, tt.want)
			}
			back, err := fromWire(tt.want[:], tt.order, tt.long)
			if err != nil || back != l {
				t.Fatalf("fromWire = %s, %v; want %s", back, err, l)
			}
		})
	}
	// A kernel with one label word (64-bit, NF_CT_LABELS_MAX_SIZE 8): the
	// high word reads as zero.
	if back, err := fromWire([]byte{1, 0, 0, 0, 0, 0, 0, 0}, binary.LittleEndian, 8); err != nil || back != (Labels{1, 0}) {
		t.Errorf("8-byte labels = %s, %v", back, err)
	}
	for _, n := range []int{3, 17, 20} {
		if _, err := fromWire(make([]byte, n), binary.LittleEndian, 8); !errors.Is(err, ErrLabels) {
			t.Errorf("%d-byte labels: %v, want ErrLabels", n, err)
		}
	}
	if b := l.Bytes(); binary.NativeEndian.Uint16([]byte{1, 0}) == 1 && b != tests[0].want {
		t.Errorf("Bytes on this little-endian machine = % x", b)
	}
}

func seq(from, to int) []int {
	var out []int
	for i := from; i <= to; i++ {
		out = append(out, i)
	}
	return out
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// notYet is a LabelSource whose entry appears only after a number of
// lookups, as on a standby router before conntrackd committed it.
type notYet struct {
	misses, lookups int
	labels          Labels
}

func (n *notYet) Entry(Conn) (CTEntry, error) {
	n.lookups++
	if n.misses > 0 {
		n.misses--
		return CTEntry{}, ErrNoEntry
	}
	return CTEntry{Labels: n.labels}, nil
}

// TestNoEntryYet checks that a connection first seen while conntrack has
// no entry for it is picked up plain and looked up again at its next
// segments: taken over from its labels once the entry has them (under the
// same session id), left plain, and no longer looked up, once the entry
// exists without them.
func TestNoEntryYet(t *testing.T) {
	st := LabelState{Rewritten: true, LoggedIn: true}
	st.Halves[0] = LabelHalf{Pos: 1000, Shift: 3, Step: 3}
	noop := func(t *testing.T) []byte {
		return pkt{src: simClient, dst: simServer, seq: 2000, ack: 7000, flags: flagACK, payload: []byte("NOOP\r\n")}.build(t)
	}
	for _, tc := range []struct {
		name    string
		labels  Labels
		resumed uint64
	}{
		{"labels appear", st.Encode(), 1},
		{"entry without labels", Labels{}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := &notYet{misses: 2, labels: tc.labels}
			e := New(Config{LabelSource: src}, &fakeNAT{clientPublic: simClientPublic, serverPublic: simServerPublic})
			session := func() (id uint64) {
				e.Flows(func(fi FlowInfo) { id = fi.Session })
				return id
			}
			if res := e.Process(noop(t), testNow); res.Verdict != Accept || e.Len() != 1 {
				t.Fatalf("segment before the entry exists: verdict %v, %d flows; want Accept, 1 (plain)", res.Verdict, e.Len())
			}
			first := session()
			for i := 0; i < 3; i++ {
				e.Process(noop(t), testNow)
				if id := session(); id != first {
					t.Fatalf("segment %d: session %d, want %d as before", i+2, id, first)
				}
			}
			if e.Len() != 1 || e.Stats().Resumed != tc.resumed || e.Stats().Flows != 1 {
				t.Fatalf("%d flows (%d counted), %d resumed; want 1 flow, %d resumed", e.Len(), e.Stats().Flows, e.Stats().Resumed, tc.resumed)
			}
			if src.lookups != 3 {
				t.Fatalf("%d label lookups; want 3 (two misses, then the entry)", src.lookups)
			}
		})
	}
	// A connection conntrack never has an entry for (NOTRACK): looked up
	// at a bounded number of segments, then plain without lookups.
	t.Run("never an entry", func(t *testing.T) {
		src := &notYet{misses: 1 << 30}
		e := New(Config{LabelSource: src}, &fakeNAT{clientPublic: simClientPublic, serverPublic: simServerPublic})
		for range 100 {
			if res := e.Process(noop(t), testNow); res.Verdict != Accept {
				t.Fatalf("verdict %v, want Accept", res.Verdict)
			}
		}
		if want := 1 + maxRechecks; src.lookups != want || e.Len() != 1 {
			t.Fatalf("%d label lookups over 100 segments, %d flows; want %d, 1", src.lookups, e.Len(), want)
		}
	})
}
