package ctnetlink

import (
	"encoding/binary"
	"fmt"
	"slices"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// An event filter is a classic BPF program on the event socket that drops,
// in the kernel, the events ftpalg has no use for, so that a router's other
// traffic never wakes the reader and cannot fill the socket's buffer: an
// overrun loses the events that matter with the rest.
//
//   - NEW events are kept for TCP entries whose original destination port
//     is at least a minimum (ftpalg refuses data ports below 1024): those
//     of connections a pinhole may admit. Every other entry's are dropped,
//     including those of the control connections themselves.
//   - DESTROY events (IPCTNL_MSG_CT_DELETE) are kept for TCP entries whose
//     original destination port or reply source port is a control port:
//     the ends of control connections. The original destination is the
//     port the client dialled, the reply source the port the server really
//     listens on, which differ behind a port forward (public 2121 to a
//     server's 21); the daemon's control ports name the server's. Every
//     other DESTROY event is dropped: a router destroys an entry for each
//     connection it carried.
//
// The program reads the event's first attributes at fixed offsets: the
// kernel (ctnetlink_conntrack_event, which writes NEW and DESTROY events
// alike up to the tuples) writes CTA_TUPLE_ORIG first, holding CTA_TUPLE_IP
// (source and destination address), then CTA_TUPLE_PROTO (CTA_PROTO_NUM,
// CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT, as ctnetlink_dump_tuples lays
// them out), then a CTA_TUPLE_ZONE only for an entry in a directional zone;
// CTA_TUPLE_REPLY follows, laid out the same way. Since a zone may lengthen
// the original tuple, the reply tuple's offset is computed from the
// original tuple's length, in the X register. The program checks the
// header of every attribute it passes, and keeps any event whose layout is
// not exactly that: it drops only what it has read in full, and Watch
// decodes and checks what it keeps as before. Event messages come one per
// datagram (nfnetlink_send multicasts each event in an skb of its own), so
// the program sees a whole message and nothing after it.

// Offsets in an event datagram: the netlink header (16 bytes), the
// nfgenmsg (4), then attributes.
const (
	offType   = 4  // nlmsghdr.nlmsg_type, host byte order
	offFamily = 16 // nfgenmsg.nfgen_family
	offOrig   = 20 // CTA_TUPLE_ORIG
	offIP     = 24 // CTA_TUPLE_IP, inside it

	nlaTypeMask = 0x3fff // NLA_TYPE_MASK: without NLA_F_NESTED and NLA_F_NET_BYTEORDER

	// typeCTDelete is the nlmsg_type of DESTROY events: the subsystem in
	// the high byte (NFNL_SUBSYS_CTNETLINK), the message in the low one.
	typeCTDelete = 1<<8 | msgCTDelete

	// Offsets from a CTA_TUPLE_PROTO nest (which follows the tuple's
	// CTA_TUPLE_IP): its header, then CTA_PROTO_NUM (4+1, padded to 8),
	// CTA_PROTO_SRC_PORT and CTA_PROTO_DST_PORT (4+2 each, padded to 8).
	relProtoNum  = 4
	relSrcPort   = 12
	relDstPort   = 20
	relPortValue = 4  // a port attribute's value after its header
	protoLen     = 28 // the whole CTA_TUPLE_PROTO of TCP

	// MaxControlPorts bounds EventFilter's control ports: each costs two
	// instructions, and a classic BPF conditional jump skips at most 255.
	MaxControlPorts = 64
)

// eventLayout is where the protocol attributes of one address family's
// events are: after an address nest of ipLen bytes.
type eventLayout struct {
	family uint8
	ipLen  uint16 // CTA_TUPLE_IP: header and two addresses with headers
}

// tupleLen is the length of a tuple nest without a zone: its header, the
// addresses, the protocol.
func (l eventLayout) tupleLen() uint32 { return 4 + uint32(l.ipLen) + protoLen }

var eventLayouts = [...]eventLayout{
	{unix.AF_INET, 4 + 2*(4+4)},
	{unix.AF_INET6, 4 + 2*(4+16)},
}

// EventFilter returns the program that keeps the NEW events of TCP entries
// whose original destination port is minDstPort or above, the DESTROY
// events of TCP entries whose original destination port or reply source
// port is one of controlPorts (none: every DESTROY event is dropped), and
// anything it cannot read (see above). At most MaxControlPorts distinct
// ports are accepted.
func EventFilter(minDstPort uint16, controlPorts []uint16) ([]bpf.RawInstruction, error) {
	ports := slices.Clone(controlPorts)
	slices.Sort(ports)
	ports = slices.Compact(ports)
	if len(ports) > MaxControlPorts {
		return nil, fmt.Errorf("event filter: %d control ports, at most %d", len(ports), MaxControlPorts)
	}
	var a filterAsm
	other, destroy := a.newLabel(), a.newLabel()

	// A load past the end would drop the event: short ones are kept.
	// DESTROY events go to their blocks; any other message is judged as a
	// NEW event, the only other kind the socket receives.
	a.emit(bpf.LoadExtension{Num: bpf.ExtLen})
	a.jumpTo(bpf.JumpIf{Cond: bpf.JumpLessThan, Val: offOrig}, other)
	a.emit(bpf.LoadAbsolute{Off: offType, Size: 2})
	a.jumpTo(bpf.JumpIf{Cond: bpf.JumpEqual, Val: hostU16(typeCTDelete)}, destroy)

	// NEW events: one block per family, each jumping to the next on
	// another family (A still holding it); an unknown family is kept.
	a.emit(bpf.LoadAbsolute{Off: offFamily, Size: 1})
	for _, l := range eventLayouts {
		a.newEventBlock(l, minDstPort)
	}
	a.label(other)
	a.emit(bpf.RetConstant{Val: keepAll})

	// DESTROY events, likewise. Without control ports none is wanted,
	// not even one the program could not read.
	a.label(destroy)
	if len(ports) == 0 {
		a.emit(bpf.RetConstant{Val: 0})
		return a.assemble()
	}
	a.emit(bpf.LoadAbsolute{Off: offFamily, Size: 1})
	for _, l := range eventLayouts {
		a.destroyEventBlock(l, ports)
	}
	a.emit(bpf.RetConstant{Val: keepAll})
	return a.assemble()
}

// newEventBlock judges a NEW event if A, the family, is l's: it keeps the
// event of a TCP entry whose original destination port is minDstPort or
// above, drops other entries', and keeps what it cannot read. On another
// family it goes on after the block with A unchanged.
func (a *filterAsm) newEventBlock(l eventLayout, minDstPort uint16) {
	next, keep, drop := a.newLabel(), a.newLabel(), a.newLabel()
	a.jumpTo(bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: uint32(l.family)}, next)
	a.origTuple(l, keep, drop)
	a.jumpTo(bpf.JumpIf{Cond: bpf.JumpLessThan, Val: uint32(minDstPort)}, drop)
	a.ret(keep, keepAll) // falls into keep: the port is high enough
	a.ret(drop, 0)
	a.label(next)
}

