package daemon

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/ftpalg/ftpalg/conntrack"
	"github.com/ftpalg/ftpalg/ctnetlink"
)

// Mapper looks up how the kernel translates a control connection. The
// ctnetlink client implements it.
type Mapper interface {
	PublicAddr(seen ctnetlink.Tuple) (netip.Addr, error)
}

// PortReserver hands out public data ports. rules.Ports implements it.
type PortReserver interface {
	Reserve(public netip.Addr, want uint16) (uint16, error)
	Release(public netip.Addr, port uint16)
}

// natResolver answers the engine's NAT questions from the kernel's
// conntrack table, with the admin's --public-ip as an override.
type natResolver struct {
	mapper   Mapper
	ports    PortReserver
	override [2]netip.Addr // IPv4 and IPv6 overrides, if set
}

func (n *natResolver) overrideFor(a netip.Addr) netip.Addr {
	if a.Is4() {
		return n.override[0]
	}
	return n.override[1]
}

// PublicAddr returns the address the peer sees for the sender. The
// conntrack entry of the control connection says whether the sender is
// translated; when it is, an override replaces the translated address (for
// routers behind yet another NAT). Without an entry, the override is the
// only answer.
func (n *natResolver) PublicAddr(c conntrack.Conn, fromClient bool) (netip.Addr, error) {
	seen := ctnetlink.Tuple{Src: c.Server, Dst: c.Client}
	sender := c.Server.Addr()
	if fromClient {
		seen, sender = ctnetlink.Tuple{Src: c.Client, Dst: c.Server}, c.Client.Addr()
	}
	pub, err := n.mapper.PublicAddr(seen)
	override := n.overrideFor(sender)
	switch {
	case err == nil && pub != sender && override.IsValid():
		return override, nil
	case err == nil:
		return pub, nil
	case errors.Is(err, ctnetlink.ErrNotFound) && override.IsValid():
		return override, nil
	}
	return netip.Addr{}, fmt.Errorf("public address of %s: %w", sender, err)
}

// ReservePort reserves a public data port.
func (n *natResolver) ReservePort(public netip.Addr, want uint16) (uint16, error) {
	return n.ports.Reserve(public, want)
}
