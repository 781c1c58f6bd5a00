package rules

import (
	"bytes"
	"errors"
	"fmt"
	"os/exec"
	"strconv"
	"strings"

	"github.com/coreos/go-iptables/iptables"
)

// lockTimeout bounds how long one command waits for the xtables lock held by
// another process (iptables-legacy only; the nf_tables backend has no lock).
const lockTimeout = 10 // seconds

// newBackend returns the iptables backend for f, or an error matching
// ErrIPTablesMissing when the binary is not installed.
func newBackend(f Family) (backend, error) {
	proto := iptables.ProtocolIPv4
	if f == IPv6 {
		proto = iptables.ProtocolIPv6
	}
	ipt, err := iptables.New(iptables.IPFamily(proto), iptables.Timeout(lockTimeout))
	if errors.Is(err, exec.ErrNotFound) {
		return nil, fmt.Errorf("%w: %s (install the iptables package)", ErrIPTablesMissing, f.command())
	}
	if err != nil {
		return nil, fmt.Errorf("setting up %s: %w", f.command(), err)
	}
	path, err := exec.LookPath(f.command())
	if err != nil {
		return nil, fmt.Errorf("%w: %s (install the iptables package)", ErrIPTablesMissing, f.command())
	}
	return goIPTables{ipt: ipt, fam: f, path: path}, nil
}

// goIPTables adapts go-iptables to backend, translating its "does not
// exist" errors to errNotExist.
type goIPTables struct {
	ipt  *iptables.IPTables
	fam  Family
	path string // the iptables or ip6tables binary, for ListChains
}

func (g goIPTables) family() Family { return g.fam }

func (g goIPTables) Exists(table, chain string, spec ...string) (bool, error) {
	ok, err := g.ipt.Exists(table, chain, spec...)
	return ok, g.wrap(err)
}

func (g goIPTables) Insert(table, chain string, pos int, spec ...string) error {
	return g.wrap(g.ipt.Insert(table, chain, pos, spec...))
}

func (g goIPTables) Append(table, chain string, spec ...string) error {
	return g.wrap(g.ipt.Append(table, chain, spec...))
}

func (g goIPTables) Delete(table, chain string, spec ...string) error {
	return g.wrap(g.ipt.Delete(table, chain, spec...))
}

func (g goIPTables) List(table, chain string) ([]string, error) {
	rules, err := g.ipt.List(table, chain)
	return rules, g.wrap(err)
}

// ListChains runs `iptables -t table -S` itself instead of go-iptables'
// ListChains, which (v0.8.0) stops at the first line that is neither -P nor
// -N. iptables-nft 1.8.9 prints "# Table `nat' contains incompatible
// base-chains, use 'nft' tool to list them." first whenever an nftables
// ruleset has its own base chains in the same table (an nftables.conf's
// `table ip nat`): go-iptables then returned no chain at all, so Remove and
// Sweep left FTPALG-DNAT and its jump behind (measured in the rig's
// RouterLocal topologies under the nftables-native ruleset).
func (g goIPTables) ListChains(table string) ([]string, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(g.path, "-t", table, "-S", "--wait", strconv.Itoa(lockTimeout))
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("listing %s table %s: %w: %s", g.path, table, err, bytes.TrimSpace(stderr.Bytes()))
	}
	return chainNames(stdout.String()), nil
}

func (g goIPTables) ChainExists(table, chain string) (bool, error) {
	ok, err := g.ipt.ChainExists(table, chain)
	return ok, g.wrap(err)
}

func (g goIPTables) NewChain(table, chain string) error {
	return g.wrap(g.ipt.NewChain(table, chain))
}

func (g goIPTables) ClearChain(table, chain string) error {
	return g.wrap(g.ipt.ClearChain(table, chain))
}

func (g goIPTables) DeleteChain(table, chain string) error {
	return g.wrap(g.ipt.DeleteChain(table, chain))
}

// ReplaceChain feeds `iptables-restore --noflush` one table section that
// declares chain (which flushes it if it exists) and appends specs: one
// commit for the nf_tables backend, one table replacement for legacy
// iptables. go-iptables has no restore, and flushing then appending rule
// by rule left FTPALG-QUEUE empty for as long as the appends took, so a
// restarted ftpalg let control packets pass unexamined meanwhile.
func (g goIPTables) ReplaceChain(table, chain string, specs [][]string) error {
	bin, err := exec.LookPath(g.fam.command() + "-restore")
	if err != nil {
		return fmt.Errorf("%w: %s-restore (install the iptables package)", ErrIPTablesMissing, g.fam.command())
	}
	var in strings.Builder
	fmt.Fprintf(&in, "*%s\n:%s - [0:0]\n", table, chain)
	for _, spec := range specs {
		fmt.Fprintf(&in, "-A %s %s\n", chain, formatRule(spec))
	}
	in.WriteString("COMMIT\n")
	cmd := exec.Command(bin, "--noflush", fmt.Sprintf("--wait=%d", lockTimeout))
	cmd.Stdin = strings.NewReader(in.String())
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s --noflush replacing %s %s: %w: %s", bin, table, chain, err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

// Save runs iptables-save (or ip6tables-save) once: Chains.Check looks up
// its rules there instead of running `iptables -C` for each of them (about
// ten per family a check).
func (g goIPTables) Save() (savedRules, error) {
	bin, err := exec.LookPath(g.fam.command() + "-save")
	if err != nil {
		return nil, fmt.Errorf("%w: %s-save (install the iptables package)", ErrIPTablesMissing, g.fam.command())
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(bin)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("%s: %w: %s", bin, err, bytes.TrimSpace(stderr.Bytes()))
	}
	return parseSave(stdout.String()), nil
}

// wrap keeps go-iptables' message (it names the command and iptables'
// stderr) and adds errNotExist where iptables said the object is missing.
func (g goIPTables) wrap(err error) error {
	var ierr *iptables.Error
	if errors.As(err, &ierr) && ierr.IsNotExist() {
		return fmt.Errorf("%w: %w", errNotExist, err)
	}
	return err
}
