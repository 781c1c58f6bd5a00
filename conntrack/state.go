package conntrack

import (
	"errors"
	"fmt"
	"time"

	"github.com/ftpalg/ftpalg/conntrack/seqnum"
)

// ErrState reports a saved connection that cannot be restored.
var ErrState = errors.New("bad saved connection state")

// FlowState is the durable part of a tracked control connection: what a
// process that takes over after a restart needs to keep the connection's
// sequence numbers right. Only connections whose byte streams were
// rewritten need it; any other connection is simply picked up again.
type FlowState struct {
	Conn    Conn
	Session uint64
	Dialog  []byte // alg.Dialog.MarshalBinary
	Liberal bool   // conntrack was told to be liberal on it
	// Kernel: the kernel's seqadj maps its numbers (Engine.KernelMaps).
	Kernel bool         `json:",omitempty"`
	Halves [2]HalfState // the client's stream, then the server's
	// Mapping is set when the state must be durable before the packet is
	// released: a sequence mapping changed, or the dialog of a connection
	// that was rewritten moved on (which decides which command a later
	// passive reply answers). Otherwise only the dialog of a connection
	// saved for SaveDialogs moved on, and may be written lazily.
	Mapping bool `json:"-"`
}

// HalfState is one direction's sequence mapping.
type HalfState struct {
	Next seqnum.Value // release point when saved
	Sync bool         // line boundaries are known
	Held bool         // bytes from Next on were held back, never released
	// Line holds the released bytes of a line not yet ended (capped at
	// the line limit), LineLen its full length so far, Long whether it was
	// reported as too long.
	Line    []byte `json:",omitempty"`
	LineLen int    `json:",omitempty"`
	Long    bool   `json:",omitempty"`
	Floor   seqnum.Value
	Base    seqnum.Delta
	Edits   []EditState
}

// EditState is one rewrite still in flight.
type EditState struct {
	Start  seqnum.Value
	OldLen uint32
	Repl   []byte
}

// markChanged queues f for Changed; mapping says the state must be durable
// before the packet is released (FlowState.Mapping).
func (e *Engine) markChanged(f *flow, mapping bool) {
	f.saved = true
	f.mappingChanged = f.mappingChanged || mapping
	if !f.changed {
		f.changed = true
		e.changed = append(e.changed, f)
	}
}

// Changed returns the saved state of every connection whose sequence
// mapping changed since the last call. The daemon persists it before it
// releases the packet that caused the change, so a successor process never
// knows less than what the receivers were sent.
func (e *Engine) Changed() []FlowState {
	if len(e.changed) == 0 {
		return nil
	}
	out := make([]FlowState, 0, len(e.changed))
	for _, f := range e.changed {
		if e.tab.get(f.conn) == f {
			st := f.state()
			st.Mapping = f.mappingChanged
			out = append(out, st)
		}
		f.changed, f.mappingChanged = false, false
	}
	e.changed = e.changed[:0]
	return out
}

func (f *flow) state() FlowState {
	d, _ := f.dialog.MarshalBinary()
	s := FlowState{Conn: f.conn, Session: f.id, Dialog: d, Liberal: f.liberal, Kernel: f.kernel}
	for i, h := range []*half{&f.c, &f.s} {
		hs := HalfState{Next: h.next, Sync: h.sync, Held: len(h.held()) > 0, Floor: h.m.floor, Base: h.m.base}
		if p := h.part; p != nil {
			hs.Line, hs.LineLen, hs.Long = append([]byte(nil), p.line...), p.lineLen, p.long
		}
		for _, ed := range h.m.edits {
			hs.Edits = append(hs.Edits, EditState{Start: ed.start, OldLen: uint32(ed.oldLen), Repl: ed.repl})
		}
		s.Halves[i] = hs
	}
	return s
}

