package rules

import (
	"errors"
	"fmt"
	"net/netip"
)

// Pinhole admits exactly one expected FTP data connection: TCP, state NEW,
// from Peer to Public, forwarded to Target.
type Pinhole struct {
	// Peer is the source address of the data connection's SYN as it arrives
	// at the router (before any SNAT the router applies on the way out).
	Peer netip.Addr
	// Public is the destination the peer connects to: the address and port
	// announced to it in PORT/EPRT/227/229.
	Public netip.AddrPort
	// Target is the real endpoint. It equals Public when no NAT is involved,
	// and then only an ACCEPT is installed.
	Target netip.AddrPort
}

// NAT reports whether the pinhole needs a DNAT from Public to Target.
func (p Pinhole) NAT() bool {
	return p.Public != p.Target
}

// Family returns the pinhole's address family.
func (p Pinhole) Family() Family {
	return familyOf(p.Peer)
}

// String describes the pinhole as "peer -> public -> target", or
// "peer -> target" without NAT. It is also the rules' comment.
func (p Pinhole) String() string {
	if !p.NAT() {
		return fmt.Sprintf("%s -> %s", p.Peer, p.Target)
	}
	return fmt.Sprintf("%s -> %s -> %s", p.Peer, p.Public, p.Target)
}

// normalize validates p and unmaps IPv4-mapped IPv6 addresses, which arise
// from converting 16-byte net.IP values, so one pinhole has one spelling.
func (p Pinhole) normalize() (Pinhole, error) {
	n := Pinhole{
		Peer:   p.Peer.Unmap(),
		Public: netip.AddrPortFrom(p.Public.Addr().Unmap(), p.Public.Port()),
		Target: netip.AddrPortFrom(p.Target.Addr().Unmap(), p.Target.Port()),
	}
	for _, c := range []struct {
		what string
		addr netip.Addr
	}{
		{"peer", n.Peer},
		{"public", n.Public.Addr()},
		{"target", n.Target.Addr()},
	} {
		if err := checkHost(c.addr); err != nil {
			return Pinhole{}, fmt.Errorf("%w %s: %s address %v", ErrInvalidPinhole, p, c.what, err)
		}
	}
	if n.Public.Port() == 0 || n.Target.Port() == 0 {
		return Pinhole{}, fmt.Errorf("%w %s: port 0", ErrInvalidPinhole, p)
	}
	if n.Peer.Is4() != n.Public.Addr().Is4() || n.Peer.Is4() != n.Target.Addr().Is4() {
		return Pinhole{}, fmt.Errorf("%w %s: mixed address families", ErrInvalidPinhole, p)
	}
	return n, nil
}

// checkHost rejects addresses that cannot name one unicast host in a rule.
func checkHost(a netip.Addr) error {
	switch {
	case !a.IsValid():
		return errors.New("missing")
	case a.Zone() != "":
		return fmt.Errorf("%v has a zone", a)
	case a.IsUnspecified(), a.IsMulticast():
		return fmt.Errorf("%v is not a unicast host", a)
	}
	return nil
}

// hostPrefix renders a as a full-length prefix, the form iptables prints.
func hostPrefix(a netip.Addr) string {
	return netip.PrefixFrom(a, a.BitLen()).String()
}
