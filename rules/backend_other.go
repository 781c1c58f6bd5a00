//go:build !linux

package rules

import "fmt"

// newBackend reports that iptables is only available on Linux.
func newBackend(f Family) (backend, error) {
	return nil, fmt.Errorf("setting up %s: %w", f.command(), ErrUnsupported)
}
