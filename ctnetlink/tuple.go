package ctnetlink

import (
	"errors"
	"fmt"
	"net/netip"
)

// Sentinel errors. Errors returned by this package wrap one of these (or a
// kernel errno) and name the tuple they concern.
var (
	// ErrNotFound means conntrack has no entry for the tuple: the
	// connection was never tracked, has expired, or was NOTRACK'ed.
	ErrNotFound = errors.New("no conntrack entry")
	// ErrInvalidTuple means a Tuple lacks an address or port, or mixes
	// address families.
	ErrInvalidTuple = errors.New("invalid tuple")
	// ErrMalformed means the kernel sent a message this package cannot
	// decode.
	ErrMalformed = errors.New("malformed ctnetlink message")
	// ErrWatching means Watch was called while another Watch on the same
	// Client is running.
	ErrWatching = errors.New("already watching conntrack events")
)

// Tuple is one direction of a TCP connection: a packet travels from Src to
// Dst. Addresses are compared after unmapping IPv4-mapped IPv6 addresses.
type Tuple struct {
	Src, Dst netip.AddrPort
}

// String formats t as "src->dst", the form used in error messages and logs.
func (t Tuple) String() string {
	return t.Src.String() + "->" + t.Dst.String()
}

// Reverse returns the tuple of a packet travelling the other way.
func (t Tuple) Reverse() Tuple {
	return Tuple{Src: t.Dst, Dst: t.Src}
}

// normalize unmaps IPv4-mapped addresses and checks that t can be sent to
// the kernel: both ends valid, non-zero ports, one address family.
func (t Tuple) normalize() (Tuple, error) {
	s := netip.AddrPortFrom(t.Src.Addr().Unmap(), t.Src.Port())
	d := netip.AddrPortFrom(t.Dst.Addr().Unmap(), t.Dst.Port())
	switch {
	case !s.Addr().IsValid() || !d.Addr().IsValid():
		return Tuple{}, fmt.Errorf("tuple %s: missing address: %w", t, ErrInvalidTuple)
	case s.Port() == 0 || d.Port() == 0:
		return Tuple{}, fmt.Errorf("tuple %s: zero port: %w", t, ErrInvalidTuple)
	case s.Addr().Is4() != d.Addr().Is4():
		return Tuple{}, fmt.Errorf("tuple %s: mixed address families: %w", t, ErrInvalidTuple)
	}
	return Tuple{Src: s, Dst: d}, nil
}

// Direction is the conntrack direction of a packet (enum ip_conntrack_dir).
type Direction uint8

const (
	// Original is the direction of the packet that created the entry
	// (for FTP control: client to server).
	Original Direction = iota
	// Reply is the opposite direction.
	Reply
)

func (d Direction) String() string {
	switch d {
	case Original:
		return "original"
	case Reply:
		return "reply"
	}
	return fmt.Sprintf("Direction(%d)", uint8(d))
}

