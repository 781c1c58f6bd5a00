package nfq

import (
	"bytes"
	"encoding/binary"
	"errors"
	"syscall"
	"testing"

	"github.com/ftpalg/ftpalg/internal/nlmsg"
)

// packetMsg builds an NFQNL_MSG_PACKET datagram the way the kernel does
// (nfqnl_build_packet_message): header, nfgenmsg, then attributes.
func packetMsg(id uint32, payload []byte, extra ...[]byte) []byte {
	b := appendHeader(nil, msgPacket, 0, 0, 2 /* AF_INET */, 7)
	var hdr [7]byte
	binary.BigEndian.PutUint32(hdr[:], id)
	binary.BigEndian.PutUint16(hdr[4:], 0x0800)
	hdr[6] = 2 // NF_INET_FORWARD
	b = appendAttr(b, attrPacketHdr, hdr[:])
	for _, e := range extra {
		b = append(b, e...)
	}
	if payload != nil {
		b = appendAttr(b, attrPayload, payload)
	}
	return finish(b, 0)
}

func attr(typ uint16, v []byte) []byte { return appendAttr(nil, typ, v) }

func TestParsePacket(t *testing.T) {
	payload := []byte("\x45\x00\x00\x1d fake IPv4 packet")
	mark := attr(3 /* NFQA_MARK */, []byte{0, 0, 0, 1})
	tests := []struct {
		name      string
		msg       []byte
		wantErr   error
		wantID    uint32
		truncated bool
	}{
		{name: "packet", msg: packetMsg(42, payload), wantID: 42},
		{name: "unknown attributes are skipped", msg: packetMsg(43, payload, mark), wantID: 43},
		{name: "nested flag masked", msg: packetMsg(44, payload, attr(0x8000|12 /* NFQA_CT_INFO */, []byte{0, 0, 0, 2})), wantID: 44},
		{name: "copy shorter than the packet", msg: packetMsg(45, payload, attr(attrCapLen, []byte{0, 0, 5, 0xdc})), wantID: 45, truncated: true},
		{name: "capture length equal", msg: packetMsg(46, payload, attr(attrCapLen, binary.BigEndian.AppendUint32(nil, uint32(len(payload))))), wantID: 46},
		{name: "no payload (copy mode meta)", msg: packetMsg(47, nil), wantErr: ErrMalformed, wantID: 47},
		{name: "no header", msg: finish(appendAttr(appendHeader(nil, msgPacket, 0, 0, 2, 7), attrPayload, payload), 0), wantErr: ErrMalformed},
		{name: "short header", msg: finish(appendAttr(appendHeader(nil, msgPacket, 0, 0, 2, 7), attrPacketHdr, []byte{0, 0, 0, 1}), 0), wantErr: ErrMalformed},
		{name: "short capture length", msg: packetMsg(48, payload, attr(attrCapLen, []byte{1})), wantErr: ErrMalformed, wantID: 48},
		{name: "verdict is not a packet", msg: appendVerdict(nil, 7, 1, Accept, nil), wantErr: ErrNotPacket},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			typ, _, _, body, rest, err := nextMessage(tt.msg)
			if err != nil {
				t.Fatalf("nextMessage: %v", err)
			}
			if rest != nil {
				t.Fatalf("rest = %d bytes, want none", len(rest))
			}
			p, err := parsePacket(typ, body)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if p.ID != tt.wantID {
				t.Errorf("ID = %d, want %d", p.ID, tt.wantID)
			}
			if err != nil {
				return
			}
			if !bytes.Equal(p.Payload, payload) || p.Proto != 0x0800 || p.Hook != 2 || p.Truncated != tt.truncated {
				t.Errorf("got %+v", p)
			}
		})
	}
}

func TestParseAttributeErrors(t *testing.T) {
	good := packetMsg(1, []byte("abcd"))
	for _, tc := range []struct {
		name string
		edit func(b []byte) []byte
	}{
		// The first attribute starts after nlmsghdr and nfgenmsg.
		{"attribute length below its header", func(b []byte) []byte { ne.PutUint16(b[20:], 3); return b }},
		{"attribute longer than the message", func(b []byte) []byte { ne.PutUint16(b[20:], 200); return b }},
		{"trailing bytes", func(b []byte) []byte { b = append(b, 1, 2); ne.PutUint32(b, uint32(len(b))); return b }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			msg := tc.edit(bytes.Clone(good))
			typ, _, _, body, _, err := nextMessage(msg)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := parsePacket(typ, body); !errors.Is(err, ErrMalformed) {
				t.Fatalf("err = %v, want ErrMalformed", err)
			}
		})
	}
}

