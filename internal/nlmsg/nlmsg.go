// Package nlmsg splits netlink datagrams into messages: the one parsing
// step ctnetlink's answers, nf_tables' acknowledgements and NFQUEUE's
// packets share. It is pure: bytes in, messages out.
package nlmsg

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// HeaderLen is the size of struct nlmsghdr.
const HeaderLen = 16

// Header is struct nlmsghdr, in host byte order as on the wire.
type Header struct {
	Len   uint32
	Type  uint16
	Flags uint16
	Seq   uint32
	PID   uint32
}

// ErrMalformed reports bytes that are not a sequence of netlink messages.
var ErrMalformed = errors.New("malformed netlink message")

// Next splits the first message off b: its header, its body (what follows
// the header, up to its length) and the rest of b after the message's
// 4-byte aligned end, nil when nothing follows (the last message of a
// datagram may lack its padding).
func Next(b []byte) (h Header, body, rest []byte, err error) {
	if len(b) < HeaderLen {
		return h, nil, nil, fmt.Errorf("%w: %d bytes, shorter than a header", ErrMalformed, len(b))
	}
	ne := binary.NativeEndian
	h = Header{Len: ne.Uint32(b), Type: ne.Uint16(b[4:]), Flags: ne.Uint16(b[6:]), Seq: ne.Uint32(b[8:]), PID: ne.Uint32(b[12:])}
	if h.Len < HeaderLen || uint64(h.Len) > uint64(len(b)) {
		return Header{}, nil, nil, fmt.Errorf("%w: length %d of %d bytes", ErrMalformed, h.Len, len(b))
	}
	body = b[HeaderLen:h.Len]
	if a := Align(int(h.Len)); a < len(b) {
		rest = b[a:]
	}
	return h, body, rest, nil
}

// Align rounds n up to the 4-byte alignment of netlink messages and
// attributes.
func Align(n int) int { return (n + 3) &^ 3 }
