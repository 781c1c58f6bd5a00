package ctnetlink

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"testing"

	"github.com/mdlayher/netlink"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// nlmsg_type of the two kinds of events.
const (
	typeNewEvent     = 1<<8 | msgCTNew
	typeDestroyEvent = typeCTDelete
)

// testEvent describes an event datagram for eventDatagram.
type testEvent struct {
	typ         uint16 // typeNewEvent or typeDestroyEvent
	proto       uint8
	orig, reply Tuple // reply ports as given: a port forward changes them
	// zoneOrig and zoneReply put a CTA_TUPLE_ZONE in that tuple, as the
	// kernel does for an entry in a zone of that direction only
	// (ctnetlink_dump_zone_id); zone puts a CTA_ZONE after the tuples,
	// as for a zone of both directions.
	zoneOrig, zoneReply, zone bool
}

// eventDatagram builds an event as the kernel lays it out
// (ctnetlink_conntrack_event): the netlink header, the nfgenmsg, then
// CTA_TUPLE_ORIG (addresses, then protocol: number and, for TCP and UDP,
// ports; a zone last if zoneOrig), CTA_TUPLE_REPLY likewise, CTA_ZONE if
// zone, CTA_ID, CTA_STATUS, then for NEW CTA_TIMEOUT and for both
// CTA_PROTOINFO with the TCP state. For ICMP the protocol nest holds its
// id, type and code instead of ports.
func eventDatagram(t *testing.T, ev testEvent) []byte {
	t.Helper()
	tuple := func(ae *netlink.AttributeEncoder, typ uint16, tu Tuple, zone bool) {
		ae.Nested(typ, func(ae *netlink.AttributeEncoder) error {
			ae.Nested(ctaTupleIP, func(ae *netlink.AttributeEncoder) error {
				if tu.Src.Addr().Is4() {
					ae.Bytes(ctaIPv4Src, tu.Src.Addr().AsSlice())
					ae.Bytes(ctaIPv4Dst, tu.Dst.Addr().AsSlice())
				} else {
					ae.Bytes(ctaIPv6Src, tu.Src.Addr().AsSlice())
					ae.Bytes(ctaIPv6Dst, tu.Dst.Addr().AsSlice())
				}
				return nil
			})
			ae.Nested(ctaTupleProto, func(ae *netlink.AttributeEncoder) error {
				ae.Uint8(ctaProtoNum, ev.proto)
				if ev.proto == unix.IPPROTO_ICMP {
					ae.Uint16(4, 0x1234) // CTA_PROTO_ICMP_ID
					ae.Uint8(5, 8)       // CTA_PROTO_ICMP_TYPE
					ae.Uint8(6, 0)       // CTA_PROTO_ICMP_CODE
					return nil
				}
				ae.Uint16(ctaProtoSrcPort, tu.Src.Port())
				ae.Uint16(ctaProtoDstPort, tu.Dst.Port())
				return nil
			})
			if zone {
				ae.Uint16(3, 7) // CTA_TUPLE_ZONE
			}
			return nil
		})
	}
	ae := netlink.NewAttributeEncoder()
	ae.ByteOrder = binary.BigEndian // payloads; headers stay in host order
	tuple(ae, ctaTupleOrig, ev.orig, ev.zoneOrig)
	tuple(ae, ctaTupleReply, ev.reply, ev.zoneReply)
	if ev.zone {
		ae.Uint16(18, 7) // CTA_ZONE
	}
	ae.Uint32(ctaID, 0x8badf00d)
	ae.Uint32(ctaStatus, 0x18e)
	state := TCPEstablished
	if ev.typ == typeDestroyEvent {
		state = TCPTimeWait
	} else {
		ae.Uint32(7, 120) // CTA_TIMEOUT
	}
	ae.Nested(ctaProtoinfo, func(ae *netlink.AttributeEncoder) error {
		ae.Nested(ctaProtoinfoTCP, func(ae *netlink.AttributeEncoder) error {
			ae.Uint8(ctaProtoinfoTCPState, uint8(state))
			return nil
		})
		return nil
	})
	attrs, err := ae.Encode()
	if err != nil {
		t.Fatal(err)
	}
	family := byte(unix.AF_INET)
	if ev.orig.Src.Addr().Is6() {
		family = unix.AF_INET6
	}
	data := append([]byte{family, 0, 0, 0}, attrs...)
	var flags netlink.HeaderFlags
	if ev.typ == typeNewEvent {
		flags = netlink.Create | netlink.Excl
	}
	m := netlink.Message{
		Header: netlink.Header{Length: uint32(16 + len(data)), Type: netlink.HeaderType(ev.typ), Flags: flags},
		Data:   data,
	}
	b, err := m.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// attrOffsets returns where the attribute headers of a datagram from
// eventDatagram are, named by path: "orig", "orig.ip", "orig.proto",
// "orig.proto.num", "orig.proto.sport", "orig.proto.dport", and the same
// under "reply".
func attrOffsets(t *testing.T, b []byte) map[string]int {
	t.Helper()
	names := map[string]string{
		"1": "orig", "2": "reply",
		"orig.1": "orig.ip", "orig.2": "orig.proto", "reply.1": "reply.ip", "reply.2": "reply.proto",
		"orig.proto.1": "orig.proto.num", "orig.proto.2": "orig.proto.sport", "orig.proto.3": "orig.proto.dport",
		"reply.proto.1": "reply.proto.num", "reply.proto.2": "reply.proto.sport", "reply.proto.3": "reply.proto.dport",
	}
	out := map[string]int{}
	var walk func(prefix string, off, end int)
	walk = func(prefix string, off, end int) {
		for off+4 <= end {
			n := int(binary.NativeEndian.Uint16(b[off:]))
			typ := binary.NativeEndian.Uint16(b[off+2:])
			if n < 4 || off+n > end {
				t.Fatalf("bad attribute at %d", off)
			}
			key := fmt.Sprint(typ & nlaTypeMask)
			if prefix != "" {
				key = prefix + "." + key
			}
			if name, ok := names[key]; ok {
				out[name] = off
				if typ&netlink.Nested != 0 {
					walk(name, off+4, off+n)
				}
			}
			off += (n + 3) &^ 3
		}
	}
	walk("", offOrig, len(b))
	return out
}

// traceFilter runs prog on b as the kernel does (a load past the end
// returns 0) and records which way each conditional jump went, as
// taken[index][0] (false) and taken[index][1] (true). It knows the
// instructions EventFilter uses, and fails on others.
func traceFilter(t *testing.T, prog []bpf.Instruction, b []byte, taken map[int]*[2]bool) uint32 {
	t.Helper()
	var a, x uint32
	load := func(off uint32, size int) (uint32, bool) {
		if uint64(off)+uint64(size) > uint64(len(b)) {
			return 0, false
		}
		if size == 1 {
			return uint32(b[off]), true
		}
		return uint32(binary.BigEndian.Uint16(b[off:])), true
	}
	cond := func(c bpf.JumpTest, v uint32) bool {
		switch c {
		case bpf.JumpEqual:
			return a == v
		case bpf.JumpNotEqual:
			return a != v
		case bpf.JumpLessThan:
			return a < v
		}
		t.Fatalf("jump test %v not traced", c)
		return false
	}
	for pc := 0; pc < len(prog); pc++ {
		var ok bool
		switch ins := prog[pc].(type) {
		case bpf.LoadExtension:
			if ins.Num != bpf.ExtLen {
				t.Fatalf("extension %v not traced", ins.Num)
			}
			a = uint32(len(b))
		case bpf.LoadAbsolute:
			if a, ok = load(ins.Off, ins.Size); !ok {
				return 0
			}
		case bpf.LoadIndirect:
			if a, ok = load(x+ins.Off, ins.Size); !ok {
				return 0
			}
		case bpf.TAX:
			x = a
		case bpf.ALUOpConstant:
			switch ins.Op {
			case bpf.ALUOpAdd:
				a += ins.Val
			case bpf.ALUOpSub:
				a -= ins.Val
			case bpf.ALUOpAnd:
				a &= ins.Val
			case bpf.ALUOpShiftLeft:
				a <<= ins.Val
			default:
				t.Fatalf("ALU op %v not traced", ins.Op)
			}
		case bpf.ALUOpX:
			if ins.Op != bpf.ALUOpOr {
				t.Fatalf("ALU op %v not traced", ins.Op)
			}
			a |= x
		case bpf.JumpIf, bpf.JumpIfX:
			var c bool
			var skipT, skipF uint8
			if j, isX := ins.(bpf.JumpIfX); isX {
				c, skipT, skipF = cond(j.Cond, x), j.SkipTrue, j.SkipFalse
			} else {
				j := ins.(bpf.JumpIf)
				c, skipT, skipF = cond(j.Cond, j.Val), j.SkipTrue, j.SkipFalse
			}
			if taken[pc] == nil {
				taken[pc] = new([2]bool)
			}
			if c {
				taken[pc][1] = true
				pc += int(skipT)
			} else {
				taken[pc][0] = true
				pc += int(skipF)
			}
		case bpf.RetConstant:
			return ins.Val
		default:
			t.Fatalf("instruction %v not traced", ins)
		}
	}
	t.Fatal("program ran off its end")
	return 0
}

// filterCase is one datagram and whether the filter must keep it.
type filterCase struct {
	name string
	b    []byte
	keep bool
}

// runFilter runs prog on every case, in the VM of golang.org/x/net/bpf and
// in traceFilter, which must agree, and then checks that the cases took
// every conditional jump of prog both ways.
func runFilter(t *testing.T, raw []bpf.RawInstruction, cases []filterCase) {
	t.Helper()
	prog := make([]bpf.Instruction, len(raw))
	for i, r := range raw {
		prog[i] = r.Disassemble()
	}
	vm, err := bpf.NewVM(prog)
	if err != nil {
		t.Fatal(err)
	}
	taken := map[int]*[2]bool{}
	for _, tt := range cases {
		t.Run(tt.name, func(t *testing.T) {
			n, err := vm.Run(tt.b)
			if err != nil {
				t.Fatal(err)
			}
			if kept := n > 0; kept != tt.keep {
				t.Errorf("kept %v (%d bytes of %d), want %v", kept, n, len(tt.b), tt.keep)
			}
			if v := traceFilter(t, prog, tt.b, taken); (v != 0) != (n > 0) {
				t.Errorf("traced verdict %#x, VM's %d", v, n)
			}
		})
	}
	for pc, ins := range prog {
		switch ins.(type) {
		case bpf.JumpIf, bpf.JumpIfX:
			if tk := taken[pc]; tk == nil || !tk[0] || !tk[1] {
				t.Errorf("jump %d (%v) not covered both ways: %v", pc, ins, tk)
			}
		}
	}
}

var (
	ap      = netip.MustParseAddrPort
	client4 = ap("192.0.2.10:40000")
	client6 = ap("[2001:db8:1::10]:40000")
)

// direct is a connection without NAT from client to server.
func direct(client, server netip.AddrPort) Entry {
	return Entry{Orig: Tuple{Src: client, Dst: server}, Reply: Tuple{Src: server, Dst: client}}
}

// forward is a connection from client to public, which a port forward
// (DNAT) sends to server.
func forward(client, public, server netip.AddrPort) Entry {
	return Entry{Orig: Tuple{Src: client, Dst: public}, Reply: Tuple{Src: server, Dst: client}}
}

func newEv(proto uint8, e Entry) testEvent {
	return testEvent{typ: typeNewEvent, proto: proto, orig: e.Orig, reply: e.Reply}
}

func destroyEv(proto uint8, e Entry) testEvent {
	return testEvent{typ: typeDestroyEvent, proto: proto, orig: e.Orig, reply: e.Reply}
}

// headerCheck is an attribute header field the filter checks: changing it
// makes an event it would drop one it keeps.
type headerCheck struct {
	path   string
	length bool // the length, else the type
}

// origChecks are the fields checked in every event, replyChecks those
// checked in DESTROY events besides.
var (
	origChecks = []headerCheck{
		{"orig", false},
		{"orig.ip", true}, {"orig.ip", false},
		{"orig.proto", false},
		{"orig.proto.num", true}, {"orig.proto.num", false},
		{"orig.proto.sport", true}, {"orig.proto.sport", false},
		{"orig.proto.dport", true}, {"orig.proto.dport", false},
	}
	replyChecks = []headerCheck{
		{"reply", false},
		{"reply.ip", true}, {"reply.ip", false},
		{"reply.proto", false},
		{"reply.proto.num", true}, {"reply.proto.num", false},
		{"reply.proto.sport", true}, {"reply.proto.sport", false},
	}
)

// corrupted returns the cases made of an event the filter drops by
// changing each header field it checks, which it must then keep.
func corrupted(t *testing.T, name string, ev testEvent) []filterCase {
	t.Helper()
	checks := origChecks
	if ev.typ == typeDestroyEvent {
		checks = append(checks[:len(checks):len(checks)], replyChecks...)
	}
	var out []filterCase
	for _, c := range checks {
		b := eventDatagram(t, ev)
		off, ok := attrOffsets(t, b)[c.path]
		if !ok {
			t.Fatalf("%s: no %s attribute", name, c.path)
		}
		what := "type"
		if c.length {
			what = "length"
			binary.NativeEndian.PutUint16(b[off:], binary.NativeEndian.Uint16(b[off:])+1)
		} else {
			binary.NativeEndian.PutUint16(b[off+2:], binary.NativeEndian.Uint16(b[off+2:])^0x10)
		}
		out = append(out, filterCase{fmt.Sprintf("%s, %s %s changed", name, c.path, what), b, true})
	}
	return out
}

// TestEventFilter runs the event filter on NEW and DESTROY events of every
// protocol and family, ports on both sides of the minimum, control ports in
// the original destination, the reply source, both or neither, with and
// without zones, and on layouts it must not read (which it keeps), and
// checks that these take every branch of the program.
func TestEventFilter(t *testing.T) {
	control := []uint16{990, 21, 21} // unsorted, with a duplicate
	prog, err := EventFilter(1024, control)
	if err != nil {
		t.Fatal(err)
	}
	s4, s6 := ap("198.51.100.20:21"), ap("[2001:db8:2::20]:21")
	pub4, pub6 := ap("198.51.100.1:2121"), ap("[2001:db8:2::1]:2121")
	other4, other6 := ap("192.0.2.20:2100"), ap("[2001:db8:1::20]:2100")
	ev := func(e testEvent, f func(*testEvent)) testEvent { f(&e); return e }
	withZoneOrig := func(e *testEvent) { e.zoneOrig = true }
	mk := func(name string, e testEvent, keep bool) filterCase {
		return filterCase{name, eventDatagram(t, e), keep}
	}
	cases := []filterCase{
		// NEW events, judged by the minimum alone: control ports do not
		// matter to them.
		mk("new tcp4 to 21", newEv(unix.IPPROTO_TCP, direct(client4, s4)), false),
		mk("new tcp4 to 1023", newEv(unix.IPPROTO_TCP, direct(client4, ap("198.51.100.20:1023"))), false),
		mk("new tcp4 to 1024", newEv(unix.IPPROTO_TCP, direct(client4, ap("198.51.100.20:1024"))), true),
		mk("new tcp4 to 50000", newEv(unix.IPPROTO_TCP, direct(client4, ap("198.51.100.20:50000"))), true),
		mk("new tcp4 to 443 in an orig zone", ev(newEv(unix.IPPROTO_TCP, direct(client4, ap("198.51.100.20:443"))), withZoneOrig), false),
		mk("new tcp4 to 50000 in an orig zone", ev(newEv(unix.IPPROTO_TCP, direct(client4, ap("198.51.100.20:50000"))), withZoneOrig), true),
		mk("new tcp6 to 22", newEv(unix.IPPROTO_TCP, direct(client6, ap("[2001:db8:2::20]:22"))), false),
		mk("new tcp6 to 1024", newEv(unix.IPPROTO_TCP, direct(client6, ap("[2001:db8:2::20]:1024"))), true),
		mk("new udp4 to 50000", newEv(unix.IPPROTO_UDP, direct(client4, ap("198.51.100.20:50000"))), false),
		mk("new udp6 to 53", newEv(unix.IPPROTO_UDP, direct(client6, ap("[2001:db8:2::20]:53"))), false),
		mk("new icmp4", newEv(unix.IPPROTO_ICMP, direct(ap("192.0.2.10:1"), ap("198.51.100.20:1"))), false),

		// DESTROY events: kept for a control port in the original
		// destination or the reply source.
		mk("destroy tcp4 to 21", destroyEv(unix.IPPROTO_TCP, direct(client4, s4)), true),
		mk("destroy tcp4 to 990", destroyEv(unix.IPPROTO_TCP, direct(client4, ap("198.51.100.20:990"))), true),
		mk("destroy tcp4 to 2121 forwarded to 21", destroyEv(unix.IPPROTO_TCP, forward(client4, pub4, ap("192.0.2.20:21"))), true),
		mk("destroy tcp4 to 2121 forwarded to 990", destroyEv(unix.IPPROTO_TCP, forward(client4, pub4, ap("192.0.2.20:990"))), true),
		mk("destroy tcp4 to 21 forwarded to 2100", destroyEv(unix.IPPROTO_TCP, forward(client4, ap("198.51.100.1:21"), other4)), true),
		mk("destroy tcp4 to 2121 forwarded to 2100", destroyEv(unix.IPPROTO_TCP, forward(client4, pub4, other4)), false),
		mk("destroy tcp4 to 2121", destroyEv(unix.IPPROTO_TCP, direct(client4, ap("198.51.100.20:2121"))), false),
		mk("destroy tcp4 to 50000", destroyEv(unix.IPPROTO_TCP, direct(client4, ap("198.51.100.20:50000"))), false),
		mk("destroy tcp4 to 22", destroyEv(unix.IPPROTO_TCP, direct(client4, ap("198.51.100.20:22"))), false),
		mk("destroy tcp4 to 2121 forwarded to 21, orig zone", ev(destroyEv(unix.IPPROTO_TCP, forward(client4, pub4, ap("192.0.2.20:21"))), withZoneOrig), true),
		mk("destroy tcp4 to 2121 forwarded to 2100, orig zone", ev(destroyEv(unix.IPPROTO_TCP, forward(client4, pub4, other4)), withZoneOrig), false),
		mk("destroy tcp4 to 2121 forwarded to 21, reply zone", ev(destroyEv(unix.IPPROTO_TCP, forward(client4, pub4, ap("192.0.2.20:21"))), func(e *testEvent) { e.zoneReply = true }), true),
		mk("destroy tcp4 to 2121 forwarded to 21, zone", ev(destroyEv(unix.IPPROTO_TCP, forward(client4, pub4, ap("192.0.2.20:21"))), func(e *testEvent) { e.zone = true }), true),
		mk("destroy tcp6 to 21", destroyEv(unix.IPPROTO_TCP, direct(client6, s6)), true),
		mk("destroy tcp6 to 990", destroyEv(unix.IPPROTO_TCP, direct(client6, ap("[2001:db8:2::20]:990"))), true),
		mk("destroy tcp6 to 2121 forwarded to 21", destroyEv(unix.IPPROTO_TCP, forward(client6, pub6, ap("[2001:db8:1::20]:21"))), true),
		mk("destroy tcp6 to 2121 forwarded to 990", destroyEv(unix.IPPROTO_TCP, forward(client6, pub6, ap("[2001:db8:1::20]:990"))), true),
		mk("destroy tcp6 to 2121 forwarded to 21, orig zone", ev(destroyEv(unix.IPPROTO_TCP, forward(client6, pub6, ap("[2001:db8:1::20]:21"))), withZoneOrig), true),
		mk("destroy tcp6 to 2121 forwarded to 2100", destroyEv(unix.IPPROTO_TCP, forward(client6, pub6, other6)), false),
		mk("destroy tcp6 to 2121 forwarded to 2100, orig zone", ev(destroyEv(unix.IPPROTO_TCP, forward(client6, pub6, other6)), withZoneOrig), false),
		mk("destroy udp4 to 21", destroyEv(unix.IPPROTO_UDP, direct(client4, s4)), false),
		mk("destroy udp6 to 21", destroyEv(unix.IPPROTO_UDP, direct(client6, s6)), false),
		mk("destroy icmp4", destroyEv(unix.IPPROTO_ICMP, direct(ap("192.0.2.10:1"), ap("198.51.100.20:1"))), false),
	}

	// Layouts it cannot read are kept for Watch to decode.
	drop4 := newEv(unix.IPPROTO_TCP, direct(client4, s4))
	drop6 := newEv(unix.IPPROTO_TCP, direct(client6, s6))
	dropD4 := destroyEv(unix.IPPROTO_TCP, forward(client4, pub4, other4))
	dropD6 := destroyEv(unix.IPPROTO_TCP, forward(client6, pub6, other6))
	for _, c := range []struct {
		name string
		ev   testEvent
	}{{"new tcp4 to 21", drop4}, {"new tcp6 to 21", drop6}, {"destroy tcp4 neither", dropD4}, {"destroy tcp6 neither", dropD6}} {
		cases = append(cases, corrupted(t, c.name, c.ev)...)
		b := eventDatagram(t, c.ev)
		off := attrOffsets(t, b)
		cases = append(cases,
			filterCase{c.name + ", other family", func() []byte { b := eventDatagram(t, c.ev); b[offFamily] = unix.AF_BRIDGE; return b }(), true},
			filterCase{c.name + ", cut before the original destination port", b[:off["orig.proto.dport"]+4+1], true},
		)
		if c.ev.typ == typeDestroyEvent {
			origLen := func(f func(uint16) uint16) []byte {
				b := eventDatagram(t, c.ev)
				binary.NativeEndian.PutUint16(b[offOrig:], f(binary.NativeEndian.Uint16(b[offOrig:])))
				return b
			}
			cases = append(cases,
				filterCase{c.name + ", cut before the reply source port", b[:off["reply.proto.sport"]+4+1], true},
				filterCase{c.name + ", cut after the reply source port", b[:off["reply.proto.sport"]+4+2], false},
				filterCase{c.name + ", original tuple shorter than its content", origLen(func(n uint16) uint16 { return n - 4 }), true},
				filterCase{c.name + ", original tuple longer by a zone", origLen(func(n uint16) uint16 { return n + 8 }), true},
				filterCase{c.name + ", original tuple past the end", origLen(func(uint16) uint16 { return 0xfff0 }), true},
			)
		}
	}
	cases = append(cases,
		filterCase{"reply tuple first", func() []byte {
			b := eventDatagram(t, drop4)
			binary.NativeEndian.PutUint16(b[offOrig+2:], ctaTupleReply|netlink.Nested)
			return b
		}(), true},
		filterCase{"short", make([]byte, 16), true},
		filterCase{"short destroy", eventDatagram(t, dropD4)[:offOrig-1], true},
	)
	runFilter(t, prog, cases)
}

// TestEventFilterNoControlPorts checks that without control ports every
// DESTROY event is dropped, one of port 21 and one the filter could not
// read included, and NEW events are judged as with them.
func TestEventFilterNoControlPorts(t *testing.T) {
	prog, err := EventFilter(1024, nil)
	if err != nil {
		t.Fatal(err)
	}
	s4 := ap("198.51.100.20:21")
	weird := eventDatagram(t, destroyEv(unix.IPPROTO_TCP, direct(client4, s4)))
	weird[offFamily] = unix.AF_BRIDGE
	var cases []filterCase
	for _, c := range []struct {
		name string
		b    []byte
		keep bool
	}{
		{"destroy tcp4 to 21", eventDatagram(t, destroyEv(unix.IPPROTO_TCP, direct(client4, s4))), false},
		{"destroy of another family", weird, false},
		{"new tcp4 to 21", eventDatagram(t, newEv(unix.IPPROTO_TCP, direct(client4, s4))), false},
		{"new tcp4 to 50000", eventDatagram(t, newEv(unix.IPPROTO_TCP, direct(client4, ap("198.51.100.20:50000")))), true},
		{"new tcp6 to 50000", eventDatagram(t, newEv(unix.IPPROTO_TCP, direct(client6, ap("[2001:db8:2::20]:50000")))), true},
		{"new tcp6 to 21", eventDatagram(t, newEv(unix.IPPROTO_TCP, direct(client6, ap("[2001:db8:2::20]:21")))), false},
	} {
		cases = append(cases, filterCase(c))
	}
	// The NEW blocks' every branch, as in TestEventFilter.
	n4 := newEv(unix.IPPROTO_TCP, direct(client4, s4))
	n6 := newEv(unix.IPPROTO_TCP, direct(client6, ap("[2001:db8:2::20]:21")))
	cases = append(cases, corrupted(t, "new tcp4 to 21", n4)...)
	cases = append(cases, corrupted(t, "new tcp6 to 21", n6)...)
	for name, ev := range map[string]testEvent{"4": n4, "6": n6} {
		b := eventDatagram(t, ev)
		cases = append(cases, filterCase{"new tcp" + name + " cut", b[:attrOffsets(t, b)["orig.proto.dport"]+5], true})
		u := ev
		u.proto = unix.IPPROTO_UDP
		cases = append(cases, filterCase{"new udp" + name, eventDatagram(t, u), false})
	}
	other := eventDatagram(t, n4)
	other[offFamily] = unix.AF_BRIDGE
	cases = append(cases, filterCase{"new of another family", other, true}, filterCase{"short", make([]byte, 16), true})
	runFilter(t, prog, cases)
}

// TestEventFilterPorts checks the bound on control ports: the largest set
// assembles (its jumps fit), one more is refused, duplicates count once.
func TestEventFilterPorts(t *testing.T) {
	ports := make([]uint16, 0, MaxControlPorts+1)
	for i := range MaxControlPorts + 1 {
		ports = append(ports, uint16(2000+i))
	}
	if _, err := EventFilter(1024, ports[:MaxControlPorts]); err != nil {
		t.Errorf("%d ports: %v", MaxControlPorts, err)
	}
	if _, err := EventFilter(1024, append(ports[:MaxControlPorts:MaxControlPorts], ports[0])); err != nil {
		t.Errorf("%d ports and a duplicate: %v", MaxControlPorts, err)
	}
	if _, err := EventFilter(1024, ports); err == nil {
		t.Errorf("%d ports accepted", len(ports))
	}
	// The last port of the largest set still matches: its jump lands.
	prog, err := EventFilter(1024, ports[:MaxControlPorts])
	if err != nil {
		t.Fatal(err)
	}
	last := ap(fmt.Sprintf("192.0.2.20:%d", ports[MaxControlPorts-1]))
	keep := eventDatagram(t, destroyEv(unix.IPPROTO_TCP, forward(client4, ap("198.51.100.1:80"), last)))
	drop := eventDatagram(t, destroyEv(unix.IPPROTO_TCP, forward(client4, ap("198.51.100.1:80"), ap("192.0.2.20:80"))))
	vmProg := make([]bpf.Instruction, len(prog))
	for i, r := range prog {
		vmProg[i] = r.Disassemble()
	}
	vm, err := bpf.NewVM(vmProg)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := vm.Run(keep); err != nil || n == 0 {
		t.Errorf("destroy of a connection to the last port: %d, %v; want kept", n, err)
	}
	if n, err := vm.Run(drop); err != nil || n != 0 {
		t.Errorf("destroy of a connection to port 80: %d, %v; want dropped", n, err)
	}
}
