package rules

import (
	"errors"
	"slices"
	"strings"
)

// backend runs iptables commands for one address family. The Linux
// implementation execs iptables or ip6tables through go-iptables; the
// interface keeps Chains and Table free of platform code.
//
// Methods that act on a rule or chain that does not exist return an error
// matching errNotExist.
type backend interface {
	family() Family
	Exists(table, chain string, spec ...string) (bool, error)
	Insert(table, chain string, pos int, spec ...string) error
	Append(table, chain string, spec ...string) error
	Delete(table, chain string, spec ...string) error
	// List returns the chain's rules as `iptables -S` prints them.
	List(table, chain string) ([]string, error)
	ListChains(table string) ([]string, error)
	ChainExists(table, chain string) (bool, error)
	NewChain(table, chain string) error
	// ClearChain empties a chain, creating it if needed.
	ClearChain(table, chain string) error
	DeleteChain(table, chain string) error
	// ReplaceChain makes chain hold exactly specs, creating it if needed,
	// in one kernel transaction: packets see either the old rules or the
	// new ones, never an empty chain.
	ReplaceChain(table, chain string, specs [][]string) error
	// Save lists every rule of every table in one run (iptables-save).
	Save() (savedRules, error)
}

// savedRules are the rules of one family as iptables-save printed them:
// per table and chain, each rule's arguments after "-A chain", unquoted
// (splitRule).
type savedRules map[[2]string][][]string

// parseSave reads iptables-save output. Lines it cannot split are skipped:
// a rule ftpalg looks for and does not find this way is confirmed with
// `iptables -C` (Chains.Check), so a surprise costs an exec, never a
// wrong answer.
func parseSave(out string) savedRules {
	s := savedRules{}
	table := ""
	for _, line := range strings.Split(out, "\n") {
		switch {
		case strings.HasPrefix(line, "*"):
			table = strings.TrimSpace(line[1:])
		case strings.HasPrefix(line, "-A "):
			args, err := splitRule(line)
			if err != nil || len(args) < 2 {
				continue
			}
			key := [2]string{table, args[1]}
			s[key] = append(s[key], args[2:])
		}
	}
	return s
}

// has reports whether chain of table holds a rule with exactly spec.
func (s savedRules) has(table, chain string, spec []string) bool {
	for _, r := range s[[2]string{table, chain}] {
		if slices.Equal(r, spec) {
			return true
		}
	}
	return false
}

// errNotExist marks backend errors about a missing rule or chain.
var errNotExist = errors.New("rule or chain does not exist")
