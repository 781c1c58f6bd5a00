package conntrack

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/ftpalg/ftpalg/alg"
	"github.com/ftpalg/ftpalg/conntrack/seqnum"
)

// labelState is what f's conntrack labels must say now.
func (f *flow) labelState() LabelState {
	var s LabelState
	for i, h := range []*half{&f.c, &f.s} {
		if h.m.hasLast {
			s.Halves[i] = LabelHalf{Pos: h.m.lastAt, Shift: h.m.total(), Step: h.m.lastStep}
			s.Rewritten = true
		}
		// A map resumed from MULTI labels still cannot map what lies
		// before its edit; the kernel's skip rule must not let pure
		// ACKs pass unmapped either.
		s.Multi = s.Multi || len(h.m.edits) > 1 || h.m.lab.active && h.m.lab.multi
	}
	s.Answer, s.LoggedIn = f.dialog.Answer(), f.dialog.LoggedIn()
	s.Overflow = f.labels.Bit(LabelOverflow) // once overflowed, always: the offsets were lost
	s.Kernel = f.kernel
	return s
}

// reportLabels emits EventLabels when f's label state changed. A
// connection that never changed anything keeps no labels.
func (e *Engine) reportLabels(f *flow) {
	l := f.labelState().Encode()
	if l == f.labels || l.Empty() && f.labels.Empty() {
		return
	}
	if l.Bit(LabelOverflow) && !f.overflowLogged {
		f.overflowLogged = true
		e.refuse(f, alg.KindNone, netip.AddrPort{}, ErrLabelOverflow)
	}
	f.labels = l
	e.events = append(e.events, f.labelsEvent())
}

// labelsEvent is the EventLabels that writes f.labels.
func (f *flow) labelsEvent() Event {
	return Event{Kind: EventLabels, Session: f.id, Conn: f.conn, Path: f.path, Labels: f.labels,
		Liberal: f.liberal && !f.kernel, Kernel: f.kernel, SeqAdj: f.seqAdj()}
}

// KernelMaps hands the mapping of c's sequence numbers to the kernel,
// whose seqadj extension on c's entry the daemon has just written with the
// SeqAdj of the connection's last EventLabels and read back. From now on
// the engine releases each segment with the numbers the kernel must be
// given, and its labels say KERNEL. It returns the EventLabels to write
// instead of that last one (KERNEL set, no BE_LIBERAL), and false when c is
// not tracked.
//
// pkt and res are the packet that made the first length change and its
// Result, not yet released: the kernel applies the seqadj to that packet
// too, at its last hook, so res is renumbered for it (see renumber).
func (e *Engine) KernelMaps(c Conn, pkt []byte, res *Result) (Event, bool) {
	f := e.tab.get(c)
	if f == nil || f.dead {
		return Event{}, false
	}
	f.kernel = true
	f.labels = f.labelState().Encode()
	e.markChanged(f, true)
	ev := f.labelsEvent()
	if res != nil && res.Verdict != Drop {
		e.renumber(f, pkt, res)
	}
	return ev, true
}

// renumber gives the packet f's hand-over segment is released as (res) the
// numbers that the kernel's seqadj turns into those its receiver must get.
// A segment with one edit needs no change: it starts at or before the
// edit, where the kernel adds the offset before it, which is the old one.
// A segment with two edits does: the kernel's correction point is the
// last, and before it the kernel adds the shift of the first (measured in
// TestKernelPipelinedSessions, where a PORT and an EPRT in one segment
// reached the server a byte off). A number the kernel cannot produce
// drops the packet, refused with ErrKernelMap: the sender's retransmission
// is mapped as any later segment.
func (e *Engine) renumber(f *flow, pkt []byte, res *Result) {
	out := pkt
	if res.Verdict == AcceptModified {
		out = res.Packet
	}
	var seg segment
	if e.dec.decode(out, &seg, false) != nil {
		return // the input decoded, and a rebuilt packet is well formed: cannot happen
	}
	side := alg.Server
	if seg.src == f.conn.Client {
		side = alg.Client
	}
	snd, rcv := f.halves(side)
	seq, ack := seg.seq, seg.ack
	var sacks [maxSACKs][2]seqnum.Value
	for i := 0; i < seg.nSACK; i++ {
		l, r := seg.sackBlock(out, i)
		sacks[i] = [2]seqnum.Value{l, r}
	}
	sackChanged := false
	if !e.kernelNumbers(f, snd, rcv, out, &seg, &seq, &ack, &sacks, &sackChanged) {
		e.refuse(f, alg.KindNone, netip.AddrPort{}, fmt.Errorf("%w: handing over: seq %d (seqadj %+v), ack %d (seqadj %+v)",
			ErrKernelMap, seg.seq, snd.m.kernelAdj(), seg.ack, rcv.m.kernelAdj()))
		res.Verdict, res.Packet, res.Events = Drop, nil, e.events
		return
	}
	if seq == seg.seq && ack == seg.ack && !sackChanged {
		return
	}
	res.Verdict, res.Packet = AcceptModified, e.patchNumbers(out, &seg, seq, ack, &sacks, sackChanged)
}

