package rules

import (
	"errors"
	"net/netip"
	"sync"
	"testing"
)

var (
	pub1 = netip.MustParseAddr("198.51.100.1")
	pub2 = netip.MustParseAddr("198.51.100.2")
)

func mustPorts(t *testing.T, lo, hi uint16) *Ports {
	t.Helper()
	p, err := NewPorts(lo, hi)
	if err != nil {
		t.Fatalf("NewPorts(%d, %d): %v", lo, hi, err)
	}
	return p
}

func mustReserve(t *testing.T, p *Ports, a netip.Addr, want uint16) uint16 {
	t.Helper()
	got, err := p.Reserve(a, want)
	if err != nil {
		t.Fatalf("Reserve(%v, %d): %v", a, want, err)
	}
	return got
}

func TestPortsWantedPort(t *testing.T) {
	p := mustPorts(t, 50000, 50009)
	// The announced port is kept when free, even outside the range.
	if got := mustReserve(t, p, pub1, 2121); got != 2121 {
		t.Errorf("first Reserve(2121) = %d, want 2121", got)
	}
	// Taken on this address: a port from the range instead.
	if got := mustReserve(t, p, pub1, 2121); got < 50000 || got > 50009 {
		t.Errorf("second Reserve(2121) = %d, want one in 50000-50009", got)
	}
	// Reservations are per public address.
	if got := mustReserve(t, p, pub2, 2121); got != 2121 {
		t.Errorf("Reserve(2121) on another address = %d, want 2121", got)
	}
	// A mapped spelling is the same address.
	if got := mustReserve(t, p, netip.AddrFrom16(pub2.As16()), 2121); got == 2121 {
		t.Errorf("Reserve(2121) on mapped %v returned the port reserved on %v", netip.AddrFrom16(pub2.As16()), pub2)
	}
	p.Release(pub1, 2121)
	if p.Reserved(pub1, 2121) {
		t.Errorf("port 2121 still reserved after Release")
	}
	if got := mustReserve(t, p, pub1, 2121); got != 2121 {
		t.Errorf("Reserve(2121) after Release = %d, want 2121", got)
	}
}

func TestPortsRoundRobinAndExhaustion(t *testing.T) {
	p := mustPorts(t, 50000, 50003)
	var got []uint16
	for range 4 {
		got = append(got, mustReserve(t, p, pub1, 0))
	}
	want := []uint16{50000, 50001, 50002, 50003}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("reserved %v, want %v", got, want)
		}
	}
	if _, err := p.Reserve(pub1, 0); !errors.Is(err, ErrNoFreePort) {
		t.Fatalf("Reserve on full range: error %v, want ErrNoFreePort", err)
	}
	if _, err := p.Reserve(pub1, 50001); !errors.Is(err, ErrNoFreePort) {
		t.Fatalf("Reserve(taken port) on full range: error %v, want ErrNoFreePort", err)
	}
	// Free two; the search continues after the last port handed out, so
	// the lower released port is not simply reused first.
	p.Release(pub1, 50001)
	p.Release(pub1, 50003)
	if got := mustReserve(t, p, pub1, 0); got != 50001 {
		t.Errorf("after releasing 50001 and 50003, got %d; want 50001 (search wraps from 50000)", got)
	}
	if got := mustReserve(t, p, pub1, 0); got != 50003 {
		t.Errorf("next reserve = %d, want 50003", got)
	}
	// Another address has its own full range.
	if got := mustReserve(t, p, pub2, 0); got < 50000 || got > 50003 {
		t.Errorf("reserve on %v = %d, want one in range", pub2, got)
	}
}

func TestPortsNotLowestFirst(t *testing.T) {
	p := mustPorts(t, 100, 199)
	a := mustReserve(t, p, pub1, 0)
	p.Release(pub1, a)
	if b := mustReserve(t, p, pub1, 0); b == a {
		t.Errorf("released port %d handed out again immediately", a)
	}
}

func TestPortsInvalid(t *testing.T) {
	for _, r := range [][2]uint16{{0, 10}, {10, 9}} {
		if _, err := NewPorts(r[0], r[1]); !errors.Is(err, ErrInvalidPortRange) {
			t.Errorf("NewPorts(%d, %d) error = %v, want ErrInvalidPortRange", r[0], r[1], err)
		}
	}
	p := mustPorts(t, 1, 1)
	if _, err := p.Reserve(netip.Addr{}, 21); !errors.Is(err, ErrInvalidAddress) {
		t.Errorf("Reserve(invalid addr) error = %v, want ErrInvalidAddress", err)
	}
	p.Release(netip.Addr{}, 21) // must not panic
	p.Release(pub1, 12345)      // not reserved: no-op
}

// TestPortsConcurrent hands out the whole range from many goroutines and
// checks no port is given twice; run with -race.
func TestPortsConcurrent(t *testing.T) {
	const lo, hi, workers = 40000, 40999, 8
	p := mustPorts(t, lo, hi)
	var (
		mu   sync.Mutex
		seen = make(map[uint16]int)
		wg   sync.WaitGroup
	)
	for range workers {
		wg.Go(func() {
			for {
				port, err := p.Reserve(pub1, 0)
				if errors.Is(err, ErrNoFreePort) {
					return
				}
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				seen[port]++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if len(seen) != hi-lo+1 {
		t.Errorf("handed out %d distinct ports, want %d", len(seen), hi-lo+1)
	}
	for port, n := range seen {
		if n != 1 {
			t.Errorf("port %d handed out %d times", port, n)
		}
	}
	// Churn: reserve and release concurrently with no lost updates.
	for port := range seen {
		p.Release(pub1, port)
	}
	for range workers {
		wg.Go(func() {
			for range 500 {
				port, err := p.Reserve(pub1, 0)
				if err != nil {
					t.Error(err)
					return
				}
				p.Release(pub1, port)
			}
		})
	}
	wg.Wait()
	for port := uint16(lo); port <= hi; port++ {
		if p.Reserved(pub1, port) {
			t.Fatalf("port %d still reserved after churn", port)
		}
	}
}

func TestParsePortRange(t *testing.T) {
	tests := []struct {
		in     string
		lo, hi uint16
		ok     bool
	}{
		{"50000-50999", 50000, 50999, true},
		{"2121", 2121, 2121, true},
		{"1-65535", 1, 65535, true},
		{"0-10", 0, 0, false},
		{"10-9", 0, 0, false},
		{"1-65536", 0, 0, false},
		{"", 0, 0, false},
		{"-", 0, 0, false},
		{"a-b", 0, 0, false},
		{" 1-2", 0, 0, false},
		{"1-2-3", 0, 0, false},
		{"+1-2", 0, 0, false},
	}
	for _, tt := range tests {
		lo, hi, err := ParsePortRange(tt.in)
		if tt.ok != (err == nil) || lo != tt.lo || hi != tt.hi {
			t.Errorf("ParsePortRange(%q) = %d, %d, %v; want %d, %d, ok=%v", tt.in, lo, hi, err, tt.lo, tt.hi, tt.ok)
		}
		if err != nil && !errors.Is(err, ErrInvalidPortRange) {
			t.Errorf("ParsePortRange(%q) error %v is not ErrInvalidPortRange", tt.in, err)
		}
	}
}
