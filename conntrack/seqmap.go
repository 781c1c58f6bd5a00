package conntrack

import "github.com/ftpalg/ftpalg/conntrack/seqnum"

// An edit is one rewrite of a sender's byte stream: the original bytes
// [start, start+oldLen) reach the receiver as repl.
type edit struct {
	start  seqnum.Value
	oldLen seqnum.Size
	repl   []byte
}

func (e *edit) end() seqnum.Value   { return e.start.Add(e.oldLen) }
func (e *edit) delta() seqnum.Delta { return seqnum.Delta(len(e.repl)) - seqnum.Delta(e.oldLen) }

// seqMap relates one direction's two sequence spaces: the sender's (what it
// wrote) and the receiver's (what it was given after rewrites). Positions
// before the first edit are shifted by base; each edit adds its delta to the
// positions after it. Edits the receiver has acknowledged can no longer be
// referenced by a retransmission or an ACK, so they are folded into base and
// floor; the list therefore only holds the edits still in flight.
type seqMap struct {
	edits  []edit       // sorted, disjoint, all at or after floor
	folded uint64       // edits folded into base (for status and tests)
	floor  seqnum.Value // positions before floor are forgotten
	base   seqnum.Delta // shift at floor
	// last is the most recent edit ever made (kept after it is folded):
	// what the conntrack labels record of this direction.
	lastAt   seqnum.Value
	lastStep seqnum.Delta
	// lab: the map was resumed from conntrack labels, which know only the
	// last edit's start and length change; base is the shift after it.
	// Until the receiver acknowledges past that edit, or its line comes
	// again and is rewritten the same way, where it ends is unknown.
	lab     labelPoint
	hasLast bool
	added   bool // an edit was added since the engine last looked
}

// labelPoint is the last edit of a map resumed from labels.
type labelPoint struct {
	at     seqnum.Value // the edit's start, sender space
	step   seqnum.Delta // its length change
	active bool
	multi  bool // earlier edits were in flight: positions before at cannot be mapped
}

// rAt is the receiver position of the resumed edit's start.
func (m *seqMap) rAt() seqnum.Value { return m.lab.at.Shift(m.base - m.lab.step) }

// unmappable reports whether sender position x (or, with receiver, the
// receiver position x) lies before a resumed edit whose predecessors were
// still in flight: no exact mapping is known there.
func (m *seqMap) unmappable(x seqnum.Value, receiver bool) bool {
	if !m.lab.active || !m.lab.multi {
		return false
	}
	if receiver {
		return x.LessThan(m.rAt())
	}
	return x.LessThan(m.lab.at)
}

// total is the shift after every recorded edit.
func (m *seqMap) total() seqnum.Delta {
	d := m.base // a map resumed from labels has no edits: base is its shift
	for i := range m.edits {
		d += m.edits[i].delta()
	}
	return d
}

// toReceiver maps a sender position that is not inside an edit. A position
// inside an edit maps to the receiver position of the edit's start; one
// before floor (a stale duplicate) maps to floor's.
func (m *seqMap) toReceiver(x seqnum.Value) seqnum.Value {
	if m.lab.active && x.LessThanEq(m.lab.at) {
		return x.Shift(m.base - m.lab.step)
	}
	// After a resumed edit's start: taken as at or after its end (floor
	// is that start).
	x = seqnum.Max(x, m.floor)
	d := m.base
	for i := range m.edits {
		e := &m.edits[i]
		if x.LessThanEq(e.start) {
			break
		}
		if x.LessThan(e.end()) {
			return x.Shift(d) - seqnum.Value(x-e.start)
		}
		d += e.delta()
	}
	return x.Shift(d)
}

// snap says where a receiver position inside replaced bytes goes when it is
// carried back to the sender: to the start of the edit (the receiver has
// not got all of it: ACKs and SACK right edges) or to its end (SACK left
// edges: what the receiver holds begins after it). Either way the sender is
// told no more than the receiver really holds, so nothing is ever lost;
// at worst some bytes are retransmitted and replayed identically.
type snap bool

const (
	snapStart snap = false
	snapEnd   snap = true
)

