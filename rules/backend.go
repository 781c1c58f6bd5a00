package rules

import "errors"

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
}

// errNotExist marks backend errors about a missing rule or chain.
var errNotExist = errors.New("rule or chain does not exist")
