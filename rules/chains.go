package rules

import (
	"errors"
	"fmt"
	"log/slog"
	"slices"
)

// maxJumpDeletes bounds the loop that deletes duplicate jumps, so a
// misbehaving iptables can never make Remove spin.
const maxJumpDeletes = 64

// Chains installs and removes ftpalg's static chains, queue rules and jumps.
// Its methods are not safe for concurrent use; the daemon calls them from
// one goroutine (start-up, periodic Check, shutdown).
type Chains struct {
	cfg Config
	log *slog.Logger
	// active holds the backends of the enabled families.
	active []backend
	// sweep holds a backend for every family whose binary exists, enabled
	// or not, since a previous run may have used a different configuration.
	sweep []backend
}

// NewChains returns a Chains for cfg. It fails with ErrIPTablesMissing when
// the binary for an enabled family is not installed.
func NewChains(cfg Config, log *slog.Logger) (*Chains, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &Chains{cfg: cfg, log: log}
	for _, f := range []Family{IPv4, IPv6} {
		b, err := newBackend(f)
		switch {
		case err != nil && cfg.enabled(f):
			return nil, err
		case err != nil:
			log.Debug("not sweeping disabled family", "family", f, "err", err)
		case cfg.enabled(f):
			c.active = append(c.active, b)
			c.sweep = append(c.sweep, b)
		default:
			c.sweep = append(c.sweep, b)
		}
	}
	return c, nil
}

// Install creates the chains, fills FTPALG-QUEUE, adds the static rules of
// FTPALG-ACCEPT (Config.AcceptMark for nftables pinholes, see NFTable;
// Config.DataMark) and inserts each jump at the head of its built-in chain. It is safe to call again after an
// administrator's reload removed part of the setup: missing pieces are
// added, existing jumps are not duplicated and the pinhole chains keep their
// rules. If Install fails, call Remove to clean up what it added.
func (c *Chains) Install() error {
	for _, b := range c.active {
		if err := c.install(b); err != nil {
			return fmt.Errorf("installing %s chains: %w", b.family(), err)
		}
		c.log.Info("installed iptables chains", "family", b.family(),
			"control_ports", c.cfg.controlPorts(), "queue", c.cfg.QueueNum, "bypass", c.cfg.Bypass)
	}
	return nil
}

func (c *Chains) install(b backend) error {
	// Chains first, so no jump ever points at a missing or empty chain.
	for _, h := range hooks() {
		if h.chain == ChainQueue {
			// Static content: rebuilt so a changed config takes effect,
			// in one transaction, because a predecessor's jumps may
			// already lead here: an empty chain for a moment would let
			// control packets pass unexamined.
			if err := b.ReplaceChain(h.table, h.chain, queueSpecs(c.cfg, b.family())); err != nil {
				return fmt.Errorf("filling %s %s: %w", h.table, h.chain, err)
			}
			continue
		}
		ok, err := b.ChainExists(h.table, h.chain)
		if err != nil {
			return fmt.Errorf("looking up %s %s: %w", h.table, h.chain, err)
		}
		if !ok {
			if err := b.NewChain(h.table, h.chain); err != nil {
				return fmt.Errorf("creating %s %s: %w", h.table, h.chain, err)
			}
		}
	}
	for _, spec := range staticAcceptSpecs(c.cfg) {
		ok, err := b.Exists("filter", ChainAccept, spec...)
		if err != nil {
			return fmt.Errorf("looking up static rule in %s: %w", ChainAccept, err)
		}
		if !ok {
			if err := b.Append("filter", ChainAccept, spec...); err != nil {
				return fmt.Errorf("adding static rule %q: %w", formatRule(spec), err)
			}
		}
	}
	for _, j := range jumpsFor(c.cfg.Role) {
		ok, err := b.Exists(j.table, j.parent, j.spec...)
		if err != nil {
			return fmt.Errorf("looking up jump %s %s -> %s: %w", j.table, j.parent, j.chain, err)
		}
		if ok {
			continue
		}
		if err := b.Insert(j.table, j.parent, 1, j.spec...); err != nil {
			return fmt.Errorf("inserting jump %s %s -> %s: %w", j.table, j.parent, j.chain, err)
		}
	}
	return nil
}

// Check reports whether every jump and queue rule is present for every
// enabled family. A jump implies its chain exists, since iptables refuses
// both a jump to a missing chain and deleting a referenced one. It does not
// insist that the jumps are still first: an administrator may deliberately
// put an INVALID drop ahead of them. When Check returns false, Install
// restores what is missing.
func (c *Chains) Check() (bool, error) {
	for _, b := range c.active {
		// One iptables-save per family; a rule not found in it is asked
		// for with `iptables -C` (present), which decides.
		saved, err := b.Save()
		if err != nil {
			c.log.Debug("iptables-save failed; checking rule by rule", "family", b.family(), "err", err)
		}
		for _, j := range jumpsFor(c.cfg.Role) {
			ok, err := c.present(b, saved, j.table, j.parent, j.spec)
			if err != nil || !ok {
				return false, err
			}
		}
		for _, spec := range staticAcceptSpecs(c.cfg) {
			ok, err := c.present(b, saved, "filter", ChainAccept, spec)
			if err != nil || !ok {
				return false, err
			}
		}
		for _, spec := range queueSpecs(c.cfg, b.family()) {
			ok, err := c.present(b, saved, "mangle", ChainQueue, spec)
			if err != nil || !ok {
				return false, err
			}
		}
	}
	return true, nil
}

