package rules

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"sync"
)

// Ports allocates the public ports ftpalg announces for NAT'd data
// connections. A port is reserved per public address from the moment it is
// announced until its pinhole is closed, so two pending data connections on
// one address never share a DNAT.
//
// Ports only knows its own reservations: the range given to it must not be
// used by other services on the router. It makes no system calls and is safe
// for concurrent use.
type Ports struct {
	lo, hi uint16

	mu   sync.Mutex
	next uint32 // offset into [lo,hi] where the next search starts
	used map[netip.Addr]map[uint16]struct{}
}

// NewPorts returns an allocator drawing from the inclusive range [lo, hi].
func NewPorts(lo, hi uint16) (*Ports, error) {
	if lo == 0 || lo > hi {
		return nil, fmt.Errorf("%w: %d-%d", ErrInvalidPortRange, lo, hi)
	}
	return &Ports{lo: lo, hi: hi, used: make(map[netip.Addr]map[uint16]struct{})}, nil
}

// Range returns the inclusive bounds the allocator draws from.
func (p *Ports) Range() (lo, hi uint16) {
	return p.lo, p.hi
}

// Reserve reserves a port on public and returns it. It returns want when
// want is non-zero and not reserved on public, even if want lies outside the
// range, so that the announced port survives unchanged whenever possible.
// Otherwise it returns a free port from the range, searching round-robin from
// where the last search ended so a just-released port is not reused at once.
func (p *Ports) Reserve(public netip.Addr, want uint16) (uint16, error) {
	key, err := portKey(public)
	if err != nil {
		return 0, fmt.Errorf("reserving port %d: %w", want, err)
	}

	p.mu.Lock()
	defer p.mu.Unlock()
	used := p.used[key]
	if used == nil {
		used = make(map[uint16]struct{})
		p.used[key] = used
	}
	if _, taken := used[want]; want != 0 && !taken {
		used[want] = struct{}{}
		return want, nil
	}
	n := uint32(p.hi-p.lo) + 1
	for i := range n {
		off := (p.next + i) % n
		port := p.lo + uint16(off)
		if _, taken := used[port]; !taken {
			used[port] = struct{}{}
			p.next = (off + 1) % n
			return port, nil
		}
	}
	return 0, fmt.Errorf("reserving port on %v: %w %d-%d", key, ErrNoFreePort, p.lo, p.hi)
}

// Release frees a port reserved on public. Releasing a port that is not
// reserved does nothing.
func (p *Ports) Release(public netip.Addr, port uint16) {
	key, err := portKey(public)
	if err != nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	used := p.used[key]
	delete(used, port)
	if len(used) == 0 {
		delete(p.used, key)
	}
}

// Reserved reports whether port is currently reserved on public.
func (p *Ports) Reserved(public netip.Addr, port uint16) bool {
	key, err := portKey(public)
	if err != nil {
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	_, ok := p.used[key][port]
	return ok
}

// portKey normalizes an address so that mapped and plain IPv4 spellings
// share reservations.
func portKey(a netip.Addr) (netip.Addr, error) {
	if !a.IsValid() {
		return netip.Addr{}, fmt.Errorf("%w: missing public address", ErrInvalidAddress)
	}
	return a.Unmap().WithZone(""), nil
}

// ParsePortRange parses "lo-hi" (or a single port "p") as an inclusive port
// range, as given to --data-ports.
func ParsePortRange(s string) (lo, hi uint16, err error) {
	los, his, found := strings.Cut(s, "-")
	if !found {
		his = los
	}
	l, err1 := strconv.ParseUint(los, 10, 16)
	h, err2 := strconv.ParseUint(his, 10, 16)
	if err1 != nil || err2 != nil || l == 0 || l > h {
		return 0, 0, fmt.Errorf("%w: %q", ErrInvalidPortRange, s)
	}
	return uint16(l), uint16(h), nil
}