// pickup is what the engine made of a connection's conntrack entry when it
// first saw the connection without its SYN.
type pickup struct {
	f       *flow  // resumed from the labels; nil: picked up plain
	noEntry bool   // conntrack has no entry yet: look again at later segments
	fresh   bool   // plain, and it began under ftpalg's rules (SkipHandshake)
	id      uint32 // the entry's ID, 0 when unknown
}

// fromLabels looks up the entry of a connection seen without its SYN and
// resumes it from the labels; see pickup.
func (e *Engine) fromLabels(conn Conn) pickup {
	ent, err := e.cfg.LabelSource.Entry(conn)
	return e.pickUp(conn, ent, err)
}

// pickUp is fromLabels with the entry (or the error) looked up.
func (e *Engine) pickUp(conn Conn, ent CTEntry, err error) pickup {
	if errors.Is(err, ErrNoEntry) {
		return pickup{noEntry: true}
	}
	if err != nil {
		e.stats.LabelErrors++
		return pickup{}
	}
	l := ent.Labels
	if l.Empty() {
		// SEEN alone: with SkipHandshake the SYN rule set it, so the
		// connection opened under ftpalg's rules; one that opened after
		// this process started had every payload byte pass through it,
		// and this is the first: no login happened.
		return pickup{fresh: e.cfg.SkipHandshake && l.Bit(LabelSeen) && !ent.Preexisting, id: ent.ID}
	}
	f, err := e.resumed(conn, l)
	if err != nil {
		// Labels ftpalg did not write: pick it up plain, and say so.
		f := &flow{conn: conn, id: e.sessionID(e.ids), dialog: alg.NewDialog(alg.Config{MaxLine: e.cfg.MaxLine}), pickedUp: true}
		e.refuse(f, alg.KindNone, netip.AddrPort{}, err)
		return pickup{id: ent.ID}
	}
	f.ctID = ent.ID
	return pickup{f: f, id: ent.ID}
}

// resumed builds the flow of a connection known only by its labels. Each
// direction with an edit maps from the edit's end on with the labels'
// shift and before its start with shift-step; the edit's line, should it
// come again, is rewritten anew and must change the length by exactly
// step. A direction without edits starts at its first segment. Where lines
// start is guessed at the first segment of each direction (alg.LineStart).
func (e *Engine) resumed(conn Conn, l Labels) (*flow, error) {
	st, err := l.Decode()
	if err != nil {
		return nil, fmt.Errorf("resuming %s: %w", conn, err)
	}
	f := &flow{conn: conn, id: e.sessionID(e.ids), labels: l, resumed: true, pickedUp: !st.LoggedIn,
		dialog: alg.Resume(alg.Config{MaxLine: e.cfg.MaxLine}, st.LoggedIn, st.Answer)}
	if st.Overflow {
		f.dead = true
		e.refuse(f, alg.KindNone, netip.AddrPort{}, ErrNotTakenOver)
		return f, nil
	}
	e.stats.Resumed++
	for i, h := range []*half{&f.c, &f.s} {
		lh := st.Halves[i]
		h.resume, h.unsure, h.restored = true, true, true
		if lh.zero() {
			continue
		}
		h.init = true
		h.next, h.sent = lh.Pos, lh.Pos
		h.m.floor, h.m.base = lh.Pos, lh.Shift
		h.m.lab = labelPoint{active: true, at: lh.Pos, step: lh.Step, multi: st.Multi}
		h.m.lastAt, h.m.lastStep, h.m.hasLast = lh.Pos, lh.Step, true
		if lh.Shift != 0 || lh.Step != 0 {
			f.liberal = true
		}
	}
	// KERNEL: the entry's seqadj maps it (the daemon checked that the
	// entry has one and cleared the bit otherwise); the kernel tracks its
	// window strictly, subtracting the offsets.
	f.kernel = st.Kernel
	if f.liberal && !f.kernel {
		// A standby's conntrackd commit forces BE_LIBERAL only without
		// TCPWindowTracking; a restarted router has it already.
		e.emit(Event{Kind: EventLiberal, Session: f.id, Conn: f.conn, Path: f.path})
	}
	return f, nil
}

// Resume tracks a connection another process tracked, from the labels it
// wrote on the connection's conntrack entry (as found by a dump at start).
// Labels without REWRITTEN are left for the connection's first packet.
// It returns the events to act on (an EventLiberal; a refusal for OVERFLOW),
// valid until the next call.
func (e *Engine) Resume(conn Conn, l Labels, now time.Time) ([]Event, error) {
	e.events = e.events[:0]
	if !conn.Client.IsValid() || !conn.Server.IsValid() {
		return nil, fmt.Errorf("%w: connection %s", ErrState, conn)
	}
	if e.tab.get(conn) != nil {
		return nil, nil // seen already
	}
	if len(e.tab.m) >= e.cfg.MaxFlows {
		return nil, fmt.Errorf("resuming %s: %w", conn, ErrTableFull)
	}
	e.ids++
	f, err := e.resumed(conn, l)
	if err != nil {
		return nil, err
	}
	e.stats.Flows++
	e.tab.put(f)
	f.started = e.stamp(now)
	f.last = f.started
	e.tab.touch(f)
	return e.events, nil
}
