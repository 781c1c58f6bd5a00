package rules

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

func TestNFTFragmentGolden(t *testing.T) {
	for _, tt := range []struct {
		golden string
		cfg    Config
	}{
		{"nft_host.golden", Config{ControlPorts: []uint16{21, 2121}, QueueNum: 21, Bypass: true, IPv4: true, IPv6: true, Role: RoleHost, AcceptMark: DefaultAcceptMark, DataMark: DefaultAcceptMark}},
		{"nft_both.golden", Config{ControlPorts: []uint16{21}, QueueNum: 21, Bypass: true, IPv4: true, IPv6: true, AcceptMark: DefaultAcceptMark, DataMark: DefaultAcceptMark}},
	} {
		t.Run(tt.golden, func(t *testing.T) {
			got, err := NFTFragment(tt.cfg)
			if err != nil {
				t.Fatal(err)
			}
			checkGolden(t, tt.golden, got)
			// The uncommented lines are exactly the rules to include.
			var rules []string
			for _, l := range strings.Split(strings.TrimSpace(got), "\n") {
				if !strings.HasPrefix(l, "#") {
					rules = append(rules, l)
				}
			}
			if !slices.Equal(rules, nftAcceptRules(tt.cfg)) {
				t.Errorf("uncommented lines %q", rules)
			}
		})
	}
	if _, err := NFTFragment(Config{ControlPorts: []uint16{21}, IPv4: true}); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("without an accept mark: %v, want ErrInvalidConfig", err)
	}
}

func TestRole(t *testing.T) {
	for _, tt := range []struct {
		s            string
		role         Role
		fwd, local   bool
		queueParents []string
	}{
		{"both", RoleBoth, true, true, []string{"FORWARD", "INPUT", "OUTPUT"}},
		{"router", RoleRouter, true, false, []string{"FORWARD"}},
		{"host", RoleHost, false, true, []string{"INPUT", "OUTPUT"}},
	} {
		r, err := ParseRole(tt.s)
		if err != nil || r != tt.role || r.String() != tt.s || r.Forward() != tt.fwd || r.Local() != tt.local {
			t.Errorf("ParseRole(%q) = %v, %v", tt.s, r, err)
		}
		var parents []string
		for _, j := range jumpsFor(r) {
			if j.chain == ChainQueue {
				parents = append(parents, j.parent)
			}
			if !ownJump(j.parent, j.spec) {
				t.Errorf("%v: jump %v not recognised as ftpalg's", r, j)
			}
		}
		if strings.Join(parents, ",") != strings.Join(tt.queueParents, ",") {
			t.Errorf("%v: queue jumps from %v, want %v", r, parents, tt.queueParents)
		}
	}
	if _, err := ParseRole("firewall"); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("ParseRole(firewall): %v", err)
	}
	if ownJump("INPUT", []string{"-s", "192.0.2.1/32", "-j", ChainAccept}) {
		t.Error("an administrator's rule counted as ftpalg's jump")
	}
	if err := (Config{ControlPorts: []uint16{21}, IPv4: true, Role: Role(3)}).Validate(); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("Validate with role 3: %v", err)
	}
}
