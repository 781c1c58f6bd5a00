package nfq

import "time"

// spinPolicy decides, before each read, whether the reader polls the socket
// for Config.Spin before it sleeps, and ends a poll early when polling
// takes a CPU that another thread needs.
//
// A poll pays when the next packet comes within the spin and the CPU is
// otherwise idle: the packet is read without a wake-up. It is wasted when
// the next packet comes later (a dialog paced by people, a server that
// takes its time), and it takes from others when another thread needs the
// CPU: the reader runs at the unit's Nice=-10. Two rules stop that:
//
//   - polls that end without a packet cost credit, polls that catch one
//     earn it, and without credit the reader sleeps at once, trying one
//     poll every probeEvery reads;
//   - a yield that took longer than yieldSwitched handed the CPU to
//     another thread that was waiting for it: the poll ends and the reader
//     sleeps, so that thread runs until it blocks.
//
// Measured on this project's 2-CPU VM against the fixed poll (the same
// rig, two runs each, with the nftables rules' own data mark in both new
// builds): ftpalg's CPU per queued packet fell from 103-121 to 69-104 µs in
// the session workload and from 113-129 to 75-113 µs in the long session,
// and the NOOP round trip did not move beyond the spread (62-77 µs p50
// either way with ftpalg pinned to the client's and server's CPU, 41-101
// unpinned).
//
// It is owned by the reading goroutine; the zero value never polls.
type spinPolicy struct {
	spin   time.Duration
	credit int
	reads  int // reads without credit since the last probe
}

const (
	// spinCredit is the most credit a run of caught packets earns: after
	// it, this many polls in a row must miss before polling stops.
	spinCredit = 8
	// spinEarn is the credit one caught packet earns; a miss costs 1, so
	// polling goes on while at least one poll in three catches a packet.
	spinEarn = 2
	// probeEvery is how many reads without credit go by before one poll
	// is tried again.
	probeEvery = 16
	// yieldSwitched is how long a sched_yield that did not switch to
	// another thread can take: a system call, well under this on any
	// machine measured; longer means another thread ran.
	yieldSwitched = 5 * time.Microsecond
)

func newSpinPolicy(spin time.Duration) spinPolicy {
	return spinPolicy{spin: max(spin, 0), credit: spinCredit}
}

// poll says whether the next read polls first, and for how long.
func (s *spinPolicy) poll() (time.Duration, bool) {
	if s.spin <= 0 {
		return 0, false
	}
	if s.credit > 0 {
		return s.spin, true
	}
	if s.reads++; s.reads >= probeEvery {
		s.reads = 0
		return s.spin, true
	}
	return 0, false
}

// caught records a poll that found a packet after at least one yield.
func (s *spinPolicy) caught() { s.credit = min(s.credit+spinEarn, spinCredit) }

// missed records a poll that ended, at its deadline or because a yield
// switched, without a packet.
func (s *spinPolicy) missed() { s.credit = max(s.credit-1, 0) }

// yielded says whether a poll goes on after a yield that took took (no: another thread ran).
func (s *spinPolicy) yielded(took time.Duration) bool { return took < yieldSwitched }
