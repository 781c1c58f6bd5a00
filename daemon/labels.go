package daemon

import (
	"errors"
	"log/slog"
	"sync"

	"github.com/ftpalg/ftpalg/conntrack"
	"github.com/ftpalg/ftpalg/ctnetlink"
	"github.com/ftpalg/ftpalg/metrics"
)

// LabelClient reads and writes conntrack entries' labels. The ctnetlink
// client implements it.
type LabelClient interface {
	Lookup(seen ctnetlink.Tuple) (ctnetlink.Entry, ctnetlink.Direction, error)
	// SetLabels writes the labels of the entry one of whose tuples is t.
	SetLabels(t ctnetlink.Tuple, labels, mask [16]byte, liberal bool) error
}

// allLabelBits is the mask of a label write: ftpalg owns all 128 bits.
var allLabelBits = [16]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

// labelStore keeps each control connection's state in the labels of its
// conntrack entry, where a restarted ftpalg and (through conntrackd) the
// ftpalg of a standby router find it. It is the engine's LabelSource, and
// writes what the engine reports (EventLabels) before the packet is
// released. It remembers which tuple names each connection's entry, so a
// write costs one ctnetlink round trip.
type labelStore struct {
	ct      LabelClient
	log     *slog.Logger
	metrics *metrics.Metrics // nil-safe
	// refs says which tuple names each looked-up connection's entry, and
	// orig holds the original tuple of those that need it (refOrig). It
	// is one byte a connection, not a tuple: with a map of original
	// tuples, the label store took 235 bytes of each idle connection's
	// 1013 bytes of heap (measured at 18,976, test/bench memory).
	refs map[conntrack.ConnKey]entryRef
	orig map[conntrack.ConnKey]ctnetlink.Tuple
	// kernel, if set, hands rewritten connections' mapping to the
	// kernel's seqadj where their entries have it (useKernelSeqAdj).
	kernel SeqAdjClient
	// start, if set, holds the control entries that existed when the
	// daemon started (CTEntry.Preexisting), shared by the shards.
	start *startEntries
	// noExt: sessions whose entry has no label extension, logged once.
	noExt          map[uint64]bool
	writes, failed uint64
}

// entryRef says which tuple a label write names a connection's entry by
// (SetLabels takes either of an entry's tuples).
type entryRef uint8

const (
	// refSeen: the connection's tuple as the engine sees it, post-DNAT
	// and pre-SNAT, which is the original tuple when there is no DNAT.
	refSeen entryRef = iota + 1
	// refReversed: that tuple reversed, the reply tuple when there is
	// DNAT but no SNAT (a port forward).
	refReversed
	// refOrig: with both, the engine's tuple is neither of the entry's;
	// its original tuple is kept.
	refOrig
)

func newLabelStore(ct LabelClient, log *slog.Logger) *labelStore {
	return &labelStore{ct: ct, log: log, refs: map[conntrack.ConnKey]entryRef{},
		orig: map[conntrack.ConnKey]ctnetlink.Tuple{}, noExt: map[uint64]bool{}}
}

func seenOf(c conntrack.Conn) ctnetlink.Tuple { return ctnetlink.Tuple{Src: c.Client, Dst: c.Server} }

// remember records which tuple names e, the entry of c (found by a lookup
// or by the start-up dump), and returns that tuple. Only a tuple
// that is e's own names it: the engine's tuple of a port-forwarded
// connection may be another entry's (a direct connection to the server's
// private address from the same client port).
func (s *labelStore) remember(c conntrack.Conn, e ctnetlink.Entry) ctnetlink.Tuple {
	seen, k := seenOf(c), c.Key()
	switch {
	case e.Orig == seen:
		s.refs[k] = refSeen
		return seen
	case e.Reply == seen.Reverse():
		s.refs[k] = refReversed
		return e.Reply
	}
	s.refs[k] = refOrig
	s.orig[k] = e.Orig
	return e.Orig
}

// tupleOf returns the tuple that names c's entry, looking the entry up (and
// remembering it) the first time.
func (s *labelStore) tupleOf(c conntrack.Conn) (ctnetlink.Tuple, error) {
	if t, ok := s.entryTuple(c); ok {
		return t, nil
	}
	e, _, err := s.ct.Lookup(seenOf(c))
	if err != nil {
		return ctnetlink.Tuple{}, err
	}
	return s.remember(c, e), nil
}

// entryTuple returns the tuple that names c's entry, if c was looked up.
func (s *labelStore) entryTuple(c conntrack.Conn) (ctnetlink.Tuple, bool) {
	k := c.Key()
	switch s.refs[k] {
	case refSeen:
		return seenOf(c), true
	case refReversed:
		return seenOf(c).Reverse(), true
	case refOrig:
		return s.orig[k], true
	}
	return ctnetlink.Tuple{}, false
}

