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
	// leftovers are pinhole rules a predecessor left (AdoptLeftovers).
	leftovers []leftover
}

// leftover is one pinhole rule of a previous run, as iptables -S lists it.
type leftover struct {
	b            backend
	table, chain string
	spec         []string
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

// AdoptLeftovers records the pinhole rules a previous run left in
// FTPALG-DNAT and FTPALG-ACCEPT (every rule but the static ones) and
// returns how many there are. A restarted daemon keeps them, so a data
// connection announced just before the restart still gets through, and
// calls RemoveLeftovers once the pinhole timeout has passed, so none
// outlives its timeout by much. Chains that do not exist hold nothing.
func (t *Table) AdoptLeftovers() (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	static := make(map[string]bool, len(t.static))
	for _, spec := range t.static {
		static[formatRule(spec)] = true
	}
	var errs []error
	for _, b := range []backend{t.v4, t.v6} {
		if b == nil {
			continue
		}
		// DNAT first, so RemoveLeftovers mirrors Table.remove.
		for _, tc := range [...][2]string{{"nat", ChainDNAT}, {"filter", ChainAccept}} {
			lines, err := b.List(tc[0], tc[1])
			if errors.Is(err, errNotExist) {
				continue
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("listing %s %s %s: %w", b.family(), tc[0], tc[1], err))
				continue
			}
			for _, line := range lines {
				args, err := splitRule(line)
				if err != nil {
					errs = append(errs, fmt.Errorf("parsing %s %s: %w", b.family(), tc[1], err))
					continue
				}
				if len(args) < 3 || args[0] != "-A" || args[1] != tc[1] || static[formatRule(args[2:])] {
					continue
				}
				t.leftovers = append(t.leftovers, leftover{b: b, table: tc[0], chain: tc[1], spec: args[2:]})
			}
		}
	}
	return len(t.leftovers), errors.Join(errs...)
}

// RemoveLeftovers deletes the rules AdoptLeftovers recorded, one copy
// each: a pinhole this run opened again with the same rule keeps its own.
func (t *Table) RemoveLeftovers() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	var errs []error
	for _, l := range t.leftovers {
		if err := l.b.Delete(l.table, l.chain, l.spec...); err != nil && !errors.Is(err, errNotExist) {
			errs = append(errs, fmt.Errorf("deleting leftover pinhole rule %s %s %q: %w", l.table, l.chain, formatRule(l.spec), err))
		}
	}
	t.leftovers = nil
	return errors.Join(errs...)
}

// Len returns the number of distinct open pinholes.
func (t *Table) Len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.open)
}