func TestNextMessage(t *testing.T) {
	a, b := packetMsg(1, []byte("x")), packetMsg(2, []byte("yz"))
	two := append(bytes.Clone(a), b...)
	typ, _, _, _, rest, err := nextMessage(two)
	if err != nil || typ != subsysQueue<<8|msgPacket || !bytes.Equal(rest, b) {
		t.Fatalf("first of two: typ %#x rest %d bytes err %v", typ, len(rest), err)
	}
	for _, bad := range [][]byte{
		nil,
		a[:15],
		append(binary.NativeEndian.AppendUint32(nil, 8), a[4:]...),   // length below the header
		append(binary.NativeEndian.AppendUint32(nil, 999), a[4:]...), // longer than the datagram
	} {
		if _, _, _, _, _, err := nextMessage(bad); !errors.Is(err, ErrMalformed) {
			t.Errorf("nextMessage(% x) err = %v, want ErrMalformed", bad, err)
		}
	}
}

func TestAppendVerdict(t *testing.T) {
	payload := []byte("new packet, 21 bytes!")
	for _, tc := range []struct {
		v       Verdict
		payload []byte
	}{{Accept, nil}, {Drop, nil}, {Accept, payload}} {
		msg := appendVerdict([]byte("prefix"), 300, 0xdeadbeef, tc.v, tc.payload)[6:]
		if int(ne.Uint32(msg)) != len(msg) {
			t.Fatalf("length %d, message %d bytes", ne.Uint32(msg), len(msg))
		}
		if len(msg)%4 != 0 {
			t.Errorf("message of %d bytes is not aligned", len(msg))
		}
		typ, flags, _, body, _, err := nextMessage(msg)
		if err != nil {
			t.Fatal(err)
		}
		if typ != subsysQueue<<8|msgVerdict || flags != nlmRequest {
			t.Errorf("type %#x flags %#x", typ, flags)
		}
		if q := binary.BigEndian.Uint16(body[2:]); q != 300 {
			t.Errorf("queue %d in nfgenmsg, want 300 (big-endian res_id)", q)
		}
		attrs := body[nfgenLen:]
		if ne.Uint16(attrs[2:]) != attrVerdictHdr || ne.Uint16(attrs) != 12 {
			t.Fatalf("first attribute % x", attrs[:4])
		}
		if v, id := binary.BigEndian.Uint32(attrs[4:]), binary.BigEndian.Uint32(attrs[8:]); v != uint32(tc.v) || id != 0xdeadbeef {
			t.Errorf("verdict %d id %#x", v, id)
		}
		rest := attrs[12:]
		if tc.payload == nil {
			if len(rest) != 0 {
				t.Errorf("%d bytes after the verdict header, want none", len(rest))
			}
			continue
		}
		if ne.Uint16(rest[2:]) != attrPayload || int(ne.Uint16(rest)) != nlaHdrLen+len(payload) {
			t.Fatalf("payload attribute % x", rest[:4])
		}
		if !bytes.Equal(rest[4:4+len(payload)], payload) || len(rest) != nlmsg.Align(4+len(payload)) {
			t.Errorf("payload attribute %q", rest)
		}
	}
}

func TestConfigMessages(t *testing.T) {
	msg := appendParams(nil, 9, 5, 0xffff, 1024, flagFailOpen)
	typ, flags, seq, body, _, err := nextMessage(msg)
	if err != nil || typ != subsysQueue<<8|msgConfig || flags != nlmRequest|nlmAck || seq != 9 {
		t.Fatalf("typ %#x flags %#x seq %d err %v", typ, flags, seq, err)
	}
	// NFQA_CFG_PARAMS is a packed 5-byte struct: copy range, then mode.
	params := body[nfgenLen:]
	if ne.Uint16(params) != nlaHdrLen+5 || ne.Uint16(params[2:]) != cfgParams {
		t.Fatalf("params attribute % x", params[:4])
	}
	if r, mode := binary.BigEndian.Uint32(params[4:]), params[8]; r != 0xffff || mode != copyPacket {
		t.Errorf("copy range %d mode %d", r, mode)
	}
	cmd := appendCommand(nil, 3, 5, cmdBind)
	if _, _, _, body, _, err := nextMessage(cmd); err != nil || body[nfgenLen+4] != cmdBind {
		t.Errorf("bind command: % x (err %v)", body, err)
	}
}

