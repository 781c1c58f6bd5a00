package rules

import (
	"testing"
	"time"
)

// TestCheckFromSave checks that Chains.Check's fast path holds: every rule
// it looks for is found, as written, in one iptables-save listing, for
// each role and with the optional rules, in both families; so a check
// needs one exec per family and `iptables -C` only for a rule that is
// really missing.
func TestCheckFromSave(t *testing.T) {
	if !inFreshNetns(t, "sv") {
		return
	}
	for _, tc := range []struct {
		name string
		cfg  Config
	}{
		{"default", DefaultConfig()},
		{"router, two ports, bypass, queues", Config{ControlPorts: []uint16{21, 2121}, QueueNum: 5, Queues: 2, Bypass: true, IPv4: true, IPv6: true, Role: RoleRouter}},
		{"host, marks, pure-ACK skip", Config{ControlPorts: []uint16{21}, QueueNum: 21, IPv4: true, IPv6: true, Role: RoleHost,
			AcceptMark: DefaultAcceptMark, DataMark: DefaultAcceptMark, SkipPureACKs: true}},
		{"both, pure-ACK skip", Config{ControlPorts: []uint16{21, 990}, QueueNum: 21, IPv4: true, IPv6: true, SkipPureACKs: true, DataMark: DefaultAcceptMark}},
		{"router, handshake skip", Config{ControlPorts: []uint16{21, 990}, QueueNum: 21, IPv4: true, IPv6: true, Role: RoleRouter, SkipPureACKs: true, SkipHandshake: true}},
		{"host, handshake skip, split ports", Config{ControlPorts: []uint16{21, 101, 102, 103, 104, 105, 106, 107, 108, 109, 110, 111, 112, 113, 114, 115, 116},
			IPv4: true, IPv6: true, Role: RoleHost, SkipPureACKs: true, SkipHandshake: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := NewChains(tc.cfg, testLogger(t))
			if err != nil {
				t.Fatal(err)
			}
			if err := c.Install(); err != nil {
				t.Fatal(err)
			}
			defer func() {
				if err := c.Remove(); err != nil {
					t.Errorf("Remove: %v", err)
				}
			}()
			for _, b := range c.active {
				saved, err := b.Save()
				if err != nil {
					t.Fatal(err)
				}
				want := func(table, chain string, spec []string) {
					t.Helper()
					if !saved.has(table, chain, spec) {
						t.Errorf("%s: %s %s %q not found as written in %s-save: Check would fall back to iptables -C",
							b.family(), table, chain, formatRule(spec), b.family().command())
					}
				}
				for _, j := range jumpsFor(tc.cfg.Role) {
					want(j.table, j.parent, j.spec)
				}
				for _, spec := range staticAcceptSpecs(tc.cfg) {
					want("filter", ChainAccept, spec)
				}
				for _, spec := range queueSpecs(tc.cfg, b.family()) {
					want("mangle", ChainQueue, spec)
				}
			}
			start := time.Now()
			if ok, err := c.Check(); err != nil || !ok {
				t.Fatalf("Check = %v, %v after Install", ok, err)
			}
			t.Logf("Check took %v", time.Since(start).Round(time.Millisecond))
		})
	}
}
