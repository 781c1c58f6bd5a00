package daemon

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"testing"
)

// countedRules is a rule set whose presence the test decides, counting
// checks and installs.
type countedRules struct {
	there            bool
	checks, installs int
}

func (c *countedRules) Check() (bool, error) { c.checks++; return c.there, nil }
func (c *countedRules) Install() error       { c.installs++; c.there = true; return nil }

// fixedGen is a ruleset generation the test sets.
type fixedGen struct {
	id  uint32
	err error
}

func (g *fixedGen) ID() (uint32, error) { return g.id, g.err }

// TestRulesRepairSkipsUnchanged checks the repair check's use of the
// ruleset generation: it looks at the rules once per generation while they
// are all there, again at every tick after it had to repair them or while
// the generation cannot be read, and at every tick without a generation.
func TestRulesRepairSkipsUnchanged(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx := context.Background()
	set := &countedRules{there: true}
	gen := &fixedGen{id: 7}
	r := &rulesRepair{sets: []kernelRules{set}, gen: gen, log: log}
	steps := []struct {
		name       string
		do         func()
		wantLooked bool
	}{
		{"first tick", func() {}, true},
		{"nothing changed", func() {}, false},
		{"still nothing", func() {}, false},
		{"a reload removed the rules", func() { gen.id, set.there = 8, false }, true},
		{"after the repair, same generation", func() {}, true},
		{"clean again", func() {}, false},
		{"generation unreadable", func() { gen.err = errors.New("EPERM") }, true},
		{"still unreadable", func() {}, true},
		{"readable again", func() { gen.err = nil }, true},
		{"and clean", func() {}, false},
	}
	for _, s := range steps {
		s.do()
		if looked := r.check(ctx); looked != s.wantLooked {
			t.Fatalf("%s: looked %v, want %v", s.name, looked, s.wantLooked)
		}
	}
	if set.installs != 1 {
		t.Errorf("%d installs, want 1 (after the reload)", set.installs)
	}

	plain := &countedRules{there: true}
	r = &rulesRepair{sets: []kernelRules{plain}, log: log}
	for range 3 {
		r.check(ctx)
	}
	if plain.checks != 3 {
		t.Errorf("without a generation: %d checks in 3 ticks, want 3", plain.checks)
	}
}
