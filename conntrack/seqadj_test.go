package conntrack

import (
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/ftpalg/ftpalg/conntrack/seqnum"
)

// TestSeqAdjPre checks preSeq and preAck against the kernel's own
// arithmetic (seq, ack, as nf_ct_seq_adjust and nf_ct_sack_block_adjust
// compute it) around the correction point, across the wrap, for edits that
// lengthen and shorten: whatever they return, the kernel makes the wanted
// number of it, and they fail only inside the gap the kernel's model leaves.
func TestSeqAdjPre(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for n := 0; n < 2000; n++ {
		before := seqnum.Delta(r.IntN(400) - 200)
		step := seqnum.Delta(r.IntN(60) - 30)
		a := SeqAdj{Pos: seqnum.Value(r.Uint32()), Before: before, After: before + step}
		if n%10 == 0 {
			a.Pos = seqnum.Value(0xffffffff - r.Uint32N(100)) // near the wrap
		}
		for d := -300; d <= 300; d++ {
			want := a.Pos.Shift(seqnum.Delta(d))
			raw := want.Shift(seqnum.Delta(r.IntN(5) - 2))
			if s, ok := a.preSeq(want, raw); ok {
				if got := a.seq(s); got != want {
					t.Fatalf("%+v: preSeq(%d) = %d, which the kernel makes %d", a, want, s, got)
				}
			} else if !(a.Pos.Shift(a.Before).LessThan(want) && want.LessThanEq(a.Pos.Shift(a.After))) {
				t.Fatalf("%+v: preSeq(%d) failed outside the gap (pos+before, pos+after]", a, want)
			}
			if x, ok := a.preAck(want, raw); ok {
				if got := a.ack(x); got != want {
					t.Fatalf("%+v: preAck(%d) = %d, which the kernel makes %d", a, want, x, got)
				}
			} else if !(a.Pos.LessThan(want) && want.LessThanEq(a.Pos.Shift(-step))) {
				t.Fatalf("%+v: preAck(%d) failed outside the gap (pos, pos-step]", a, want)
			}
		}
	}
}

// TestSeqAdjPreKeepsRaw: a number the kernel already maps right is released
// as it came, so a kernel-mapped connection's segments are mostly accepted
// unmodified.
func TestSeqAdjPreKeepsRaw(t *testing.T) {
	a := SeqAdj{Pos: 1000, Before: 3, After: 5}
	for _, raw := range []seqnum.Value{10, 999, 1000, 1001, 5000} {
		if s, ok := a.preSeq(a.seq(raw), raw); !ok || s != raw {
			t.Errorf("preSeq(seq(%d)) = %d, %v", raw, s, ok)
		}
		if x, ok := a.preAck(a.ack(raw), raw); !ok || x != raw {
			t.Errorf("preAck(ack(%d)) = %d, %v", raw, x, ok)
		}
	}
}

// TestKernelSessions runs generated sessions (loss, reordering,
// duplication, retransmission both sides) whose mapping is handed to a
// simulated kernel seqadj at the first length change, whose pure ACKs then
// bypass the engine unless the labels say MULTI: each receiver must still
// get exactly the expected stream, with every ACK and SACK in its
// sender's space.
func TestKernelSessions(t *testing.T) {
	n := 40
	if testing.Short() {
		n = 8
	}
	for seed := uint64(3000); seed < uint64(3000+n); seed++ {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			runSessionRestartingBy(t, seed, 40+int(seed%5)*40, nil, false, true)
		})
	}
}

// TestKernelPipelinedSessions runs TestKernelSessions' kind of session
// with a client that pipelines rewritten commands (a PORT or EPRT sent
// before the previous one's reply), so that two rewrites of one direction
// are in flight, or in one segment:
//
//   - A segment with two edits that hands the connection to the kernel
//     must be renumbered for the seqadj the kernel then applies to it
//     (Engine.renumber). Before that, seeds 5008, 5013, 5020, 5029 and 5033
//     failed: the segment reached the server a byte off, or a SACK the
//     client got was outside its space.
//   - The kernel's one correction point cannot map the older rewrite's
//     numbers: the labels say MULTI, and the skip rule must queue the pure
//     ACKs for ftpalg to map. With MULTI left out of the simulated skip
//     rule (simOptions.noMultiSkip), seeds 5131, 5141, 5158, 5249 and 5277,
//     run here too, fail (an ACK mapped into a rewritten line), as did 5
//     of 300 in all; TestKernelSessions, whose client waits for each reply,
//     fails none.
func TestKernelPipelinedSessions(t *testing.T) {
	n := simSessions(40, 8)
	var seeds []uint64
	for seed := uint64(5000); seed < uint64(5000+n); seed++ {
		seeds = append(seeds, seed)
	}
	for _, seed := range []uint64{5131, 5141, 5158, 5249, 5277} {
		if seed >= uint64(5000+n) {
			seeds = append(seeds, seed)
		}
	}
	for _, seed := range seeds {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			runSim(t, seed, 40+int(seed%5)*40, simOptions{kernel: true, pipeline: true})
		})
	}
}

