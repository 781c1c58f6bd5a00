package rules

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"
)

// Table opens and closes pinholes in FTPALG-DNAT and FTPALG-ACCEPT. It is
// safe for concurrent use. Commands run one at a time under a lock: each is
// an exec of iptables, and the kernel serializes ruleset changes anyway.
//
// Pinholes are reference counted, so two sessions that expect the same data
// connection share one set of rules and the last Close removes it.
type Table struct {
	log    *slog.Logger
	static [][]string // FTPALG-ACCEPT's static rules, kept by CloseAll
	v4     backend    // nil when IPv4 is disabled
	v6     backend    // nil when IPv6 is disabled

	mu   sync.Mutex
	open map[Pinhole]int // normalized pinhole -> reference count
}

// NewTable returns a Table for the families cfg enables. It fails with
// ErrIPTablesMissing when a needed binary is not installed. The chains must
// exist (Chains.Install, or the administrator's script) before Open.
func NewTable(cfg Config, log *slog.Logger) (*Table, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	t := &Table{log: log, static: staticAcceptSpecs(cfg), open: make(map[Pinhole]int)}
	var err error
	if cfg.IPv4 {
		if t.v4, err = newBackend(IPv4); err != nil {
			return nil, err
		}
	}
	if cfg.IPv6 {
		if t.v6, err = newBackend(IPv6); err != nil {
			return nil, err
		}
	}
	return t, nil
}

func (t *Table) backend(f Family) backend {
	if f == IPv4 {
		return t.v4
	}
	return t.v6
}

// Open installs the rules for p and returns once they are in the kernel, so
// the caller can release the control packet that announces the data
// connection without the peer's SYN racing the rules.
//
// The ACCEPT goes in before the DNAT: a SYN that is translated is then never
// dropped by the FORWARD policy for lack of its ACCEPT.
func (t *Table) Open(p Pinhole) error {
	n, err := p.normalize()
	if err != nil {
		return fmt.Errorf("opening pinhole: %w", err)
	}
	b := t.backend(n.Family())
	if b == nil {
		return fmt.Errorf("opening pinhole %s: %w: %s", n, ErrFamilyDisabled, n.Family())
	}

	t.mu.Lock()
	defer t.mu.Unlock()
	if refs := t.open[n]; refs > 0 {
		t.open[n] = refs + 1
		t.log.Debug("pinhole already open", "pinhole", n, "refs", refs+1)
		return nil
	}
	start := time.Now()
	if err := b.Append("filter", ChainAccept, n.acceptSpec()...); err != nil {
		return fmt.Errorf("opening pinhole %s: adding ACCEPT: %w", n, err)
	}
	if n.NAT() {
		if err := b.Append("nat", ChainDNAT, n.dnatSpec()...); err != nil {
			if rerr := b.Delete("filter", ChainAccept, n.acceptSpec()...); rerr != nil {
				err = errors.Join(err, fmt.Errorf("rolling back ACCEPT: %w", rerr))
			}
			return fmt.Errorf("opening pinhole %s: adding DNAT: %w", n, err)
		}
	}
	t.open[n] = 1
	t.log.Debug("opened pinhole", "pinhole", n, "took", time.Since(start))
	return nil
}

// Close drops one reference to p and removes its rules with the last one.
// Closing a pinhole that is not open, or whose rules an administrator already
// flushed, succeeds. If removal fails, p stays open and Close can be retried.
func (t *Table) Close(p Pinhole) error {
	n, err := p.normalize()
	if err != nil {
		return fmt.Errorf("closing pinhole: %w", err)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	switch refs := t.open[n]; {
	case refs == 0:
		return nil
	case refs > 1:
		t.open[n] = refs - 1
		return nil
	}
	start := time.Now()
	if err := t.remove(t.backend(n.Family()), n); err != nil {
		return fmt.Errorf("closing pinhole %s: %w", n, err)
	}
	delete(t.open, n)
	t.log.Debug("closed pinhole", "pinhole", n, "took", time.Since(start))
	return nil
}

// remove deletes a pinhole's rules, DNAT first, mirroring Open.
func (t *Table) remove(b backend, n Pinhole) error {
	if n.NAT() {
		if err := b.Delete("nat", ChainDNAT, n.dnatSpec()...); err != nil && !errors.Is(err, errNotExist) {
			return fmt.Errorf("deleting DNAT: %w", err)
		}
	}
	if err := b.Delete("filter", ChainAccept, n.acceptSpec()...); err != nil && !errors.Is(err, errNotExist) {
		return fmt.Errorf("deleting ACCEPT: %w", err)
	}
	return nil
}

// CloseAll empties both pinhole chains in every enabled family, except for
// FTPALG-ACCEPT's static rules, and forgets all open pinholes. Besides closing this run's pinholes at shutdown, it
// clears pinholes a crashed earlier run left in chains the administrator
// owns (--install-rules=false), where Chains.Sweep is not used.
func (t *Table) CloseAll() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	var errs []error
	for _, b := range []backend{t.v4, t.v6} {
		if b == nil {
			continue
		}
		for _, tc := range [...][2]string{{"nat", ChainDNAT}, {"filter", ChainAccept}} {
			// ClearChain would create a missing chain; leave absent ones absent.
			ok, err := b.ChainExists(tc[0], tc[1])
			if err == nil && ok {
				err = b.ClearChain(tc[0], tc[1])
			}
			if err == nil && ok && tc[1] == ChainAccept {
				for _, spec := range t.static {
					if err = b.Append(tc[0], tc[1], spec...); err != nil {
						break
					}
				}
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("flushing %s %s %s: %w", b.family(), tc[0], tc[1], err))
			}
		}
	}
	if len(errs) == 0 {
		clear(t.open)
	}
	return errors.Join(errs...)
}

// Len returns the number of distinct open pinholes.
func (t *Table) Len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.open)
}
