package pinsync

import (
	"bytes"
	"errors"
	"testing"
	"time"
)

// FuzzDecode: no input panics Decode or Check; whatever Decode accepts
// encodes back to exactly the same bytes (one message, one spelling), and
// every error is ErrMalformed. Annotated seeds live in
// testdata/fuzz/FuzzDecode; see testdata/fuzz/README.md.
func FuzzDecode(f *testing.F) {
	for _, m := range []Message{pinholeMsg(), pinhole6Msg(), {Type: TypeResync}} {
		b, err := Encode(nil, m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := Decode(b)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("Decode error %v is not ErrMalformed", err)
			}
			return
		}
		again, err := Encode(nil, m)
		if err != nil {
			t.Fatalf("Decode accepted %x as %+v, which Encode refuses: %v", b, m, err)
		}
		if !bytes.Equal(again, b) {
			t.Fatalf("round trip changed the bytes:\n in  %x\n out %x", b, again)
		}
		if err := Check(m, Policy{MaxTimeout: time.Minute}); err != nil && !errors.Is(err, ErrPolicy) {
			t.Fatalf("Check error %v is not ErrPolicy", err)
		}
	})
}