// destroyEventBlock judges a DESTROY event if A, the family, is l's: it
// keeps the event of a TCP entry whose original destination port or reply
// source port is one of ports, drops other entries', and keeps what it
// cannot read. On another family it goes on after the block with A
// unchanged.
func (a *filterAsm) destroyEventBlock(l eventLayout, ports []uint16) {
	next, keep, drop := a.newLabel(), a.newLabel(), a.newLabel()
	a.jumpTo(bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: uint32(l.family)}, next)
	a.origTuple(l, keep, drop)
	a.anyPort(ports, keep)

	// X = the reply tuple's offset: the original tuple's, plus its
	// length (in host byte order, zone included) rounded up to 4. A
	// length shorter than what was read inside it is not the layout.
	a.loadHostU16(offOrig)
	a.jumpTo(bpf.JumpIf{Cond: bpf.JumpLessThan, Val: l.tupleLen()}, keep)
	a.emit(bpf.ALUOpConstant{Op: bpf.ALUOpAdd, Val: offOrig + 3})
	a.emit(bpf.ALUOpConstant{Op: bpf.ALUOpAnd, Val: ^uint32(3)})
	a.emit(bpf.TAX{})
	// The reply tuple must hold up to its source port's value: len -
	// need < X keeps the event. origTuple checked that the datagram holds
	// more than need bytes, so the subtraction does not wrap.
	proto := 4 + uint32(l.ipLen) // CTA_TUPLE_PROTO, from the reply tuple
	need := proto + relSrcPort + relPortValue + 2
	a.emit(bpf.LoadExtension{Num: bpf.ExtLen})
	a.emit(bpf.ALUOpConstant{Op: bpf.ALUOpSub, Val: need})
	a.jumpToX(bpf.JumpIfX{Cond: bpf.JumpLessThan}, keep)
	a.attrX(0, ctaTupleReply, 0, keep)
	a.attrX(4, ctaTupleIP, l.ipLen, keep)
	a.attrX(proto, ctaTupleProto, 0, keep)
	a.attrX(proto+relProtoNum, ctaProtoNum, 4+1, keep)
	a.attrX(proto+relSrcPort, ctaProtoSrcPort, 4+2, keep)
	a.emit(bpf.LoadIndirect{Off: proto + relSrcPort + relPortValue, Size: 2})
	a.anyPort(ports, keep)
	a.ret(drop, 0) // falls into drop: neither port matched
	a.ret(keep, keepAll)
	a.label(next)
}

