package rules

import (
	"errors"
	"testing"
)

func TestMissingBinary(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	if _, err := NewChains(DefaultConfig(), nil); !errors.Is(err, ErrIPTablesMissing) {
		t.Errorf("NewChains without iptables: error = %v, want ErrIPTablesMissing", err)
	}
	if _, err := NewTable(Config{ControlPorts: []uint16{21}, IPv6: true}, nil); !errors.Is(err, ErrIPTablesMissing) {
		t.Errorf("NewTable without ip6tables: error = %v, want ErrIPTablesMissing", err)
	}
}
