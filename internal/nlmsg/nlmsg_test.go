package nlmsg

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"
)

func msg(typ uint16, seq uint32, body string) []byte {
	ne := binary.NativeEndian
	b := ne.AppendUint32(nil, uint32(HeaderLen+len(body)))
	b = ne.AppendUint16(b, typ)
	b = ne.AppendUint16(b, 0x5)
	b = ne.AppendUint32(b, seq)
	b = ne.AppendUint32(b, 0)
	b = append(b, body...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

func TestNext(t *testing.T) {
	a, c := msg(0x300, 7, "abcde"), msg(2, 8, "")
	two := append(bytes.Clone(a), c...)
	h, body, rest, err := Next(two)
	if err != nil || h.Type != 0x300 || h.Flags != 5 || h.Seq != 7 || h.Len != HeaderLen+5 || string(body) != "abcde" || !bytes.Equal(rest, c) {
		t.Fatalf("first of two: %+v %q rest %d bytes, err %v", h, body, len(rest), err)
	}
	if h, _, rest, err := Next(rest); err != nil || h.Seq != 8 || rest != nil {
		t.Fatalf("second of two: %+v rest %v err %v", h, rest, err)
	}
	// The last message may lack its padding.
	if _, body, rest, err := Next(a[:HeaderLen+5]); err != nil || string(body) != "abcde" || rest != nil {
		t.Errorf("unpadded last message: %q rest %v err %v", body, rest, err)
	}
	for name, b := range map[string][]byte{
		"empty":            nil,
		"short header":     a[:HeaderLen-1],
		"length too small": append(binary.NativeEndian.AppendUint32(nil, 8), a[4:]...),
		"length too large": append(binary.NativeEndian.AppendUint32(nil, 999), a[4:]...),
	} {
		if _, _, _, err := Next(b); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: err = %v, want ErrMalformed", name, err)
		}
	}
}
