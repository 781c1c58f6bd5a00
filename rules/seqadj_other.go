//go:build !linux

package rules

import "log/slog"

// SeqAdjTable is ftpalg's nftables seqadj table (see [SeqAdjTableName]),
// which only exists on Linux.
type SeqAdjTable struct{}

// NewSeqAdjTable reports that nftables is only available on Linux.
func NewSeqAdjTable(Config, *slog.Logger) (*SeqAdjTable, error) {
	return nil, seqAdjErr("setting up", ErrUnsupported)
}

// Install reports that nftables is only available on Linux.
func (t *SeqAdjTable) Install() error { return seqAdjErr("installing", ErrUnsupported) }

// Remove reports that nftables is only available on Linux.
func (t *SeqAdjTable) Remove() error { return seqAdjErr("removing", ErrUnsupported) }

// Installed reports that nftables is only available on Linux.
func (t *SeqAdjTable) Installed() (bool, error) {
	return false, seqAdjErr("looking up", ErrUnsupported)
}
