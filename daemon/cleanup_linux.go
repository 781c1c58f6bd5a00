package daemon

import (
	"errors"
	"fmt"

	"github.com/ftpalg/ftpalg/rules"
)

// Cleanup removes whatever a previous run left in the kernel: after a
// handover (SIGTERM) with no successor, a crash or an error exit, the queue
// rules still divert control packets, which are dropped while no ftpalg is
// bound. It removes ftpalg's chains and jumps (both families; with
// --install-rules=false only the pinholes in the administrator's chains)
// and its nftables tables. It is idempotent: nothing there, nothing done.
// It must not run while an ftpalg serves the same rules.
func Cleanup(cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	if err := checkCapability(); err != nil {
		return err
	}
	log := cfg.Log
	rcfg := cfg.rulesConfig()
	var errs []error
	if cfg.InstallRules {
		chains, err := rules.NewChains(rcfg, log)
		if err != nil {
			return fmt.Errorf("%w: %w", ErrEnvironment, err)
		}
		if err := chains.Sweep(); err != nil {
			errs = append(errs, fmt.Errorf("removing chains: %w", err))
		}
	} else {
		tab, err := rules.NewTable(rcfg, log)
		if err != nil {
			return fmt.Errorf("%w: %w", ErrEnvironment, err)
		}
		if err := tab.CloseAll(); err != nil {
			errs = append(errs, fmt.Errorf("emptying pinhole chains: %w", err))
		}
	}
	if cfg.Pinholes == NFTables {
		nft, err := rules.NewNFTable(rcfg, cfg.PinholeTimeout, log)
		if err != nil {
			return fmt.Errorf("%w: %w", ErrEnvironment, err)
		}
		if err := nft.Sweep(); err != nil {
			errs = append(errs, fmt.Errorf("removing nftables tables: %w", err))
		}
	}
	// The seqadj table is removed whatever --kernel-seqadj says now: a
	// previous run may have had it.
	sq, err := rules.NewSeqAdjTable(rcfg, log)
	if err == nil {
		err = sq.Remove()
	}
	if err != nil {
		errs = append(errs, fmt.Errorf("removing the seqadj table: %w", err))
	}
	return errors.Join(errs...)
}
