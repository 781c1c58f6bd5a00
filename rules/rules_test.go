package rules

import (
	"errors"
	"slices"
	"testing"
)

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		ok   bool
	}{
		{"default", DefaultConfig(), true},
		{"v6 only", Config{ControlPorts: []uint16{21}, IPv6: true}, true},
		{"no ports", Config{IPv4: true}, false},
		{"port zero", Config{ControlPorts: []uint16{0}, IPv4: true}, false},
		{"no family", Config{ControlPorts: []uint16{21}}, false},
		{"queues up to 65535", Config{ControlPorts: []uint16{21}, IPv4: true, QueueNum: 65534, Queues: 2}, true},
		{"queues past 65535", Config{ControlPorts: []uint16{21}, IPv4: true, QueueNum: 65535, Queues: 2}, false},
	}
	for _, tt := range tests {
		err := tt.cfg.Validate()
		if tt.ok != (err == nil) {
			t.Errorf("%s: Validate() = %v, want ok=%v", tt.name, err, tt.ok)
		}
		if err != nil && !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("%s: error %v is not ErrInvalidConfig", tt.name, err)
		}
	}
}

func TestConfigFamilies(t *testing.T) {
	if got := DefaultConfig().Families(); !slices.Equal(got, []Family{IPv4, IPv6}) {
		t.Errorf("DefaultConfig().Families() = %v", got)
	}
	if got := (Config{IPv6: true}).Families(); !slices.Equal(got, []Family{IPv6}) {
		t.Errorf("Families() = %v, want [IPv6]", got)
	}
	if got := Family(9).String(); got != "Family(9)" {
		t.Errorf("Family(9).String() = %q", got)
	}
}
