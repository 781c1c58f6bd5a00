package rules

import (
	"errors"
	"flag"
	"os"
	"path/filepath"
	"testing"
)

var update = flag.Bool("update", false, "rewrite golden files in testdata")

func TestFragmentGolden(t *testing.T) {
	tests := []struct {
		golden string
		cfg    Config
		family Family
	}{
		{"fragment_default_v4.golden", DefaultConfig(), IPv4},
		{"fragment_default_v6.golden", DefaultConfig(), IPv6},
		{"fragment_ports_v4.golden", Config{ControlPorts: []uint16{2121, 21, 990}, QueueNum: 5, IPv4: true}, IPv4},
		{"fragment_router_v4.golden", Config{ControlPorts: []uint16{21}, QueueNum: 21, IPv4: true, Role: RoleRouter, AcceptMark: DefaultAcceptMark}, IPv4},
		{"fragment_host_v6.golden", Config{ControlPorts: []uint16{21, 2121}, QueueNum: 21, IPv6: true, Role: RoleHost, AcceptMark: DefaultAcceptMark}, IPv6},
		{"fragment_skip_v4.golden", Config{ControlPorts: []uint16{21}, QueueNum: 21, IPv4: true, Role: RoleRouter, SkipPureACKs: true}, IPv4},
		{"fragment_handshake_v4.golden", Config{ControlPorts: []uint16{21}, QueueNum: 21, IPv4: true, Role: RoleRouter, SkipPureACKs: true, SkipHandshake: true}, IPv4},
		{"fragment_handshake_v6.golden", Config{ControlPorts: []uint16{21, 2121}, QueueNum: 21, IPv6: true, Role: RoleHost, AcceptMark: DefaultAcceptMark, SkipPureACKs: true, SkipHandshake: true}, IPv6},
	}
	for _, tt := range tests {
		t.Run(tt.golden, func(t *testing.T) {
			got, err := Fragment(tt.cfg, tt.family)
			if err != nil {
				t.Fatalf("Fragment: %v", err)
			}
			checkGolden(t, tt.golden, got)
		})
	}
}

// checkGolden compares got with testdata/name, rewriting it with -update.
func checkGolden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("reading golden file (run with -update to create): %v", err)
	}
	if got != string(want) {
		t.Errorf("%s mismatch\n got:\n%s\nwant:\n%s", name, got, want)
	}
}

func TestFragmentInvalid(t *testing.T) {
	tests := []struct {
		name   string
		cfg    Config
		family Family
	}{
		{"no ports", Config{IPv4: true}, IPv4},
		{"port zero", Config{ControlPorts: []uint16{21, 0}, IPv4: true}, IPv4},
		{"no family", Config{ControlPorts: []uint16{21}}, IPv4},
		{"unknown family", DefaultConfig(), Family(5)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := Fragment(tt.cfg, tt.family); !errors.Is(err, ErrInvalidConfig) {
				t.Errorf("Fragment error = %v, want ErrInvalidConfig", err)
			}
		})
	}
}
