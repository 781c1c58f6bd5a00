package nfq

import (
	"testing"
	"time"
)

// TestSpinPolicy drives the policy through the outcomes a reader sees and
// checks, read by read, whether it polls.
func TestSpinPolicy(t *testing.T) {
	const spin = 50 * time.Microsecond
	type step struct {
		outcome byte // 'c' caught, 'm' missed, '-' no poll (or data waiting)
		want    bool // poll() before this read
	}
	steps := func(s string, want bool) []step {
		var out []step
		for _, c := range []byte(s) {
			out = append(out, step{c, want})
		}
		return out
	}
	cat := func(parts ...[]step) []step {
		var out []step
		for _, p := range parts {
			out = append(out, p...)
		}
		return out
	}
	tests := []struct {
		name  string
		spin  time.Duration
		steps []step
	}{
		{"zero spin never polls", 0, steps("----------------------------------", false)},
		{"negative spin never polls", -time.Second, steps("--------", false)},
		// A dialog whose next packet comes within the spin keeps polling.
		{"caught packets keep polling", spin, steps("cccccccccccccccccccccccccccccccc", true)},
		// spinCredit misses in a row use up the credit; then reads
		// sleep at once, but for one probe every probeEvery reads.
		{"misses stop polling, probes resume it", spin, cat(
			steps("mmmmmmmm", true),
			steps("---------------", false),
			[]step{{'c', true}}, // the probe catches a packet: credit 2
			steps("mm", true),
			steps("---------------", false),
			[]step{{'m', true}}, // a probe that misses earns nothing
			steps("---------------", false),
			[]step{{'c', true}},
		)},
		// One catch in three keeps polling: +2, -1, -1.
		{"one catch in three is enough", spin, cat(
			steps("mmmmmmm", true), // credit 1
			steps("cmmcmmcmmcmmcmmcmm", true),
		)},
		// One catch in four is not: the credit drains by 2 every four.
		{"one catch in four is not", spin, cat(
			steps("cmmmcmmmcmmmcmmmcmmm", true), // credit 1
			steps("m", true),
			steps("-", false),
		)},
		// Reads that found data waiting (no poll outcome) change nothing.
		{"data waiting is neutral", spin, cat(
			steps("mmmmmmm", true),
			steps("--------", true),
			steps("m", true),
			steps("-", false),
		)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := newSpinPolicy(tt.spin)
			for i, st := range tt.steps {
				d, ok := p.poll()
				if ok != st.want {
					t.Fatalf("read %d: poll = %v, want %v (credit %d)", i, ok, st.want, p.credit)
				}
				if ok && d != tt.spin {
					t.Fatalf("read %d: poll for %v, want %v", i, d, tt.spin)
				}
				switch st.outcome {
				case 'c':
					p.caught()
				case 'm':
					p.missed()
				}
			}
		})
	}
}

// TestSpinYield: a yield that took as long as a system call lets the poll
// go on; one that ran another thread ends it.
func TestSpinYield(t *testing.T) {
	p := newSpinPolicy(50 * time.Microsecond)
	for _, tt := range []struct {
		took time.Duration
		want bool
	}{
		{0, true},
		{800 * time.Nanosecond, true},
		{yieldSwitched - time.Nanosecond, true},
		{yieldSwitched, false},
		{2 * time.Millisecond, false},
	} {
		if got := p.yielded(tt.took); got != tt.want {
			t.Errorf("yielded(%v) = %v, want %v", tt.took, got, tt.want)
		}
	}
}