// origTuple checks the layout of the original tuple of a family-l event up
// to its destination port, jumping to keep where it is not that layout, to
// drop if the entry is not TCP, and leaves the destination port in A.
func (a *filterAsm) origTuple(l eventLayout, keep, drop int) {
	proto := uint32(offIP) + uint32(l.ipLen) // CTA_TUPLE_PROTO
	a.emit(bpf.LoadExtension{Num: bpf.ExtLen})
	a.jumpTo(bpf.JumpIf{Cond: bpf.JumpLessThan, Val: proto + relDstPort + relPortValue + 2}, keep)
	a.attr(offOrig, ctaTupleOrig, 0, keep) // its length depends on a zone
	a.attr(offIP, ctaTupleIP, l.ipLen, keep)
	a.attr(proto, ctaTupleProto, 0, keep)
	a.attr(proto+relProtoNum, ctaProtoNum, 4+1, keep)
	a.emit(bpf.LoadAbsolute{Off: proto + relProtoNum + 4, Size: 1})
	a.jumpTo(bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: unix.IPPROTO_TCP}, drop)
	a.attr(proto+relSrcPort, ctaProtoSrcPort, 4+2, keep)
	a.attr(proto+relDstPort, ctaProtoDstPort, 4+2, keep)
	a.emit(bpf.LoadAbsolute{Off: proto + relDstPort + relPortValue, Size: 2}) // big-endian, as ports are
}

// anyPort jumps to keep if A is one of ports.
func (a *filterAsm) anyPort(ports []uint16, keep int) {
	for _, p := range ports {
		a.jumpTo(bpf.JumpIf{Cond: bpf.JumpEqual, Val: uint32(p)}, keep)
	}
}

// ret places label on a return of verdict.
func (a *filterAsm) ret(label int, verdict uint32) {
	a.label(label)
	a.emit(bpf.RetConstant{Val: verdict})
}

// keepAll is a socket filter's verdict to keep the whole datagram.
const keepAll = 0xffffffff

// filterAsm assembles a program whose conditional jumps go forward to
// labels. Each block has labels of its own (newLabel), placed near its
// jumps: a classic BPF conditional jump skips at most 255 instructions.
type filterAsm struct {
	prog   []bpf.Instruction
	jumps  map[int]int // instruction index -> label its true branch goes to
	labels map[int]int // label -> instruction index
	nextID int
}

func (a *filterAsm) emit(ins bpf.Instruction) { a.prog = append(a.prog, ins) }

// newLabel returns a label not used yet, to be placed with label.
func (a *filterAsm) newLabel() int {
	a.nextID++
	return a.nextID
}

