package seqnum

import (
	"math"
	"testing"
)

func TestCompareAcrossWrap(t *testing.T) {
	tests := []struct {
		a, b Value
		less bool
	}{
		{0, 1, true},
		{1, 0, false},
		{5, 5, false},
		{math.MaxUint32, 0, true},        // wrap: 2^32-1 comes just before 0
		{math.MaxUint32 - 10, 20, true},  // 31 bytes apart across the wrap
		{20, math.MaxUint32 - 10, false}, // and the reverse
		{0, 1<<31 - 1, true},             // the largest forward distance
		{1 << 31, 0, true},               // exactly half the space: int32 overflow reads as before
	}
	for _, tt := range tests {
		if got := tt.a.LessThan(tt.b); got != tt.less {
			t.Errorf("%d.LessThan(%d) = %v, want %v", tt.a, tt.b, got, tt.less)
		}
		if got := tt.a.LessThanEq(tt.b); got != (tt.less || tt.a == tt.b) {
			t.Errorf("%d.LessThanEq(%d) = %v", tt.a, tt.b, got)
		}
	}
}

func TestArithmeticAcrossWrap(t *testing.T) {
	v := Value(math.MaxUint32 - 2)
	if got := v.Add(5); got != 2 {
		t.Errorf("Add across wrap = %d, want 2", got)
	}
	if got := v.Shift(-3); got != math.MaxUint32-5 {
		t.Errorf("Shift(-3) = %d", got)
	}
	if got := Value(2).Shift(-5); got != math.MaxUint32-2 {
		t.Errorf("Shift(-5) back across wrap = %d", got)
	}
	if got := v.Size(2); got != 5 {
		t.Errorf("Size across wrap = %d, want 5", got)
	}
	if got := Value(2).Sub(v); got != 5 {
		t.Errorf("Sub across wrap = %d, want 5", got)
	}
	if got := v.Sub(2); got != -5 {
		t.Errorf("Sub negative = %d, want -5", got)
	}
	if !Value(1).InRange(v, 3) || Value(3).InRange(v, 3) || Value(v-1).InRange(v, 3) {
		t.Error("InRange wrong across wrap")
	}
	if Max(v, 2) != 2 || Min(v, 2) != v {
		t.Error("Max/Min wrong across wrap")
	}
}

// FuzzShiftRoundTrip checks that shifting by d and back is the identity and
// that ordering is preserved by a common shift, for any values.
func FuzzShiftRoundTrip(f *testing.F) {
	f.Add(uint32(0), uint32(10), int32(7))
	f.Add(uint32(math.MaxUint32), uint32(3), int32(-9))
	f.Fuzz(func(t *testing.T, a, b uint32, d int32) {
		va, vb := Value(a), Value(b)
		if va.Shift(Delta(d)).Shift(Delta(-d)) != va && d != math.MinInt32 {
			t.Fatalf("shift round trip failed for %d by %d", a, d)
		}
		if va.LessThan(vb) != va.Shift(Delta(d)).LessThan(vb.Shift(Delta(d))) {
			t.Fatalf("common shift changed order of %d,%d by %d", a, b, d)
		}
	})
}