// present reports whether one rule exists, logging what is missing: found
// in saved, or else as `iptables -C` says.
func (c *Chains) present(b backend, saved savedRules, table, chain string, spec []string) (bool, error) {
	if saved.has(table, chain, spec) {
		return true, nil
	}
	ok, err := b.Exists(table, chain, spec...)
	if errors.Is(err, errNotExist) {
		ok, err = false, nil
	}
	if err != nil {
		return false, fmt.Errorf("checking %s rule %s %s %q: %w", b.family(), table, chain, formatRule(spec), err)
	}
	if !ok {
		c.log.Debug("iptables rule missing", "family", b.family(), "table", table, "chain", chain, "rule", formatRule(spec))
	}
	return ok, nil
}

// Remove deletes ftpalg's chains, with every rule in them and every jump to
// them, for the enabled families. It keeps going after an error and returns
// all of them.
func (c *Chains) Remove() error {
	var errs []error
	for _, b := range c.active {
		errs = append(errs, c.purge(b))
	}
	return errors.Join(errs...)
}

// Sweep removes what a previous run that crashed or was killed left behind:
// ftpalg's chains and every jump to them, for both families whatever the
// current configuration enables. It does nothing when nothing is left.
// `ftpalg cleanup` uses it; a starting daemon uses SweepDisabled and
// adopts the enabled families' chains with Install.
func (c *Chains) Sweep() error {
	var errs []error
	for _, b := range c.sweep {
		errs = append(errs, c.purge(b))
	}
	return errors.Join(errs...)
}

// SweepDisabled removes ftpalg's chains of the families the configuration
// does not enable (a predecessor ran with another one). The enabled
// families' chains stay: Install takes them over without ever removing a
// queue rule, so no control packet passes unexamined while ftpalg restarts.
func (c *Chains) SweepDisabled() error {
	var errs []error
	for _, b := range c.sweep {
		if !c.cfg.enabled(b.family()) {
			errs = append(errs, c.purge(b))
		}
	}
	return errors.Join(errs...)
}

// purge deletes ftpalg's chains in one family. Jumps are found by listing
// every chain of the table rather than by our exact jump spec, because a
// chain cannot be deleted while anything, including an administrator's rule,
// still references it.
func (c *Chains) purge(b backend) error {
	var errs []error
	hs := hooks()
	slices.Reverse(hs[:]) // stop queueing first
	for _, h := range hs {
		if err := c.purgeChain(b, h); err != nil {
			errs = append(errs, fmt.Errorf("removing %s %s %s: %w", b.family(), h.table, h.chain, err))
		}
	}
	return errors.Join(errs...)
}

func (c *Chains) purgeChain(b backend, h hook) error {
	chains, err := b.ListChains(h.table)
	if err != nil {
		return fmt.Errorf("listing chains: %w", err)
	}
	if !slices.Contains(chains, h.chain) {
		return nil
	}
	for _, ch := range chains {
		if ch == h.chain {
			continue
		}
		if err := c.deleteJumps(b, h.table, ch, h.chain); err != nil {
			return err
		}
	}
	if err := b.ClearChain(h.table, h.chain); err != nil {
		return fmt.Errorf("flushing: %w", err)
	}
	if err := b.DeleteChain(h.table, h.chain); err != nil && !errors.Is(err, errNotExist) {
		return fmt.Errorf("deleting: %w", err)
	}
	c.log.Info("removed iptables chain", "family", b.family(), "table", h.table, "chain", h.chain)
	return nil
}

// deleteJumps deletes every rule in table/chain that jumps or goes to target.
func (c *Chains) deleteJumps(b backend, table, chain, target string) error {
	lines, err := b.List(table, chain)
	if err != nil {
		return fmt.Errorf("listing %s: %w", chain, err)
	}
	deleted := 0
	for _, line := range lines {
		args, err := splitRule(line)
		if err != nil {
			return fmt.Errorf("parsing %s: %w", chain, err)
		}
		_, to, spec, ok := jumpTarget(args)
		if !ok || to != target {
			continue
		}
		if deleted++; deleted > maxJumpDeletes {
			return fmt.Errorf("more than %d jumps from %s", maxJumpDeletes, chain)
		}
		if err := b.Delete(table, chain, spec...); err != nil && !errors.Is(err, errNotExist) {
			return fmt.Errorf("deleting jump %q: %w", line, err)
		}
		if !ownJump(chain, spec) {
			// Not the jump Install adds: somebody else's rule.
			c.log.Warn("deleted rule referencing ftpalg chain", "family", b.family(), "table", table, "rule", line)
		}
	}
	return nil
}
