package ctnetlink

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/mdlayher/netlink"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// eventDatagram builds a NEW event as the kernel lays it out
// (ctnetlink_conntrack_event): the netlink header, the nfgenmsg, then
// CTA_TUPLE_ORIG (addresses, then protocol: number and, for TCP and UDP,
// ports; a zone last if zone is set), CTA_TUPLE_REPLY and CTA_STATUS. For
// ICMP the protocol nest holds its id, type and code instead of ports.
func eventDatagram(t *testing.T, proto uint8, src, dst netip.AddrPort, zone bool) []byte {
	t.Helper()
	tuple := func(ae *netlink.AttributeEncoder, typ uint16, s, d netip.AddrPort) {
		ae.Nested(typ, func(ae *netlink.AttributeEncoder) error {
			ae.Nested(ctaTupleIP, func(ae *netlink.AttributeEncoder) error {
				if s.Addr().Is4() {
					ae.Bytes(ctaIPv4Src, s.Addr().AsSlice())
					ae.Bytes(ctaIPv4Dst, d.Addr().AsSlice())
				} else {
					ae.Bytes(ctaIPv6Src, s.Addr().AsSlice())
					ae.Bytes(ctaIPv6Dst, d.Addr().AsSlice())
				}
				return nil
			})
			ae.Nested(ctaTupleProto, func(ae *netlink.AttributeEncoder) error {
				ae.Uint8(ctaProtoNum, proto)
				if proto == unix.IPPROTO_ICMP {
					ae.Uint16(4, 0x1234) // CTA_PROTO_ICMP_ID
					ae.Uint8(5, 8)       // CTA_PROTO_ICMP_TYPE
					ae.Uint8(6, 0)       // CTA_PROTO_ICMP_CODE
					return nil
				}
				ae.Uint16(ctaProtoSrcPort, s.Port())
				ae.Uint16(ctaProtoDstPort, d.Port())
				return nil
			})
			if zone {
				ae.Uint16(4, 7) // CTA_TUPLE_ZONE
			}
			return nil
		})
	}
	ae := netlink.NewAttributeEncoder()
	ae.ByteOrder = binary.BigEndian // payloads; headers stay in host order
	tuple(ae, ctaTupleOrig, src, dst)
	tuple(ae, ctaTupleReply, dst, src)
	ae.Uint32(3, 0x18e) // CTA_STATUS
	attrs, err := ae.Encode()
	if err != nil {
		t.Fatal(err)
	}
	family := byte(unix.AF_INET)
	if src.Addr().Is6() {
		family = unix.AF_INET6
	}
	data := append([]byte{family, 0, 0, 0}, attrs...)
	m := netlink.Message{
		Header: netlink.Header{Length: uint32(16 + len(data)), Type: 0x0100, Flags: netlink.Create | netlink.Excl},
		Data:   data,
	}
	b, err := m.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestEventFilter runs the event filter on events of every protocol and
// family, ports on both sides of the minimum, with and without a zone, and
// on layouts it must not read (which it keeps).
func TestEventFilter(t *testing.T) {
	prog, err := EventFilter(1024)
	if err != nil {
		t.Fatal(err)
	}
	ins := make([]bpf.Instruction, len(prog))
	for i, r := range prog {
		ins[i] = r.Disassemble()
	}
	vm, err := bpf.NewVM(ins)
	if err != nil {
		t.Fatal(err)
	}
	ap := netip.MustParseAddrPort
	c4, c6 := ap("192.0.2.10:40000"), ap("[2001:db8:1::10]:40000")
	tests := []struct {
		name  string
		b     []byte
		keep  bool
		strip func([]byte) []byte
	}{
		{"tcp4 to 21", eventDatagram(t, unix.IPPROTO_TCP, c4, ap("198.51.100.20:21"), false), false, nil},
		{"tcp4 to 1023", eventDatagram(t, unix.IPPROTO_TCP, c4, ap("198.51.100.20:1023"), false), false, nil},
		{"tcp4 to 1024", eventDatagram(t, unix.IPPROTO_TCP, c4, ap("198.51.100.20:1024"), false), true, nil},
		{"tcp4 to 50000", eventDatagram(t, unix.IPPROTO_TCP, c4, ap("198.51.100.20:50000"), false), true, nil},
		{"tcp4 to 443 in a zone", eventDatagram(t, unix.IPPROTO_TCP, c4, ap("198.51.100.20:443"), true), false, nil},
		{"tcp4 to 50000 in a zone", eventDatagram(t, unix.IPPROTO_TCP, c4, ap("198.51.100.20:50000"), true), true, nil},
		{"tcp6 to 22", eventDatagram(t, unix.IPPROTO_TCP, c6, ap("[2001:db8:2::20]:22"), false), false, nil},
		{"tcp6 to 1024", eventDatagram(t, unix.IPPROTO_TCP, c6, ap("[2001:db8:2::20]:1024"), false), true, nil},
		{"udp4 to 50000", eventDatagram(t, unix.IPPROTO_UDP, c4, ap("198.51.100.20:50000"), false), false, nil},
		{"udp6 to 53", eventDatagram(t, unix.IPPROTO_UDP, c6, ap("[2001:db8:2::20]:53"), false), false, nil},
		{"icmp4", eventDatagram(t, unix.IPPROTO_ICMP, ap("192.0.2.10:1"), ap("198.51.100.20:1"), false), false, nil},
		// Layouts it cannot read are kept for Watch to decode.
		{"other family", eventDatagram(t, unix.IPPROTO_TCP, c4, ap("198.51.100.20:21"), false), true,
			func(b []byte) []byte { b[offFamily] = unix.AF_BRIDGE; return b }},
		{"reply tuple first", eventDatagram(t, unix.IPPROTO_TCP, c4, ap("198.51.100.20:21"), false), true,
			func(b []byte) []byte { binary.NativeEndian.PutUint16(b[offOrig+2:], ctaTupleReply|0x8000); return b }},
		{"address nest longer", eventDatagram(t, unix.IPPROTO_TCP, c4, ap("198.51.100.20:21"), false), true,
			func(b []byte) []byte { binary.NativeEndian.PutUint16(b[offIP:], 28); return b }},
		{"protocol number wider", eventDatagram(t, unix.IPPROTO_UDP, c4, ap("198.51.100.20:53"), false), true,
			func(b []byte) []byte { binary.NativeEndian.PutUint16(b[offIP+20+4:], 6); return b }},
		{"destination port attribute is another", eventDatagram(t, unix.IPPROTO_TCP, c4, ap("198.51.100.20:21"), false), true,
			func(b []byte) []byte { binary.NativeEndian.PutUint16(b[offIP+20+22:], 9); return b }},
		{"cut before the port", eventDatagram(t, unix.IPPROTO_TCP, c4, ap("198.51.100.20:21"), false), true,
			func(b []byte) []byte { return b[:offIP+20+24] }},
		{"empty", nil, true, func([]byte) []byte { return make([]byte, 16) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := tt.b
			if tt.strip != nil {
				b = tt.strip(b)
			}
			n, err := vm.Run(b)
			if err != nil {
				t.Fatal(err)
			}
			if kept := n > 0; kept != tt.keep {
				t.Errorf("kept %v (%d bytes of %d), want %v", kept, n, len(b), tt.keep)
			}
		})
	}
}
