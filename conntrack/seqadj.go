package conntrack

import "github.com/ftpalg/ftpalg/conntrack/seqnum"

// SeqAdj is one direction's sequence adjustment as the kernel's seqadj
// conntrack extension holds it (struct nf_ct_seqadj): sequence numbers of
// that direction after Pos are shifted by After, those at or before it by
// Before. The kernel applies it in nf_confirm (POSTROUTING, LOCAL_IN), after
// every hook ftpalg queues from, to every later packet of the connection,
// pure ACKs included, and its window tracking (tcp_in_window) subtracts it,
// so a connection it maps stays strictly tracked without BE_LIBERAL.
//
// A connection whose entry has the extension (ftpalg's nftables table gives
// it to every NAT'd control connection, see rules.SeqAdjTable; conntrackd
// creates every entry it injects with it) is mapped by the kernel once
// ftpalg writes its SeqAdj (CTA_SEQ_ADJ_ORIG/REPLY) before it releases the
// first packet whose length it changed. Then ftpalg stops mapping: it
// computes each queued packet's numbers as before and writes what the
// kernel must be given to produce them (preSeq, preAck), and pure ACKs need
// not reach it at all. Its one correction point a direction is the last
// edit: exact for every position after the previous edit, which is all a
// receiver can still acknowledge while at most one edit of the direction is
// in flight (the labels say MULTI otherwise, and pure ACKs are queued again,
// so ftpalg maps them exactly).
type SeqAdj struct {
	Pos    seqnum.Value // correction_pos: where the last edit starts, sender space
	Before seqnum.Delta // offset_before: the shift at or before Pos
	After  seqnum.Delta // offset_after: the shift after Pos
}

// kernelAdj is the kernel seqadj that maps m's direction as the kernel can:
// the last edit is the correction point.
func (m *seqMap) kernelAdj() SeqAdj {
	t := m.total()
	if !m.hasLast {
		return SeqAdj{Before: t, After: t}
	}
	return SeqAdj{Pos: m.lastAt, Before: t - m.lastStep, After: t}
}

// seqAdj returns the adjustments of the client's and the server's stream.
func (f *flow) seqAdj() [2]SeqAdj { return [2]SeqAdj{f.c.m.kernelAdj(), f.s.m.kernelAdj()} }

// seq is what nf_ct_seq_adjust makes of sequence number s of a packet of
// a's direction.
func (a SeqAdj) seq(s seqnum.Value) seqnum.Value {
	if a.Pos.LessThan(s) {
		return s.Shift(a.After)
	}
	return s.Shift(a.Before)
}

// ack is what nf_ct_seq_adjust (and nf_ct_sack_block_adjust, for each SACK
// edge) makes of acknowledgement number x of a packet that acknowledges a's
// direction: the test is on x less the offset before, as the kernel's.
func (a SeqAdj) ack(x seqnum.Value) seqnum.Value {
	if a.Pos.LessThan(x.Shift(-a.Before)) {
		return x.Shift(-a.After)
	}
	return x.Shift(-a.Before)
}

// preSeq returns the sequence number to release so that the kernel makes
// it want: raw when raw does, else one of the two candidates. false: no
// number does (want lies in the gap a longer edit opens after Pos, which
// no segment of the kernel's model starts in); the caller drops.
func (a SeqAdj) preSeq(want, raw seqnum.Value) (seqnum.Value, bool) {
	if a.seq(raw) == want {
		return raw, true
	}
	if s := want.Shift(-a.After); a.Pos.LessThan(s) {
		return s, true
	}
	if s := want.Shift(-a.Before); !a.Pos.LessThan(s) {
		return s, true
	}
	return 0, false
}

// preAck is preSeq for an acknowledgement number or SACK edge.
func (a SeqAdj) preAck(want, raw seqnum.Value) (seqnum.Value, bool) {
	if a.ack(raw) == want {
		return raw, true
	}
	if x := want.Shift(a.After); a.Pos.LessThan(x.Shift(-a.Before)) {
		return x, true
	}
	if !a.Pos.LessThan(want) {
		return want.Shift(a.Before), true
	}
	return 0, false
}
