// Package pinsync carries pending pinholes between the two routers of an
// HA pair. conntrackd replicates conntrack entries, not nftables sets: a
// data connection announced (PORT, 227) on the master but started after a
// failover meets no pinhole on the new master and is refused. With
// pinsync, each router's ftpalg sends every pinhole it opens to the other
// over the sync link, one datagram each, and the receiver opens the same
// pinhole with the timeout the sender had left, so it expires on both at
// about the same time. Set elements are idempotent and expire by
// themselves: a lost or duplicated datagram costs at most the one data
// connection it describes, so there are no acknowledgements, sequence
// numbers or retransmissions.
//
// The wire format (Encode, Decode, Check) is pure: bytes in, values out,
// bounded, versioned, never a panic on any input. The UDP link is in
// link_linux.go.
package pinsync

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"time"
)

// Errors of the package. Decode and Check wrap ErrMalformed and ErrPolicy
// with what was wrong.
var (
	// ErrMalformed reports a datagram that is not a valid message.
	ErrMalformed = errors.New("malformed pinsync message")
	// ErrVersion reports a message of a version this build does not read
	// (a newer peer); it wraps ErrMalformed.
	ErrVersion = fmt.Errorf("%w: unknown version", ErrMalformed)
	// ErrPolicy reports a well-formed pinhole this router must not open.
	ErrPolicy = errors.New("pinhole refused by policy")
	// ErrPeer reports a datagram from an address other than the peer's.
	ErrPeer = errors.New("datagram not from the sync peer")
	// ErrClosed reports use of a closed link.
	ErrClosed = errors.New("pinsync link closed")
)

// Version is the wire format this package writes and reads.
const Version = 1

// magic opens every message, so stray traffic on the port is recognised
// as such and not as a version mismatch.
var magic = [4]byte{'f', 't', 'p', 's'}

// Type is what a message says.
type Type uint8

const (
	// TypePinhole: the sender opened (or restarted the clock of) a
	// pinhole; the receiver opens it for Timeout.
	TypePinhole Type = 1
	// TypeResync: the sender has just started and asks for every pinhole
	// the receiver has open (a returning router of a failback, whose
	// peer opened pinholes while it was down).
	TypeResync Type = 2
)

func (t Type) String() string {
	switch t {
	case TypePinhole:
		return "pinhole"
	case TypeResync:
		return "resync"
	}
	return fmt.Sprintf("type %d", uint8(t))
}

// Message is one datagram's content.
type Message struct {
	Type Type
	// Session is the sender's session id of the control connection that
	// announced the pinhole, for the receiver's log line.
	Session uint64
	// Timeout is what was left of the pinhole's timeout when it was sent.
	Timeout time.Duration
	// Peer may connect to Public, which is translated to Target (equal to
	// Public without NAT): rules.Pinhole's fields.
	Peer           netip.Addr
	Public, Target netip.AddrPort
}

// Layout (all integers big-endian):
//
//	0  4  magic "ftps"
//	4  1  version (1)
//	5  1  type (1 pinhole, 2 resync)
//	6  2  zero
//	   -- a resync request ends here (8 bytes) --
//	8  8  session id
//	16 4  timeout, milliseconds, 1 to MaxTimeout
//	20 1  address family: 4 or 6
//	21 1  zero
//	22 2  public port
//	24 2  target port
//	26 2  zero
//	28 A  peer address, then public, then target (A = 4 or 16 bytes each)
//
// A pinhole is 40 bytes (IPv4) or 76 (IPv6); any other length is
// malformed, and so are non-zero reserved bytes: a later version that
// needs them bumps the version.
const (
	headerLen = 8
	fixedLen  = 28
	// MaxLen is the longest message: a buffer of this size receives any.
	MaxLen = fixedLen + 3*16
)

// MaxTimeout bounds the timeout on the wire (a uint32 of milliseconds
// holds 49 days; no pinhole lives longer than an hour).
const MaxTimeout = time.Hour

// Encode appends m's wire form to b. It fails on a message that Decode
// would refuse, so a sender never puts garbage on the link.
func Encode(b []byte, m Message) ([]byte, error) {
	b = append(b, magic[:]...)
	b = append(b, Version, byte(m.Type), 0, 0)
	switch m.Type {
	case TypeResync:
		return b, nil
	case TypePinhole:
	default:
		return nil, fmt.Errorf("encoding: %w: %v", ErrMalformed, m.Type)
	}
	peer, pub, tgt := m.Peer.Unmap(), m.Public.Addr().Unmap(), m.Target.Addr().Unmap()
	if err := checkAddrs(peer, pub, tgt); err != nil {
		return nil, fmt.Errorf("encoding pinhole: %w", err)
	}
	if m.Timeout < time.Millisecond || m.Timeout > MaxTimeout {
		return nil, fmt.Errorf("encoding pinhole: %w: timeout %v", ErrMalformed, m.Timeout)
	}
	fam := byte(4)
	if peer.Is6() {
		fam = 6
	}
	b = binary.BigEndian.AppendUint64(b, m.Session)
	b = binary.BigEndian.AppendUint32(b, uint32(m.Timeout/time.Millisecond))
	b = append(b, fam, 0)
	b = binary.BigEndian.AppendUint16(b, m.Public.Port())
	b = binary.BigEndian.AppendUint16(b, m.Target.Port())
	b = append(b, 0, 0)
	for _, a := range []netip.Addr{peer, pub, tgt} {
		b = append(b, a.AsSlice()...)
	}
	return b, nil
}