// Restore tracks a connection saved by a previous process. Its streams
// resynchronise at their first data segment; its login state counts as
// unknown, like any connection picked up mid-stream.
func (e *Engine) Restore(s FlowState, now time.Time) error {
	if !s.Conn.Client.IsValid() || !s.Conn.Server.IsValid() {
		return fmt.Errorf("%w: connection %s", ErrState, s.Conn)
	}
	f := &flow{conn: s.Conn, id: s.Session, liberal: s.Liberal, kernel: s.Kernel, pickedUp: true, saved: true}
	if err := f.dialog.UnmarshalBinary(s.Dialog); err != nil {
		return fmt.Errorf("restoring %s: %w", s.Conn, err)
	}
	for i, h := range []*half{&f.c, &f.s} {
		hs := s.Halves[i]
		if len(hs.Line) > e.cfg.MaxLine || hs.LineLen < len(hs.Line) {
			return fmt.Errorf("%w: %s: partial line of %d bytes", ErrState, s.Conn, hs.LineLen)
		}
		h.init, h.restored, h.sync, h.restoredHeld = true, true, hs.Sync, hs.Held
		if len(hs.Line) > 0 || hs.LineLen > 0 || hs.Long {
			p := h.partial()
			p.line, p.lineLen, p.long = append([]byte(nil), hs.Line...), hs.LineLen, hs.Long
		}
		h.next, h.sent = hs.Next, hs.Next
		h.m.floor, h.m.base = hs.Floor, hs.Base
		prev := hs.Floor
		for _, ed := range hs.Edits {
			if ed.Start.LessThan(prev) || int64(ed.OldLen) > int64(e.cfg.MaxLine) || len(ed.Repl) > 2*e.cfg.MaxLine {
				return fmt.Errorf("%w: %s: edit at %d out of order or too large", ErrState, s.Conn, ed.Start)
			}
			h.m.add(ed.Start, int(ed.OldLen), ed.Repl)
			prev = ed.Start.Add(seqnum.Size(ed.OldLen))
		}
		if !h.m.hasLast && h.m.base != 0 {
			// Its edits were all acknowledged: what the labels need is
			// only the shift, from floor on.
			h.m.lastAt, h.m.lastStep, h.m.hasLast = h.m.floor, 0, true
		}
	}
	if old := e.tab.get(s.Conn); old != nil {
		e.tab.remove(old)
	}
	if len(e.tab.m) >= e.cfg.MaxFlows {
		return fmt.Errorf("restoring %s: %w", s.Conn, ErrTableFull)
	}
	e.tab.put(f)
	f.started = e.stamp(now)
	f.last = f.started
	e.tab.touch(f)
	e.ids = max(e.ids, s.Session/e.cfg.Shards) // later IDs stay above it
	return nil
}

// FlowInfo describes a tracked connection for status displays.
type FlowInfo struct {
	Session  uint64
	Conn     Conn
	Started  time.Time // first packet seen by this process
	Last     time.Time // last packet
	Rewrites uint32
	// ShiftC2S and ShiftS2C are the current sequence offsets of each
	// direction: what the receiver's numbers are ahead of the sender's.
	ShiftC2S, ShiftS2C int32
	Liberal            bool
	Kernel             bool // mapped by the kernel's seqadj
	Path               Path
	// Labels are the conntrack labels last written (or found, for a
	// resumed connection); zero when none were needed.
	Labels  Labels
	Resumed bool // taken over from conntrack labels
}

// Flows calls fn for every tracked connection, most recently active first.
func (e *Engine) Flows(fn func(FlowInfo)) {
	for f := e.tab.newest; f != nil; f = f.older {
		fn(FlowInfo{Session: f.id, Conn: f.conn, Started: e.at(f.started), Last: e.at(f.last), Rewrites: f.rewrites,
			ShiftC2S: int32(f.c.m.total()), ShiftS2C: int32(f.s.m.total()), Liberal: f.liberal, Kernel: f.kernel, Path: f.path,
			Labels: f.labels, Resumed: f.resumed})
	}
}