// toSender maps a receiver position (an ACK or SACK edge) to the sender's
// space. Positions before floor come from stale duplicates and cannot be
// mapped exactly once edits were folded; they map to floor, which the
// receiver has acknowledged already.
func (m *seqMap) toSender(a seqnum.Value, s snap) seqnum.Value {
	if m.lab.active && a.LessThanEq(m.rAt()) {
		return a.Shift(-(m.base - m.lab.step))
	}
	// Receiver positions inside a resumed edit's replacement (a receiver
	// holding part of a rewritten line, which ftpalg sends whole) map no
	// further than its start, which is floor.
	if a.LessThan(m.floor.Shift(m.base)) {
		return m.floor
	}
	d := m.base
	for i := range m.edits {
		e := &m.edits[i]
		rStart := e.start.Shift(d)
		if a.LessThanEq(rStart) {
			break
		}
		if a.LessThan(rStart.Add(seqnum.Size(len(e.repl)))) {
			if s == snapEnd {
				return e.end()
			}
			return e.start
		}
		d += e.delta()
	}
	return a.Shift(-d)
}

// add records a new edit. It must start after every recorded edit.
func (m *seqMap) add(start seqnum.Value, oldLen int, repl []byte) {
	m.edits = append(m.edits, edit{start: start, oldLen: seqnum.Size(oldLen), repl: append([]byte(nil), repl...)})
	m.added = true
	m.lastAt, m.lastStep, m.hasLast = start, seqnum.Delta(len(repl))-seqnum.Delta(oldLen), true
}

// forget folds the edits that end at or before acked, which the receiver has
// acknowledged in full.
func (m *seqMap) forget(acked seqnum.Value) {
	if m.lab.active {
		if !m.lab.at.LessThan(acked) {
			return
		}
		// The receiver holds bytes after the resumed edit's start, so
		// it got that edit (sent whole): positions before acked are
		// stale from now on, as after any fold. acked itself lies at or
		// after the edit's end (toSender maps a receiver position inside
		// its replacement no further than its start), and floor moves
		// there: the labels do not say where the edit ends, so a
		// retransmission of its line that comes after this ACK (the
		// ACK still on its way to the sender) cannot be rendered the way
		// the previous process rewrote it. With floor left at the
		// edit's start, such a copy went out unrewritten at the shift
		// after the edit, over the rewritten bytes the receiver holds
		// (TestRestartRegressions, seed 2109). Trimmed to floor, it
		// carries nothing the receiver lacks.
		m.lab.active = false
		if len(m.edits) == 0 || !m.edits[0].start.LessThan(acked) {
			m.floor = acked
		}
	}
	n := 0
	for n < len(m.edits) && m.edits[n].end().LessThanEq(acked) {
		m.base += m.edits[n].delta()
		m.floor = m.edits[n].end()
		n++
	}
	if n == 0 {
		return
	}
	m.folded += uint64(n)
	m.edits = append(m.edits[:0], m.edits[n:]...)
	if len(m.edits) == 0 {
		m.edits = nil // an idle connection keeps no history buffer
	}
}

// render appends to dst what the receiver was given for the sender bytes
// data, which start at s and lie wholly before the release point (a
// retransmission). Edits the range touches are replayed in full, so a
// retransmission that cuts through a rewritten line yields the same bytes
// at the same receiver positions as the first transmission. It returns the
// extended buffer and the sender position the rendered bytes start at.
// Bytes before floor were acknowledged and are trimmed.
func (m *seqMap) render(dst []byte, s seqnum.Value, data []byte) ([]byte, seqnum.Value) {
	if s.LessThan(m.floor) {
		skip := s.Size(m.floor)
		if int64(skip) >= int64(len(data)) {
			return dst, m.floor
		}
		data, s = data[skip:], m.floor
	}
	e := s.Add(seqnum.Size(len(data)))
	start, cur := s, s
	for i := range m.edits {
		ed := &m.edits[i]
		if ed.end().LessThanEq(cur) {
			continue
		}
		if e.LessThanEq(ed.start) {
			break
		}
		if ed.start.LessThan(cur) { // s is inside this edit: replay it whole
			start = ed.start
		} else {
			dst = append(dst, data[s.Size(cur):s.Size(ed.start)]...)
		}
		dst = append(dst, ed.repl...)
		cur = ed.end()
	}
	if cur.LessThan(e) {
		dst = append(dst, data[s.Size(cur):]...)
	}
	return dst, start
}
