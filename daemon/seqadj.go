package daemon

import (
	"github.com/ftpalg/ftpalg/conntrack"
	"github.com/ftpalg/ftpalg/ctnetlink"
)

// SeqAdjClient writes the kernel's seqadj of conntrack entries and reads
// entries back. The ctnetlink client implements it.
type SeqAdjClient interface {
	Get(t ctnetlink.Tuple) (ctnetlink.Entry, error)
	SetSeqAdj(t ctnetlink.Tuple, adj [2]ctnetlink.SeqAdj) error
	SetLabelsSeqAdj(t ctnetlink.Tuple, labels, mask [16]byte, adj [2]ctnetlink.SeqAdj) error
}

// useKernelSeqAdj makes the store hand each rewritten connection's sequence
// mapping to the kernel where the connection's entry has the seqadj
// extension (rules.SeqAdjTable gives it to NAT'd control connections;
// conntrackd's injected entries have it). The kernel then maps every later
// packet, pure ACKs included, which need not be queued (rules'
// kernelSkipSpec), and tracks the window strictly: no BE_LIBERAL.
func (s *labelStore) useKernelSeqAdj(c SeqAdjClient) { s.kernel = c }

func toCT(a [2]conntrack.SeqAdj) [2]ctnetlink.SeqAdj {
	var out [2]ctnetlink.SeqAdj
	for i := range a {
		out[i] = ctnetlink.SeqAdj{Pos: uint32(a[i].Pos), Before: int32(a[i].Before), After: int32(a[i].After)}
	}
	return out
}

// handOver tries to give the kernel the mapping of ev's connection: ev is
// the EventLabels of its first length-changing edit, whose SeqAdj is the
// mapping after it, and the packet that made it is not yet released (the
// kernel maps that packet the same either way: nothing before the edit
// moves). It writes the seqadj and reads the entry back, since the kernel
// ignores it silently on an entry without the extension. It reports
// whether the kernel maps the connection now; if not, the caller goes on
// with BE_LIBERAL and ftpalg's own mapping, as without the kernel's.
// Costs two round trips, once per rewritten connection.
func (s *labelStore) handOver(ev *conntrack.Event) bool {
	t, err := s.tupleOf(ev.Conn)
	if err != nil {
		s.log.Warn("looking up the entry to hand its mapping to the kernel; ftpalg maps it", "session", ev.Session, "conn", ev.Conn.String(), "err", err)
		return false
	}
	adj := toCT(ev.SeqAdj)
	if err := s.kernel.SetSeqAdj(t, adj); err != nil {
		s.log.Warn("writing the kernel's seqadj; ftpalg maps the connection", "session", ev.Session, "conn", ev.Conn.String(), "err", err)
		return false
	}
	e, err := s.kernel.Get(t)
	switch {
	case err != nil:
		s.log.Warn("reading the kernel's seqadj back; ftpalg maps the connection", "session", ev.Session, "conn", ev.Conn.String(), "err", err)
	case !e.SeqAdjust:
		// No extension: not NAT'd, or older than ftpalg's nftables table.
		s.log.Debug("entry has no seqadj extension; ftpalg maps the connection", "session", ev.Session, "conn", ev.Conn.String())
		return false
	case e.Orig.Src != ev.Conn.Client || e.SeqAdj != adj:
		// The entry's original direction is the server's (conntrack
		// picked it up from a server's packet): what was written maps
		// the wrong directions, so map nothing.
		s.log.Warn("entry's seqadj does not match the connection's directions; ftpalg maps it", "session", ev.Session, "conn", ev.Conn.String(), "orig", e.Orig.String(), "reply", e.Reply.String())
	default:
		s.log.Debug("kernel maps the connection's sequence numbers", "session", ev.Session, "conn", ev.Conn.String(), "seqadj", adj)
		return true
	}
	if err == nil {
		if err := s.kernel.SetSeqAdj(t, [2]ctnetlink.SeqAdj{}); err != nil {
			s.log.Error("clearing a wrong seqadj; the connection's numbers may be wrong", "session", ev.Session, "conn", ev.Conn.String(), "err", err)
		}
	}
	return false
}

// checkKernel vets labels found on e, the entry of c, before c is taken
// over from them. Labels that say KERNEL on an entry whose seqadj no longer
// maps it (an entry conntrackd injected without its seqadj, say) would let
// the new process map nothing while the kernel maps nothing either: KERNEL
// is cleared, so ftpalg maps the connection from the same fields, and the
// entry is told so (BE_LIBERAL, and the pure-ACK skip rule no longer
// matches). It returns the labels to resume from.
func (s *labelStore) checkKernel(c conntrack.Conn, e ctnetlink.Entry, l conntrack.Labels) conntrack.Labels {
	if !l.Bit(conntrack.LabelKernel) || e.SeqAdjust && e.Orig.Src == c.Client {
		return l
	}
	st, err := l.Decode()
	if err != nil {
		return l // refused by the engine
	}
	st.Kernel = false
	fixed := st.Encode()
	s.log.Warn("labels say the kernel maps the connection, but its entry has no seqadj; ftpalg maps it",
		"conn", c.String(), "orig", e.Orig.String(), "reply", e.Reply.String(), "labels", l.String())
	if err := s.ct.SetLabels(s.remember(c, e), fixed.Bytes(), allLabelBits, true); err != nil {
		s.log.Error("clearing KERNEL from the labels; the connection's pure ACKs pass unmapped", "conn", c.String(), "labels", fixed.String(), "err", err)
	}
	return fixed
}
