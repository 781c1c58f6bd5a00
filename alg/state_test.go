package alg

import (
	"errors"
	"testing"
)

func TestDialogStateRoundTrip(t *testing.T) {
	d := NewDialog(Config{MaxLine: 512})
	for _, l := range []string{"S220 hi", "CUSER a", "S331 pw", "CPASS b", "S230 ok", "CPASV", "CNOOP", "S227-x"} {
		if l[0] == 'C' {
			d.ClientLine([]byte(l[1:]))
		} else {
			d.ServerLine([]byte(l[1:]))
		}
	}
	b, err := d.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	var r Dialog
	if err := r.UnmarshalBinary(b); err != nil {
		t.Fatal(err)
	}
	if r != d {
		t.Fatalf("restored %+v, want %+v", r, d)
	}
	// The restored dialog goes on exactly like the original: the 227 that
	// ends the open multi-line reply answers the outstanding PASV.
	if f := r.ServerLine([]byte("227 Entering Passive Mode (192,0,2,20,200,10).")); !f.Usable() || !r.LoggedIn() {
		t.Fatalf("after restore: %+v, logged in %v", f, r.LoggedIn())
	}
	for _, bad := range [][]byte{nil, b[:5], append([]byte{9}, b[1:]...), append(append([]byte{}, b[:13]...), make([]byte, queueLen-1)...)} {
		if err := r.UnmarshalBinary(bad); !errors.Is(err, ErrState) {
			t.Errorf("UnmarshalBinary(%x) = %v, want ErrState", bad, err)
		}
	}
}
