//go:build !linux

package rules

import "fmt"

// newNFTKernel reports that nftables is only available on Linux.
func newNFTKernel(uint32, uint32, Role) (nftKernel, error) {
	return nil, fmt.Errorf("setting up nftables: %w", ErrUnsupported)
}