func TestParseError(t *testing.T) {
	var b []byte
	ebusy := -int32(syscall.EBUSY)
	b = ne.AppendUint32(b, uint32(ebusy))
	b = append(b, appendCommand(nil, 77, 1, cmdBind)[:nlmsg.HeaderLen]...)
	errno, seq, err := parseError(b)
	if err != nil || syscall.Errno(-errno) != syscall.EBUSY || seq != 77 {
		t.Fatalf("errno %d seq %d err %v", errno, seq, err)
	}
	if _, _, err := parseError(b[:10]); !errors.Is(err, ErrMalformed) {
		t.Errorf("short error message: err = %v", err)
	}
}

// FuzzParse feeds arbitrary datagrams to the parser Serve runs on what the
// kernel sends: it must never panic, and a parsed payload must lie inside
// the datagram.
func FuzzParse(f *testing.F) {
	f.Add(packetMsg(1, []byte("payload")))                                  // one packet
	f.Add(append(packetMsg(1, []byte("a")), packetMsg(2, []byte("bc"))...)) // two in one datagram
	f.Add(packetMsg(3, []byte("x"), attr(attrCapLen, []byte{0, 0, 9, 9})))  // truncated copy
	f.Add(packetMsg(4, nil))                                                // no payload
	f.Add(appendCommand(nil, 1, 1, cmdBind))                                // not a packet
	f.Add([]byte{0x10, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})        // bare NLMSG_ERROR header
	f.Add(append(packetMsg(5, []byte("y")), 0xff, 0xff, 0xff, 0xff, 0, 0))  // garbage after a packet
	f.Fuzz(func(t *testing.T, b []byte) {
		for rest := b; len(rest) > 0; {
			typ, _, _, body, next, err := nextMessage(rest)
			if err != nil {
				return
			}
			if len(next) >= len(rest) {
				t.Fatalf("no progress: %d bytes left of %d", len(next), len(rest))
			}
			rest = next
			if typ == nlmsgError {
				parseError(body)
				continue
			}
			p, err := parsePacket(typ, body)
			if err != nil {
				continue
			}
			if len(p.Payload) > 0 && !inside(b, p.Payload) {
				t.Fatalf("payload outside the datagram")
			}
		}
	})
}

// inside reports whether s is a subslice of b's memory.
func inside(b, s []byte) bool {
	return len(s) <= len(b) && cap(s) > 0 && &b[:cap(b)][cap(b)-1] == &s[:cap(s)][cap(s)-1] && len(s) <= cap(b)
}

// TestHostByteOrder builds a packet message the way the kernel sends it,
// with binary.NativeEndian and not the package's own ne: netlink and
// attribute headers in host order, NFQA values in network order. The
// other tests share ne with the code, so a parser and encoder that both
// assumed little-endian would pass them; this one fails on big-endian
// mips under make cross-test.
func TestHostByteOrder(t *testing.T) {
	h := binary.NativeEndian
	attr := func(b []byte, typ uint16, v []byte) []byte {
		b = h.AppendUint16(b, uint16(4+len(v)))
		b = h.AppendUint16(b, typ)
		b = append(b, v...)
		return append(b, make([]byte, (4-len(v)%4)%4)...)
	}
	payload := []byte{0x45, 0, 0, 20, 1, 2, 3, 4, 5}
	body := []byte{2, 0, 0, 21}                                         // nfgenmsg: AF_INET, v0, queue 21 (big-endian)
	body = attr(body, attrPacketHdr, []byte{0, 0, 1, 2, 0x08, 0x00, 2}) // id 258, ETH_P_IP, hook FORWARD
	body = attr(body, attrPayload, payload)
	msg := h.AppendUint32(nil, uint32(16+len(body)))
	msg = h.AppendUint16(msg, subsysQueue<<8|msgPacket)
	msg = h.AppendUint16(msg, 0)
	msg = h.AppendUint32(msg, 77) // seq
	msg = h.AppendUint32(msg, 0)
	msg = append(msg, body...)

	typ, _, seq, b, _, err := nextMessage(msg)
	if err != nil || seq != 77 {
		t.Fatalf("nextMessage: seq %d, %v", seq, err)
	}
	p, err := parsePacket(typ, b)
	if err != nil {
		t.Fatal(err)
	}
	if p.ID != 258 || p.Proto != 0x0800 || p.Hook != 2 || !bytes.Equal(p.Payload, payload) {
		t.Errorf("parsed %+v", p)
	}

	v := appendVerdict(nil, 21, 258, Accept, nil)
	if h.Uint32(v) != uint32(len(v)) || h.Uint16(v[4:]) != subsysQueue<<8|msgVerdict {
		t.Errorf("verdict header % x", v[:8])
	}
	if a := v[16+nfgenLen:]; h.Uint16(a) != 12 || h.Uint16(a[2:]) != attrVerdictHdr {
		t.Errorf("verdict attribute header % x", a[:4])
	}
}