// jumpTo emits j, whose true branch goes to label, placed later.
func (a *filterAsm) jumpTo(j bpf.JumpIf, label int) {
	a.markJump(label)
	a.emit(j)
}

// jumpToX emits j (comparing A with X), whose true branch goes to label,
// placed later.
func (a *filterAsm) jumpToX(j bpf.JumpIfX, label int) {
	a.markJump(label)
	a.emit(j)
}

func (a *filterAsm) markJump(label int) {
	if a.jumps == nil {
		a.jumps = map[int]int{}
	}
	a.jumps[len(a.prog)] = label
}

func (a *filterAsm) label(l int) {
	if a.labels == nil {
		a.labels = map[int]int{}
	}
	a.labels[l] = len(a.prog)
}

// attr emits the check of an attribute header the kernel writes at off (in
// host byte order): its type without flags, and its length unless 0. A
// mismatch jumps to keep.
func (a *filterAsm) attr(off uint32, typ, length uint16, keep int) {
	a.attrAt(func(o uint32) bpf.Instruction { return bpf.LoadAbsolute{Off: o, Size: 2} }, off, typ, length, keep)
}

// attrX is attr at X+off.
func (a *filterAsm) attrX(off uint32, typ, length uint16, keep int) {
	a.attrAt(func(o uint32) bpf.Instruction { return bpf.LoadIndirect{Off: o, Size: 2} }, off, typ, length, keep)
}

// attrAt is attr with load16 as the 16-bit load of offset o.
func (a *filterAsm) attrAt(load16 func(o uint32) bpf.Instruction, off uint32, typ, length uint16, keep int) {
	if length != 0 {
		a.emit(load16(off))
		a.jumpTo(bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: hostU16(length)}, keep)
	}
	a.emit(load16(off + 2))
	a.emit(bpf.ALUOpConstant{Op: bpf.ALUOpAnd, Val: hostU16(nlaTypeMask)})
	a.jumpTo(bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: hostU16(typ)}, keep)
}

// loadHostU16 loads into A the value of the 16-bit field the kernel wrote
// at off in host byte order (an attribute's length), byte by byte: BPF
// loads are big-endian. It uses X.
func (a *filterAsm) loadHostU16(off uint32) {
	lo, hi := off, off+1
	if hostU16(1) == 1 { // big-endian host
		lo, hi = off+1, off
	}
	a.emit(bpf.LoadAbsolute{Off: hi, Size: 1})
	a.emit(bpf.ALUOpConstant{Op: bpf.ALUOpShiftLeft, Val: 8})
	a.emit(bpf.TAX{})
	a.emit(bpf.LoadAbsolute{Off: lo, Size: 1})
	a.emit(bpf.ALUOpX{Op: bpf.ALUOpOr})
}

func (a *filterAsm) assemble() ([]bpf.RawInstruction, error) {
	for i, l := range a.jumps {
		to, ok := a.labels[l]
		skip := to - i - 1
		if !ok || skip < 0 || skip > 255 {
			return nil, fmt.Errorf("event filter: jump from %d to label %d (at %d, placed %v)", i, l, to, ok)
		}
		switch j := a.prog[i].(type) {
		case bpf.JumpIf:
			j.SkipTrue = uint8(skip)
			a.prog[i] = j
		case bpf.JumpIfX:
			j.SkipTrue = uint8(skip)
			a.prog[i] = j
		default:
			return nil, fmt.Errorf("event filter: instruction %d (%v) is not a conditional jump", i, j)
		}
	}
	raw, err := bpf.Assemble(a.prog)
	if err != nil {
		return nil, fmt.Errorf("assembling the event filter: %w", err)
	}
	return raw, nil
}

// hostU16 returns what a BPF half-word load (big-endian) reads from a
// 16-bit value the kernel wrote in host byte order, as netlink attribute
// headers are.
func hostU16(v uint16) uint32 {
	var b [2]byte
	binary.NativeEndian.PutUint16(b[:], v)
	return uint32(binary.BigEndian.Uint16(b[:]))
}
