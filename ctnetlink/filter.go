package ctnetlink

import (
	"encoding/binary"
	"fmt"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// An event filter is a classic BPF program on the event socket that drops,
// in the kernel, the NEW events of connections no pinhole can admit: every
// entry that is not TCP, and TCP entries whose original destination port is
// below a minimum (ftpalg refuses data ports below 1024). A router's other
// traffic (DNS, HTTPS, SSH, the control connections themselves) then never
// wakes the reader, and cannot fill the socket's buffer: an overrun loses
// the events of data connections with the rest, and their pinholes stay open
// until they time out.
//
// The program reads the event's first attributes at fixed offsets: the
// kernel writes CTA_TUPLE_ORIG first, holding CTA_TUPLE_IP (source and
// destination address) and then CTA_TUPLE_PROTO (CTA_PROTO_NUM,
// CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT), as ctnetlink_conntrack_event and
// ctnetlink_dump_tuples lay them out. It checks the header of every
// attribute it passes, and keeps any event whose layout is not exactly
// that: it drops only what it has read in full, and Watch decodes and
// checks what it keeps as before. Event messages come one per datagram, so
// the program sees a whole message.

// Offsets in an event datagram: the netlink header (16 bytes), the
// nfgenmsg (4), then attributes.
const (
	offFamily = 16 // nfgenmsg.nfgen_family
	offOrig   = 20 // CTA_TUPLE_ORIG
	offIP     = 24 // CTA_TUPLE_IP, inside it

	nlaTypeMask = 0x3fff // NLA_TYPE_MASK: without NLA_F_NESTED and NLA_F_NET_BYTEORDER
)

// eventLayout is where the protocol attributes of one address family's
// events are: after an address nest of ipLen bytes.
type eventLayout struct {
	family uint8
	ipLen  uint16 // CTA_TUPLE_IP: header and two addresses with headers
}

var eventLayouts = [...]eventLayout{
	{unix.AF_INET, 4 + 2*(4+4)},
	{unix.AF_INET6, 4 + 2*(4+16)},
}

// EventFilter returns the program that keeps the NEW events of TCP entries
// whose original destination port is minDstPort or above, and of anything
// it cannot read (see above).
func EventFilter(minDstPort uint16) ([]bpf.RawInstruction, error) {
	var a filterAsm
	// A load past the end would drop the event: short ones are kept.
	a.emit(bpf.LoadExtension{Num: bpf.ExtLen})
	a.jumpTo(bpf.JumpIf{Cond: bpf.JumpLessThan, Val: offOrig}, labelKeep)
	a.emit(bpf.LoadAbsolute{Off: offFamily, Size: 1})
	for _, l := range eventLayouts {
		a.jumpTo(bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: uint32(l.family)}, int(l.family))
		proto := uint32(offIP) + uint32(l.ipLen) // CTA_TUPLE_PROTO
		a.emit(bpf.LoadExtension{Num: bpf.ExtLen})
		a.jumpTo(bpf.JumpIf{Cond: bpf.JumpLessThan, Val: proto + 26}, labelKeep)
		a.attr(offOrig, ctaTupleOrig, 0) // its length depends on a zone
		a.attr(offIP, ctaTupleIP, l.ipLen)
		a.attr(proto, ctaTupleProto, 0)
		a.attr(proto+4, ctaProtoNum, 4+1)
		a.emit(bpf.LoadAbsolute{Off: proto + 8, Size: 1})
		a.jumpTo(bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: unix.IPPROTO_TCP}, labelDrop)
		a.attr(proto+12, ctaProtoSrcPort, 4+2)
		a.attr(proto+20, ctaProtoDstPort, 4+2)
		a.emit(bpf.LoadAbsolute{Off: proto + 24, Size: 2}) // big-endian, as ports are
		a.jumpTo(bpf.JumpIf{Cond: bpf.JumpLessThan, Val: uint32(minDstPort)}, labelDrop)
		a.emit(bpf.RetConstant{Val: keepAll})
		a.label(int(l.family))
	}
	a.label(labelKeep)
	a.emit(bpf.RetConstant{Val: keepAll})
	a.label(labelDrop)
	a.emit(bpf.RetConstant{Val: 0})
	return a.assemble()
}

// keepAll is a socket filter's verdict to keep the whole datagram.
const keepAll = 0xffffffff

// Labels of the filter besides the families': a family's label (its
// AF_ number) is the end of its block, where the next family's test is.
const (
	labelKeep = 256 + iota
	labelDrop
)

// filterAsm assembles a program whose conditional jumps go forward to
// labels.
type filterAsm struct {
	prog   []bpf.Instruction
	jumps  map[int]int // instruction index -> label its true branch goes to
	labels map[int]int // label -> instruction index
}

func (a *filterAsm) emit(ins bpf.Instruction) { a.prog = append(a.prog, ins) }

// jumpTo emits j, whose true branch goes to label, placed later.
func (a *filterAsm) jumpTo(j bpf.JumpIf, label int) {
	if a.jumps == nil {
		a.jumps = map[int]int{}
	}
	a.jumps[len(a.prog)] = label
	a.emit(j)
}

func (a *filterAsm) label(l int) {
	if a.labels == nil {
		a.labels = map[int]int{}
	}
	a.labels[l] = len(a.prog)
}

// attr emits the check of an attribute header the kernel writes at off (in
// host byte order): its type without flags, and its length unless 0. A
// mismatch keeps the event.
func (a *filterAsm) attr(off uint32, typ, length uint16) {
	if length != 0 {
		a.emit(bpf.LoadAbsolute{Off: off, Size: 2})
		a.jumpTo(bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: hostU16(length)}, labelKeep)
	}
	a.emit(bpf.LoadAbsolute{Off: off + 2, Size: 2})
	a.emit(bpf.ALUOpConstant{Op: bpf.ALUOpAnd, Val: hostU16(nlaTypeMask)})
	a.jumpTo(bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: hostU16(typ)}, labelKeep)
}

func (a *filterAsm) assemble() ([]bpf.RawInstruction, error) {
	for i, l := range a.jumps {
		to, ok := a.labels[l]
		skip := to - i - 1
		if !ok || skip < 0 || skip > 255 {
			return nil, fmt.Errorf("event filter: jump from %d to label %d (at %d, placed %v)", i, l, to, ok)
		}
		j := a.prog[i].(bpf.JumpIf)
		j.SkipTrue = uint8(skip)
		a.prog[i] = j
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