// checkAddrs requires three valid, zone-free addresses of one family.
func checkAddrs(peer, pub, tgt netip.Addr) error {
	for _, a := range []netip.Addr{peer, pub, tgt} {
		if !a.IsValid() || a.Zone() != "" {
			return fmt.Errorf("%w: address %v", ErrMalformed, a)
		}
	}
	if peer.Is4() != pub.Is4() || peer.Is4() != tgt.Is4() {
		return fmt.Errorf("%w: mixed address families", ErrMalformed)
	}
	return nil
}

// Decode parses one datagram. It never panics and reads nothing beyond
// b; every error wraps ErrMalformed.
func Decode(b []byte) (Message, error) {
	if len(b) < headerLen {
		return Message{}, fmt.Errorf("%w: %d bytes", ErrMalformed, len(b))
	}
	if [4]byte(b[:4]) != magic {
		return Message{}, fmt.Errorf("%w: no magic", ErrMalformed)
	}
	if b[4] != Version {
		return Message{}, fmt.Errorf("%w %d (this ftpalg reads %d)", ErrVersion, b[4], Version)
	}
	if b[6] != 0 || b[7] != 0 {
		return Message{}, fmt.Errorf("%w: reserved header bytes set", ErrMalformed)
	}
	m := Message{Type: Type(b[5])}
	switch m.Type {
	case TypeResync:
		if len(b) != headerLen {
			return Message{}, fmt.Errorf("%w: resync of %d bytes", ErrMalformed, len(b))
		}
		return m, nil
	case TypePinhole:
	default:
		return Message{}, fmt.Errorf("%w: %v", ErrMalformed, m.Type)
	}
	if len(b) < fixedLen {
		return Message{}, fmt.Errorf("%w: pinhole of %d bytes", ErrMalformed, len(b))
	}
	alen := 0
	switch b[20] {
	case 4:
		alen = 4
	case 6:
		alen = 16
	default:
		return Message{}, fmt.Errorf("%w: address family %d", ErrMalformed, b[20])
	}
	if len(b) != fixedLen+3*alen {
		return Message{}, fmt.Errorf("%w: IPv%d pinhole of %d bytes", ErrMalformed, b[20], len(b))
	}
	if b[21] != 0 || b[26] != 0 || b[27] != 0 {
		return Message{}, fmt.Errorf("%w: reserved bytes set", ErrMalformed)
	}
	m.Session = binary.BigEndian.Uint64(b[8:16])
	ms := binary.BigEndian.Uint32(b[16:20])
	m.Timeout = time.Duration(ms) * time.Millisecond
	if ms == 0 || m.Timeout > MaxTimeout {
		return Message{}, fmt.Errorf("%w: timeout %v", ErrMalformed, m.Timeout)
	}
	addr := func(i int) netip.Addr {
		off := fixedLen + i*alen
		a, _ := netip.AddrFromSlice(b[off : off+alen]) // alen is 4 or 16
		return a
	}
	m.Peer = addr(0)
	m.Public = netip.AddrPortFrom(addr(1), binary.BigEndian.Uint16(b[22:24]))
	m.Target = netip.AddrPortFrom(addr(2), binary.BigEndian.Uint16(b[24:26]))
	if m.Peer.Is4In6() || m.Public.Addr().Is4In6() || m.Target.Addr().Is4In6() {
		// One pinhole, one spelling: IPv4 travels as family 4.
		return Message{}, fmt.Errorf("%w: IPv4-mapped address in an IPv6 pinhole", ErrMalformed)
	}
	return m, nil
}

// Policy is what a receiver accepts beyond a well-formed message.
type Policy struct {
	// MaxTimeout is the receiver's own --pinhole-timeout: a peer can
	// never make a pinhole here live longer than one opened here.
	MaxTimeout time.Duration
}

// Check says whether a decoded pinhole may be opened here. What it can
// check without knowing the router's addresses (a backup does not hold
// the virtual addresses a pinhole's public side uses): ports from 1024 on
// (the engine refuses announcements of lower ports, so an honest peer
// never sends one), a timeout within the receiver's own, and addresses
// that each name one unicast host somewhere else (not unspecified,
// loopback, link-local, multicast or the IPv4 broadcast). Whether Target
// is really behind this router is not checkable here; the sender checked
// it when it rewrote the announcement, and only the configured peer's
// datagrams get this far.
func Check(m Message, p Policy) error {
	if m.Type != TypePinhole {
		return fmt.Errorf("%w: %v is not a pinhole", ErrPolicy, m.Type)
	}
	if m.Timeout <= 0 || m.Timeout > p.MaxTimeout {
		return fmt.Errorf("%w: timeout %v beyond this router's pinhole timeout %v", ErrPolicy, m.Timeout, p.MaxTimeout)
	}
	for _, port := range []uint16{m.Public.Port(), m.Target.Port()} {
		if port < 1024 {
			return fmt.Errorf("%w: port %d below 1024", ErrPolicy, port)
		}
	}
	for _, c := range []struct {
		what string
		a    netip.Addr
	}{{"peer", m.Peer}, {"public", m.Public.Addr()}, {"target", m.Target.Addr()}} {
		a := c.a
		switch {
		case !a.IsValid() || a.Zone() != "":
			return fmt.Errorf("%w: %s address %v", ErrPolicy, c.what, a)
		case a.IsUnspecified(), a.IsLoopback(), a.IsMulticast(), a.IsLinkLocalUnicast(),
			a.IsLinkLocalMulticast(), a.IsInterfaceLocalMulticast(), a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
			return fmt.Errorf("%w: %s address %v is not a unicast host", ErrPolicy, c.what, a)
		}
	}
	if m.Peer.Is4() != m.Public.Addr().Is4() || m.Peer.Is4() != m.Target.Addr().Is4() {
		return fmt.Errorf("%w: mixed address families", ErrPolicy)
	}
	return nil
}
