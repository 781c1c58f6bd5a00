//go:build !linux

package rules

import "fmt"

// Generation reads the nf_tables ruleset generation; Linux only.
type Generation struct{}

// OpenGeneration reports that nf_tables is only available on Linux.
func OpenGeneration() (*Generation, error) {
	return nil, fmt.Errorf("reading the nf_tables ruleset generation: %w", ErrUnsupported)
}

// ID is never reached: OpenGeneration fails.
func (g *Generation) ID() (uint32, error) { return 0, ErrUnsupported }

// Close does nothing.
func (g *Generation) Close() error { return nil }

// XtablesOnNFTables is false off Linux.
func XtablesOnNFTables(Config) bool { return false }