// Entry is the pair of tuples of a TCP conntrack entry, exactly as the
// kernel stores them (ct->tuplehash[IP_CT_DIR_ORIGINAL/REPLY].tuple).
//
// How an entry relates to what ftpalg sees. ftpalg queues packets in mangle
// FORWARD, which runs after DNAT (nat PREROUTING) and before SNAT (nat
// POSTROUTING) in both directions. Conntrack stores Orig as the first packet
// arrived (pre-NAT) and Reply as a reply will arrive on the wire (post-NAT).
// A DNAT rewrites Orig.Dst into Reply.Src; an SNAT rewrites Orig.Src into
// Reply.Dst. So in FORWARD:
//
//	original-direction packet:  Orig.Src  -> Reply.Src   (pre-SNAT, post-DNAT)
//	reply-direction packet:     Reply.Src -> Orig.Src    (mirror image)
//
// and the address the peer sees for the sender (what the kernel FTP helper
// announces: ct->tuplehash[!dir].tuple.dst) is Reply.Dst for an
// original-direction packet and Orig.Dst for a reply-direction packet.
// Worked through the topologies ftpalg must handle (C client, S server, R
// router's public address, V server's inside address, X outside client, I
// router's inside address; lower case letters are ports; the client sends in
// the original direction):
//
//	topology / sender          Orig       Reply      seen in FORWARD      PublicAddr
//	no NAT        client       C:c->S:21  S:21->C:c  C:c->S:21  = Orig    Reply.Dst = C
//	              server                             S:21->C:c  = Reply   Orig.Dst  = S
//	MASQUERADE    client PORT  C:c->S:21  S:21->R:r  C:c->S:21  = Orig    Reply.Dst = R
//	              server                             S:21->C:c  = ¬Orig   Orig.Dst  = S
//	DNAT forward  client       X:x->R:21  V:21->X:x  X:x->V:21  = ¬Reply  Reply.Dst = X
//	              server 227                         V:21->X:x  = Reply   Orig.Dst  = R
//	DNAT+SNAT     client       X:x->R:21  V:21->I:i  X:x->V:21  neither   Reply.Dst = I
//	              server 227                         V:21->X:x  neither   Orig.Dst  = R
//
// (¬T is T reversed.) The seen tuple or its reverse is a key of the kernel's
// conntrack hash in every case but the last, which needs a table walk; see
// Client.Lookup.
type Entry struct {
	Orig, Reply Tuple
	// ID is the entry's CTA_ID, which tells apart most entries that had
	// the same tuples at different times (a port pair reused), so that a
	// DESTROY event of an old entry is not taken for the end of a new
	// one. The kernel computes it (nf_ct_get_id) as a keyed hash of the
	// entry's address, its master, its namespace and its original
	// tuple, all fixed for the entry's life: the value a lookup gives is
	// the one its DESTROY event carries. It is not a counter, though: a
	// connection reopened on the tuples of one that conntrack still held
	// closed (a SYN after a reset or in TIME_WAIT; conntrack kills the
	// old entry and creates the new one at once) usually gets the old
	// entry's memory, hence its ID (in 8 of 9 runs of
	// TestIDReusedPortPair). Different IDs are different entries; equal
	// ones may not be.
	// What orders them is the event socket: the old entry's DESTROY comes
	// before the new one's NEW.
	ID uint32
	// Labels is the entry's CTA_LABELS as the kernel sends it (host-order
	// unsigned longs, see conntrack.Labels), zero-extended to 16 bytes.
	// HasLabels says the kernel sent it, which it does only when some bit
	// is set (measured on 6.18): an entry without the label extension
	// (created before any connlabel rule was loaded) and one whose labels
	// are all zero look the same here.
	Labels    [16]byte
	HasLabels bool
	// TCPState is conntrack's TCP state of the entry (0 when not sent).
	TCPState TCPState
	// SeqAdjust is the entry's IPS_SEQ_ADJUST: the kernel's seqadj
	// extension maps its sequence numbers, by SeqAdj (original direction,
	// then reply), which the kernel sends only then.
	SeqAdjust bool
	SeqAdj    [2]SeqAdj
}

// SeqAdj is one direction's struct nf_ct_seqadj: sequence numbers of that
// direction after Pos are shifted by After, those at or before it by
// Before, and acknowledgements of it back.
type SeqAdj struct {
	Pos           uint32
	Before, After int32
}

// TCPState is enum tcp_conntrack (include/uapi/linux/netfilter/nf_conntrack_tcp.h).
type TCPState uint8

// TCP states this package tells apart.
const (
	TCPSynSent     TCPState = 1 // a SYN seen, nothing back yet
	TCPSynRecv     TCPState = 2 // SYN and SYN/ACK seen
	TCPEstablished TCPState = 3
	TCPTimeWait    TCPState = 7 // both FINs seen and acknowledged
	TCPClose       TCPState = 8 // reset
	TCPSynSent2    TCPState = 9 // a SYN from each side (simultaneous open)
)

// Closed reports whether a connection in state s has ended.
func (s TCPState) Closed() bool { return s == TCPTimeWait || s == TCPClose }

// Opening reports whether a connection in state s is still in its
// handshake: the state of an entry that its first segment created, as a
// NEW event reports it. An entry that ctnetlink created (conntrackd
// committing what another router replicated) is reported NEW in whatever
// state it had there.
func (s TCPState) Opening() bool { return s == TCPSynSent || s == TCPSynRecv || s == TCPSynSent2 }

// ForwardView returns the tuple a packet travelling in direction d has in
// mangle FORWARD (post-DNAT, pre-SNAT).
func (e Entry) ForwardView(d Direction) Tuple {
	if d == Original {
		return Tuple{Src: e.Orig.Src, Dst: e.Reply.Src}
	}
	return Tuple{Src: e.Reply.Src, Dst: e.Orig.Src}
}

// Direction reports which direction a packet seen in mangle FORWARD as seen
// travels in, and false if seen does not belong to e.
func (e Entry) Direction(seen Tuple) (Direction, bool) {
	switch seen {
	case e.ForwardView(Original):
		return Original, true
	case e.ForwardView(Reply):
		return Reply, true
	}
	return 0, false
}

// PublicAddr returns the address the peer sees for the sender of a packet
// travelling in direction d: the destination of the other direction's tuple,
// as the kernel's FTP helper uses it (ct->tuplehash[!dir].tuple.dst).
func (e Entry) PublicAddr(d Direction) netip.Addr {
	if d == Original {
		return e.Reply.Dst.Addr()
	}
	return e.Orig.Dst.Addr()
}

// String formats e like conntrack -L does, orig then reply.
func (e Entry) String() string {
	return "orig " + e.Orig.String() + " reply " + e.Reply.String()
}
