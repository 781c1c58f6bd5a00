package daemon

import (
	"errors"
	"log/slog"

	"github.com/ftpalg/ftpalg/conntrack"
	"github.com/ftpalg/ftpalg/ctnetlink"
	"github.com/ftpalg/ftpalg/metrics"
)

// LabelClient reads and writes conntrack entries' labels. The ctnetlink
// client implements it.
type LabelClient interface {
	Lookup(seen ctnetlink.Tuple) (ctnetlink.Entry, ctnetlink.Direction, error)
	SetLabels(orig ctnetlink.Tuple, labels, mask [16]byte, liberal bool) error
}

// allLabelBits is the mask of a label write: ftpalg owns all 128 bits.
var allLabelBits = [16]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

// labelStore keeps each control connection's state in the labels of its
// conntrack entry, where a restarted ftpalg and (through conntrackd) the
// ftpalg of a standby router find it. It is the engine's LabelSource, and
// writes what the engine reports (EventLabels) before the packet is
// released. It remembers each connection's original tuple, so a write
// costs one ctnetlink round trip.
type labelStore struct {
	ct      LabelClient
	log     *slog.Logger
	metrics *metrics.Metrics // nil-safe
	orig    map[conntrack.Conn]ctnetlink.Tuple
	// noExt: sessions whose entry has no label extension, logged once.
	noExt          map[uint64]bool
	writes, failed uint64
}

func newLabelStore(ct LabelClient, log *slog.Logger) *labelStore {
	return &labelStore{ct: ct, log: log, orig: map[conntrack.Conn]ctnetlink.Tuple{}, noExt: map[uint64]bool{}}
}

func seenOf(c conntrack.Conn) ctnetlink.Tuple { return ctnetlink.Tuple{Src: c.Client, Dst: c.Server} }

// Labels reads the labels of c's entry (conntrack.LabelSource): one GET, or
// two when the packet's tuple is the entry's reply one; ErrNoEntry when
// conntrack has no confirmed entry for it.
func (s *labelStore) Labels(c conntrack.Conn) (conntrack.Labels, error) {
	e, _, err := s.ct.Lookup(seenOf(c))
	if errors.Is(err, ctnetlink.ErrNotFound) {
		// The packet in hand started the entry (loose pickup): it is
		// confirmed only after the packet passed. See ErrNoEntry.
		return conntrack.Labels{}, conntrack.ErrNoEntry
	}
	if err != nil {
		s.log.Warn("reading conntrack labels; picking the connection up without them", "conn", c.String(), "err", err)
		return conntrack.Labels{}, err
	}
	s.orig[c] = e.Orig
	if !e.HasLabels {
		return conntrack.Labels{}, nil
	}
	l, err := conntrack.LabelsFromBytes(e.Labels[:])
	if err != nil {
		s.log.Warn("reading conntrack labels", "conn", c.String(), "err", err)
	}
	return l, err
}

// adopt remembers the original tuple of an entry found by a dump.
func (s *labelStore) adopt(c conntrack.Conn, orig ctnetlink.Tuple) { s.orig[c] = orig }

// write stores ev.Labels (with BE_LIBERAL when ev.Liberal) in the entry of
// ev's connection.
func (s *labelStore) write(ev *conntrack.Event) {
	orig, ok := s.orig[ev.Conn]
	if !ok {
		e, _, err := s.ct.Lookup(seenOf(ev.Conn))
		if err != nil {
			s.fail(ev, err)
			return
		}
		orig = e.Orig
		s.orig[ev.Conn] = orig
	}
	if err := s.ct.SetLabels(orig, ev.Labels.Bytes(), allLabelBits, ev.Liberal); err != nil {
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
	delete(s.orig, c)
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