// Entry reads the labels and ID of c's entry (conntrack.LabelSource): one
// GET, or two when the packet's tuple is the entry's reply one;
// ErrNoEntry when conntrack has no confirmed entry for it.
func (s *labelStore) Entry(c conntrack.Conn) (conntrack.CTEntry, error) {
	e, _, err := s.ct.Lookup(seenOf(c))
	if errors.Is(err, ctnetlink.ErrNotFound) {
		// The packet in hand started the entry (loose pickup): it is
		// confirmed only after the packet passed. See ErrNoEntry.
		return conntrack.CTEntry{}, conntrack.ErrNoEntry
	}
	if err != nil {
		s.log.Warn("reading conntrack labels; picking the connection up without them", "conn", c.String(), "err", err)
		return conntrack.CTEntry{}, err
	}
	s.remember(c, e)
	ent := conntrack.CTEntry{ID: e.ID, Preexisting: s.start.take(e.ID)}
	if !e.HasLabels {
		return ent, nil
	}
	l, err := conntrack.LabelsFromBytes(e.Labels[:])
	if err != nil {
		s.log.Warn("reading conntrack labels", "conn", c.String(), "err", err)
		return ent, err
	}
	ent.Labels = s.checkKernel(c, e, l)
	return ent, nil
}

// startEntries are the IDs of the control connections' conntrack entries
// that existed when the daemon started, before it read its first packet
// (conntrack.CTEntry.Preexisting). Each is taken once: at the connection's
// first packet, or when its entry is destroyed. The shards' label stores
// share it, under its own lock, taken once per connection.
type startEntries struct {
	mu  sync.Mutex
	ids map[uint32]struct{}
}

// newStartEntries collects the entries of dump that are open control
// connections: on a port isControl accepts (the server's port as ftpalg's
// hook sees it, after DNAT).
func newStartEntries(dump []ctnetlink.Entry, isControl func(uint16) bool) *startEntries {
	s := &startEntries{ids: map[uint32]struct{}{}}
	for _, e := range dump {
		if e.ID != 0 && !e.TCPState.Closed() && isControl(e.Reply.Src.Port()) {
			s.ids[e.ID] = struct{}{}
		}
	}
	return s
}

// take reports whether id is one of the entries and forgets it. A nil s
// holds none.
func (s *startEntries) take(id uint32) bool {
	if s == nil {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.ids[id]
	delete(s.ids, id)
	return ok
}

// Len returns how many entries are left.
func (s *startEntries) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.ids)
}

// write stores ev.Labels (with BE_LIBERAL when ev.Liberal) in the entry of
// ev's connection.
func (s *labelStore) write(ev *conntrack.Event) {
	t, err := s.tupleOf(ev.Conn)
	if err != nil {
		s.fail(ev, err)
		return
	}
	if ev.Kernel && s.kernel != nil {
		// The kernel maps it: the seqadj goes with the labels, which
		// say where the last edit is (both, or neither, replicated).
		err = s.kernel.SetLabelsSeqAdj(t, ev.Labels.Bytes(), allLabelBits, toCT(ev.SeqAdj))
	} else {
		err = s.ct.SetLabels(t, ev.Labels.Bytes(), allLabelBits, ev.Liberal)
	}
	if err != nil {
		s.fail(ev, err)
		return
	}
	s.writes++
	s.metrics.LabelWrite(false)
}

func (s *labelStore) fail(ev *conntrack.Event, err error) {
	s.failed++
	s.metrics.LabelWrite(true)
	if errors.Is(err, ctnetlink.ErrNoLabels) {
		if !s.noExt[ev.Session] {
			s.noExt[ev.Session] = true
			s.log.Warn("connection predates ftpalg's connlabel rule: its state cannot be kept in conntrack, so a restarted or standby ftpalg cannot take it over",
				"session", ev.Session, "conn", ev.Conn.String(), "path", ev.Path.String())
		}
		return
	}
	s.log.Error("writing connection state to conntrack labels; a restarted or standby ftpalg could not take this connection over",
		"session", ev.Session, "conn", ev.Conn.String(), "path", ev.Path.String(), "labels", ev.Labels.String(), "err", err)
}

// forget drops what is kept of an ended connection.
func (s *labelStore) forget(session uint64, c conntrack.Conn) {
	k := c.Key()
	delete(s.refs, k)
	delete(s.orig, k)
	delete(s.noExt, session)
}

// labelState renders a connection's label state for `ftpalg status`.
func labelState(f conntrack.FlowInfo) string {
	l := f.Labels
	switch {
	case l.Bit(conntrack.LabelOverflow):
		return "overflow"
	case f.Resumed && l.Bit(conntrack.LabelMulti):
		return "resumed multi"
	case f.Resumed:
		return "resumed"
	case l.Empty():
		return ""
	case l.Bit(conntrack.LabelMulti):
		return "ct multi"
	}
	return "ct"
}