// TestKernelRestartedSessions restarts the engine of kernel-mapped sessions,
// keeping only the saved state, or only the labels (KERNEL among them): the
// seeds of TestRestartedSessions and TestLabelRestartedSessions.
func TestKernelRestartedSessions(t *testing.T) {
	n := simSessions(20, 4)
	for _, byLabels := range []bool{false, true} {
		first := uint64(1000)
		if byLabels {
			first = 2000
		}
		for seed := first; seed < first+uint64(n); seed++ {
			t.Run(fmt.Sprintf("%d/labels=%v", seed, byLabels), func(t *testing.T) {
				r := rand.New(rand.NewPCG(seed, 7))
				var at []int
				for s := 0; s < 5; s++ {
					at = append(at, 500+s*1500+r.IntN(1000))
				}
				runSessionRestartingBy(t, seed, 120, at, byLabels, true)
			})
		}
	}
}

// takeOver does what the daemon does after a first length change when the
// entry's seqadj took: Engine.KernelMaps, whose labels and SeqAdj the
// kernel then holds. It returns the packet to release for in, renumbered.
func (m *sim) takeOver(in []byte, res *Result) (out []byte) {
	for _, ev := range res.Events {
		if ev.Kind != EventLiberal {
			continue
		}
		lev, ok := m.e.KernelMaps(ev.Conn, in, res)
		if !ok {
			m.fail("KernelMaps(%s): not tracked", ev.Conn)
		}
		if !lev.Kernel || lev.Liberal || !lev.Labels.Bit(LabelKernel) {
			m.fail("KernelMaps event %+v: want KERNEL without BE_LIBERAL", lev)
		}
		m.labels[ev.Conn], m.adj, m.adjOn = lev.Labels, lev.SeqAdj, true
		for _, st := range m.e.Changed() {
			if !st.Kernel {
				m.fail("saved state of %s after KernelMaps without Kernel", st.Conn)
			}
			m.saved[st.Conn] = st
		}
	}
	switch res.Verdict {
	case Accept:
		return in
	case AcceptModified:
		return append([]byte(nil), res.Packet...)
	}
	return nil
}

// skips reports whether the kernel's skip rules let b pass without
// queueing: a segment with only ACK and no payload, of a connection whose
// labels say KERNEL and not MULTI. With handshake (the rules'
// SkipHandshake) also the client's FIN among them, a SYN or SYN/ACK without payload of
// a connection never rewritten (which marks the entry SEEN), and pure ACKs
// and FINs without payload of one marked SEEN and never rewritten.
func (m *sim) skips(b []byte) bool {
	k := parse(m.t, b)
	conn := Conn{Client: simClient, Server: simServer}
	l := m.labels[conn]
	flags, empty := k.flags, len(k.payload) == 0
	if k.src == simClient {
		flags &^= flagFIN // the client's FIN skips too; the server's is queued
	}
	if m.skipHandshake {
		switch {
		case k.flags&(flagSYN|flagFIN|flagRST) == flagSYN && empty && !l.Bit(LabelRewritten):
			l.setField(LabelSeen, 1, 1)
			m.labels[conn] = l
			return true
		case flags == flagACK && empty && l.Bit(LabelSeen) && !l.Bit(LabelRewritten):
			return true
		}
	} else {
		flags = k.flags
	}
	if !m.adjOn {
		return false
	}
	return flags == flagACK && empty && l.Bit(LabelKernel) && (m.noMultiSkip || !l.Bit(LabelMulti))
}

// kernelAdjust applies the simulated kernel seqadj to b, sent by the client
// when fromClient: its sequence number by its own direction's adjustment,
// its ACK and SACK edges by the other's.
func (m *sim) kernelAdjust(b []byte, fromClient bool) []byte {
	k := parse(m.t, b)
	own, other := m.adj[0], m.adj[1]
	if !fromClient {
		own, other = other, own
	}
	k.seq = own.seq(k.seq)
	if k.flags&flagACK != 0 {
		k.ack = other.ack(k.ack)
	}
	for i := range k.sacks {
		k.sacks[i] = [2]seqnum.Value{other.ack(k.sacks[i][0]), other.ack(k.sacks[i][1])}
	}
	return k.build(m.t)
}

// TestResumedEditFold: once the receiver acknowledges past a resumed edit
// (labels know its start, not its end), a retransmission of its line is
// trimmed to the acknowledgement, never released unrewritten at the shift
// after it.
func TestResumedEditFold(t *testing.T) {
	var m seqMap
	m.floor, m.base = 1000, 9
	m.lab = labelPoint{active: true, at: 1000, step: 2}
	line := []byte("EPRT !1!192.0.2.10!41472!\r\n")
	end := seqnum.Value(1000 + len(line))
	m.forget(end)
	if m.lab.active || m.floor != end {
		t.Fatalf("after forget(%d): lab %+v floor %d", end, m.lab, m.floor)
	}
	if out, at := m.render(nil, 1000, line); len(out) != 0 || at != end {
		t.Errorf("render of the acknowledged line = %q at %d, want nothing at %d", out, at, end)
	}
	if got := m.toReceiver(end); got != end.Shift(9) {
		t.Errorf("toReceiver(%d) = %d, want %d", end, got, end.Shift(9))
	}
}

// TestPlainPickupOldAck: a connection picked up plain (no SYN, no labels)
// passes a receiver's ACK of bytes before the first segment seen as it is.
func TestPlainPickupOldAck(t *testing.T) {
	var h half
	h.start(&segment{seq: 5000, flags: flagACK})
	if got := h.m.toSender(4980, snapStart); got != 4980 {
		t.Errorf("toSender(4980) = %d, want it unchanged", got)
	}
	var s half
	s.start(&segment{seq: 5000, flags: flagSYN})
	if s.m.floor != 5001 {
		t.Errorf("a SYN-started stream's floor = %d, want 5001", s.m.floor)
	}
}
