package conntrack

import (
	"bytes"
	"time"

	"github.com/ftpalg/ftpalg/conntrack/seqnum"
)

// half is the state of one direction of a control connection: what the
// sender has sent, what was released to the receiver, and the rewrites
// between the two.
//
// Bytes are released strictly in order. The one exception is a partial line
// that could still become an address line (per lineHandler.mayRewrite): it is
// held back — cut from the segment that carried it — so that when the rest of
// the line arrives the whole line can be rewritten before any of it reaches
// the receiver. The receiver simply does not acknowledge the held bytes; the
// next segment (or the sender's retransmission) brings them again. If the
// sender only ever retransmits the held bytes without adding to them (it is
// waiting for an ACK before sending more, as Nagle's algorithm does), the
// line is released unchanged and reported, because holding it any longer
// would stall the connection. Such a retransmission comes after the
// sender's retransmission timeout (200 ms at least on Linux); a copy of the
// held segment that arrives sooner is a network duplicate and changes
// nothing.
type half struct {
	// Fields are ordered by size, largest first, so that the two halves
	// of a flow carry no padding (see flowSizeLimit).
	m         seqMap
	part      *partial     // nil when no line is partial: see partial
	droppedAt stamp        // when decide dropped the segment at dropAt
	next      seqnum.Value // first sender byte not yet released
	sent      seqnum.Value // end of everything released, FIN included
	acked     seqnum.Value // highest acknowledgement from the receiver, in sender space
	isn       seqnum.Value
	dropAt    seqnum.Value
	// replaying: the line at replayAt is a retransmission of the line the
	// previous process rewrote (a resumed map's last edit).
	replayAt  seqnum.Value
	replaying bool
	init      bool // next is known
	sync      bool // next is at the start of a line
	ackValid  bool
	fin       bool // the sender's FIN was released
	syn       bool // started by the sender's SYN, at isn
	restored  bool // restored from a saved state: next may lag behind the stream
	// restoredHeld: the saved state had bytes held from next on, so the
	// receiver never got them and the sender will send them again.
	restoredHeld bool
	// resume: the connection was resumed from conntrack labels, which say
	// neither where lines start nor whether the previous process held
	// bytes back; unsure: no data segment was accepted since (see decide).
	resume, unsure bool
	dropped        bool // decide dropped a segment starting at dropAt, at droppedAt
}

// partial is what a half keeps of a line it has not released whole: bytes
// held back from the receiver, and the released start of a line not yet
// terminated. FTP clients and servers send whole lines per segment, so
// nearly every connection lives without one: a half allocates it at its
// first partial line and lets it go once the line is complete (tidy).
// Kept in every half, these fields made a flow 112 bytes larger, a fifth of
// an idle connection's memory.
type partial struct {
	held    []byte // bytes [next, next+len(held)) held back
	line    []byte // released bytes of the current, unterminated line
	heldAt  stamp  // when held last grew
	lineLen int    // full length of that line so far (line is capped)
	long    bool   // the current line was reported as too long
}

// held returns the bytes held back, nil if none.
func (h *half) held() []byte {
	if h.part == nil {
		return nil
	}
	return h.part.held
}

// lineLen returns the length of the current unterminated line so far.
func (h *half) lineLen() int {
	if h.part == nil {
		return 0
	}
	return h.part.lineLen
}

// partial returns h's partial line state, allocating it.
func (h *half) partial() *partial {
	if h.part == nil {
		h.part = new(partial)
	}
	return h.part
}

// dropHeld forgets the held bytes (released or superseded by the caller).
func (h *half) dropHeld() {
	if h.part != nil {
		h.part.held = h.part.held[:0]
	}
}

// tidy lets the partial line state go once nothing is partial.
func (h *half) tidy() {
	if p := h.part; p != nil && len(p.held) == 0 && len(p.line) == 0 && p.lineLen == 0 && !p.long {
		h.part = nil
	}
}

// clone copies h deeply enough to undo a push.
func (h *half) clone() half {
	c := *h
	if h.part != nil {
		p := *h.part
		p.held = append([]byte(nil), h.part.held...)
		p.line = append([]byte(nil), h.part.line...)
		c.part = &p
	}
	c.m.edits = append([]edit(nil), h.m.edits...)
	return c
}

// lineHandler is what a half calls for the FTP meaning of its bytes.
type lineHandler interface {
	// line is called for each complete line (terminator removed). whole is
	// false when part of the line was already released, so it cannot be
	// rewritten. overlong lines are reported, never parsed. The returned
	// bytes, if not nil, replace the line.
	// replay says the line is a retransmission of one the previous
	// process rewrote, which the dialog has accounted for already.
	line(content []byte, whole, overlong, replay bool) []byte
	// lineStart reports whether the sender's bytes b can begin a line;
	// loose accepts a segment too short to tell (alg.MayStartLine).
	lineStart(b []byte, loose bool) bool
	// cut reports that a resumed stream's first line was skipped: its
	// start went through the previous process.
	cut()
	// mayRewrite reports whether an unterminated line could still need a
	// rewrite and is worth holding back.
	mayRewrite(partial []byte) bool
	// stalled reports a held line released unchanged.
	stalled(partial []byte)
	// tooLong reports, once per line, a line that grew past the limit, as
	// soon as it does (the rest of it may never come). head is its start.
	tooLong(head []byte)
}

// start sets the release point from the first segment seen. A connection
// picked up after its SYN (for example after a restart) is not at a known
// line start, so its first partial line is never parsed.
func (h *half) start(seg *segment) {
	h.init = true
	h.next = seg.seq
	// A stream picked up without its SYN (ftpalg started, or restarted,
	// while the connection was open, and has no saved state for it)
	// starts a line where its bytes resume: FTP clients and servers send
	// whole lines per segment, and a connection that was never rewritten
	// has no offsets to get wrong. Ignoring that first line instead let a
	// PORT sent while no ftpalg was bound reach the server unrewritten.
	h.sync = true
	if seg.has(flagSYN) {
		h.next = seg.seq.Add(1)
		h.syn, h.isn = true, seg.seq
	}
	h.sent = h.next
	h.m.floor = h.next
	if h.resume || !seg.has(flagSYN) {
		// Resumed from labels that record no edit of this direction, or
		// picked up plain (labels that say nothing was rewritten, or
		// no state from a predecessor): every position maps with the
		// shift of 0, also before the first segment seen (a delayed
		// ACK, a retransmission of bytes the previous process
		// released); only ancient ones are clamped. With floor at the
		// first segment seen, a plain pickup's receiver ACK of bytes
		// before it (the previous process released them, and they
		// were lost on the way) was raised to floor: the sender was
		// told the receiver had bytes it never got, and stopped
		// resending them (TestRestartRegressions, seed 4015:
		// a restart during the login).
		h.m.floor = h.next - resumeReach
	}
}

// minRTO is Linux's lowest TCP retransmission timeout (TCP_RTO_MIN).
const minRTO = 200 * time.Millisecond

// resumeReach is how far before its first segment a resumed direction
// without edits still maps exactly: far more than any window.
const resumeReach = 1 << 30

// isSYN reports whether a SYN at seq belongs to this stream rather than to
// a new connection on the same port pair: a retransmitted or duplicated SYN
// carries the first one's sequence number however late it arrives, after
// data too. A stream picked up without its SYN knows only where its bytes
// resume.
func (h *half) isSYN(seq seqnum.Value) bool {
	if h.syn {
		return seq == h.isn
	}
	return seq == h.next.Add(^seqnum.Size(0))
}

// resync moves a restored stream's release point to p, which the receiver
// is known to have (its ACK says so): the bytes before it carried no edits.
func (h *half) resync(p seqnum.Value) {
	h.next, h.sent, h.sync = p, seqnum.Max(h.sent, p), h.boundaryAfterSave()
	h.dropHeld()
	h.tidy()
	// A resumed stream stays restored until decide accepts a segment:
	// the receiver may acknowledge more bytes of the previous process.
	h.restored, h.restoredHeld = h.unsure, false
}

// boundaryAfterSave says whether a restored stream that the previous
// process carried on beyond its saved release point is still at a line
// start there. It is when the state was saved at a line start: a segment
// that begins or ends inside a line makes the engine save durably (see
// Engine.Changed), so whatever the previous process released after its
// last save were whole lines. Without this, the first line after every
// restart was ignored, and a PORT sent while no ftpalg was bound reached
// the server unrewritten (500 Illegal PORT command, measured in
// TestRestartBusy).
func (h *half) boundaryAfterSave() bool {
	return h.sync && (h.part == nil || h.part.lineLen == 0 && len(h.part.line) == 0)
}

// heldEnd is the sender position after the held bytes.
func (h *half) heldEnd() seqnum.Value { return h.next.Add(seqnum.Size(len(h.held()))) }

// result of pushing a segment's payload through a half.
type pushResult struct {
	out      []byte       // payload for the receiver
	start    seqnum.Value // sender position of out[0]
	changed  bool         // out differs from the segment's payload
	gap      bool         // the segment starts beyond what can be reassembled
	trimTail bool         // the end of the segment was held back (its FIN too)
	replay   bool         // the resumed edit's line came again and was parsed
	refuse   error        // drop the segment and report this
}

// push runs a segment's payload through the stream and appends to out what
// the receiver must get. scratch is a reusable buffer; push returns it,
// possibly grown.
func (h *half) push(seg *segment, out, scratch []byte, now stamp, cfg *Config, fn lineHandler) (pushResult, []byte) {
	maxLine := cfg.MaxLine
	r := pushResult{out: out}
	data := seg.payload
	s := seg.seq
	if seg.has(flagSYN) {
		s = s.Add(1)
	}
	e := s.Add(seqnum.Size(len(data)))
	if h.m.lab.active && len(data) > 0 && s.LessThanEq(h.m.lab.at) {
		return h.replay(seg, r, s, e, scratch, now, cfg, fn)
	}
	he := h.heldEnd()
	if h.unsure && len(data) > 0 {
		switch {
		case h.ackValid && e.LessThanEq(h.acked):
			// Wholly acknowledged: replayed (trimmed) below; it says
			// nothing about what follows.
			if h.next.LessThan(h.acked) {
				h.next, h.sent, he = h.acked, seqnum.Max(h.sent, h.acked), h.acked
			}
		case !h.decide(s, data, now, fn):
			r.gap = true
			return r, scratch
		default:
			at := s
			if h.ackValid && s.LessThan(h.acked) {
				at, h.sync = h.acked, false // the new bytes start inside
			}
			if he != at {
				h.next, h.sent, he = at, seqnum.Max(h.sent, at), at
			}
			h.restored = false
		}
	}
	// A pure ACK beyond a restored stream's release point says where the
	// sender is, not what the receiver got: while no ftpalg was bound, the
	// queue rule dropped the sender's last segment (a PORT, a PASV), and
	// the sender's next ACK carries the sequence number after it. Taking
	// that as released made the retransmitted command a replay, passed on
	// unparsed: the server got the PORT unrewritten (500 Illegal PORT
	// command) or the PASV unseen (its 227 refused), measured in
	// TestRestartBusy. The ACK passes at its own position (below);
	// the receiver's ACK (resync) or the sender's data moves the stream on.
	switch {
	case len(data) == 0 && he.LessThan(s):
		// Beyond a hole: bytes before it were lost on the way here.
		// Moving the segment to the start of the hole would put a FIN
		// there, ending the receiver's stream before the lost bytes. A
		// FIN is dropped like data beyond a hole (the sender sends it
		// again after the missing bytes); an RST or a pure ACK passes at
		// its own position (an RST there draws a challenge ACK, RFC 5961,
		// which makes the sender reset exactly).
		if seg.has(flagFIN) && !seg.has(flagRST) && h.restored && !h.restoredHeld {
			// A restored stream's FIN beyond its release point: the
			// bytes before it went through the previous process without
			// edits, as for data below, and the receiver may never send
			// the ACK that would resync the stream (it acknowledged
			// them before the restart). Dropped as beyond a hole, the
			// FIN came again and again and the close never ended
			// (TestSkippedHandshakeSessions, labels restarts, seed 6085).
			h.next, h.restored = s, false
			h.fin, h.sent = true, seqnum.Max(h.sent, s.Add(1))
			r.start = s
			return r, scratch
		}
		if seg.has(flagFIN) && !seg.has(flagRST) {
			r.gap = true
			return r, scratch
		}
		r.start = s
		return r, scratch
	case len(data) == 0 && seg.has(flagFIN) && s == he && len(h.held()) > 0:
		// A bare FIN after held bytes: the sender adds nothing to the
		// held line, so it is released now, and the FIN with it.
		r.start = h.next
		scratch = append(scratch[:0], h.held()...)
		h.dropHeld()
		r.out = h.consume(scratch, r.out, now, maxLine, true, true, fn)
		h.fin = true
		h.sent = seqnum.Max(h.sent, h.next.Add(1))
		r.changed = true
		return r, scratch
	case len(data) == 0:
		// A pure ACK, RST or FIN within what the receiver has, or right
		// after bytes held back from it (it occupies no sequence space
		// there, or, for an RST, ends the connection anyway): at the end
		// of the receiver's stream.
		r.start = seqnum.Min(s, h.next)
		if seg.has(flagFIN) && s == h.next && len(h.held()) == 0 {
			h.fin = true
			h.sent = seqnum.Max(h.sent, s.Add(1))
		}
		return r, scratch
	case h.restored && !h.restoredHeld && he.LessThan(s):
		// Saved by a previous process before more bytes without edits
		// were released: the mapping beyond is the total shift, so the
		// stream simply continues here, at a line start if it was saved
		// at one (boundaryAfterSave).
		h.next, h.sent, h.sync = s, seqnum.Max(h.sent, s), h.boundaryAfterSave()
		he = s
	case he.LessThan(s):
		r.gap = true
		return r, scratch
	}
	h.restored = false
	// Bytes before next were released before: replay them.
	r.start = h.next
	if s.LessThan(h.next) {
		var rendered []byte
		rendered, at := h.m.render(r.out, s, data[:s.Size(seqnum.Min(e, h.next))])
		if len(rendered) > len(r.out) {
			r.start = at
		}
		r.out = rendered
	}
	// Bytes from next on are held back ones followed by new ones.
	switch {
	case he.LessThan(e):
		chunk := data[s.Size(he):]
		if held := h.held(); len(held) > 0 {
			scratch = append(append(scratch[:0], held...), chunk...)
			chunk = scratch
			h.dropHeld()
		}
		r.out = h.consume(chunk, r.out, now, maxLine, seg.has(flagFIN), false, fn)
	case h.next == s && h.next.LessThan(e) && len(h.held()) > 0 && now.sub(h.part.heldAt) >= cfg.StallTimeout:
		// A retransmission of held bytes and nothing more: the sender is
		// waiting for an ACK. Release the line unchanged.
		fn.stalled(h.part.held)
		scratch = append(scratch[:0], h.part.held...)
		h.dropHeld()
		r.out = h.consume(scratch, r.out, now, maxLine, seg.has(flagFIN), true, fn)
	}
	if seg.has(flagFIN) && h.next == e && len(h.held()) == 0 {
		h.fin = true
		h.sent = seqnum.Max(h.sent, e.Add(1))
	}
	r.trimTail = h.next.LessThan(e)
	r.changed = r.start != s || !bytes.Equal(r.out[len(out):], data)
	return r, scratch
}

// consume releases chunk, the sender bytes starting at next: complete lines
// go to the handler (and are replaced where it says so, recording an edit),
// and a trailing partial line is either held back or released. noHold
// forces the release.
func (h *half) consume(chunk, out []byte, now stamp, maxLine int, fin, noHold bool, fn lineHandler) []byte {
	pos := 0
	for {
		i := bytes.IndexByte(chunk[pos:], '\n')
		if i < 0 {
			break
		}
		lf := pos + i
		content := chunk[pos:lf]
		term := chunk[lf : lf+1]
		if n := len(content); n > 0 && content[n-1] == '\r' {
			content, term = content[:n-1], chunk[lf-1:lf+1]
		}
		var repl []byte
		switch {
		case !h.sync:
			// The first line of a connection picked up mid-stream: its
			// start is unknown, so it means nothing.
			h.sync = true
			if h.resume {
				fn.cut()
			}
		case h.lineLen() > 0:
			p := h.part
			full := p.lineLen + len(content)
			if full <= maxLine {
				p.line = append(p.line, chunk[pos:lf]...)
				fn.line(bytes.TrimSuffix(p.line, []byte{'\r'}), false, false, false)
			} else {
				if !p.long {
					fn.tooLong(p.line)
				}
				fn.line(p.line, false, true, false)
			}
		case len(content) > maxLine:
			fn.tooLong(content[:maxLine])
			fn.line(content, true, true, false)
		default:
			replay := h.replaying && h.next.Add(seqnum.Size(pos)) == h.replayAt
			repl = fn.line(content, true, false, replay)
		}
		if p := h.part; p != nil {
			p.line, p.lineLen, p.long = p.line[:0], 0, false
		}
		start := h.next.Add(seqnum.Size(pos))
		if repl != nil {
			h.m.add(start, len(content), repl)
			out = append(out, repl...)
			out = append(out, term...)
		} else {
			out = append(out, chunk[pos:lf+1]...)
		}
		pos = lf + 1
	}
	tail := chunk[pos:]
	h.next = h.next.Add(seqnum.Size(pos))
	// A trailing CR may be the first half of the line's CRLF.
	if len(tail) > 0 && !fin && !noHold && h.sync && h.lineLen() == 0 && len(tail) <= maxLine && fn.mayRewrite(bytes.TrimSuffix(tail, []byte{'\r'})) {
		p := h.partial()
		p.held = append(p.held[:0], tail...)
		p.heldAt = now
	} else if len(tail) > 0 {
		out = append(out, tail...)
		h.next = h.next.Add(seqnum.Size(len(tail)))
		p := h.partial()
		if room := maxLine - len(p.line); room > 0 {
			p.line = append(p.line, tail[:min(room, len(tail))]...)
		}
		p.lineLen += len(tail)
		if p.lineLen > maxLine && !p.long && h.sync {
			p.long = true
			fn.tooLong(p.line)
		}
	}
	h.sent = seqnum.Max(h.sent, h.next)
	h.tidy()
	return out
}

// replay handles a data segment of a map resumed from labels that starts at
// or before the resumed edit's start at: bytes before at pass unchanged at
// the shift before the edit (they carried no edit in flight, or MULTI would
// have had the engine drop the segment); a segment that covers at brings
// the rewritten line again, which is parsed and rewritten the normal way
// from at on. The engine then checks the rewrite changes the length by the
// edit's step, and undoes the push and drops the segment if not: its bytes
// must reach the receiver at the positions the previous process gave them.
func (h *half) replay(seg *segment, r pushResult, s, e seqnum.Value, scratch []byte, now stamp, cfg *Config, fn lineHandler) (pushResult, []byte) {
	data := seg.payload
	at := h.m.lab.at
	r.start = s
	base := len(r.out)
	if e.LessThanEq(at) {
		r.out = append(r.out, data...) // wholly before the edit
		return r, scratch
	}
	tail := data[s.Size(at):]
	if len(h.m.edits) > 0 {
		// Lines after it were rewritten already: the receiver got them
		// at positions that assumed this one arrived as before.
		r.refuse = ErrReplayLate
		return r, scratch
	}
	if bytes.IndexByte(tail, '\n') < 0 {
		r.refuse = ErrReplaySplit
		return r, scratch
	}
	r.out = append(r.out, data[:s.Size(at)]...)
	h.m.lab.active = false
	h.m.floor, h.m.base = at, h.m.base-h.m.lab.step
	h.next, h.sent = at, seqnum.Max(h.sent, at)
	h.sync, h.unsure, h.restored, h.restoredHeld = true, false, false, false
	h.part = nil
	h.replaying, h.replayAt = true, at
	r.out = h.consume(tail, r.out, now, cfg.MaxLine, seg.has(flagFIN), false, fn)
	h.replaying = false
	r.replay = true
	if seg.has(flagFIN) && h.next == e && len(h.held()) == 0 {
		h.fin = true
		h.sent = seqnum.Max(h.sent, e.Add(1))
	}
	r.trimTail = h.next.LessThan(e)
	r.changed = !bytes.Equal(r.out[base:], data)
	return r, scratch
}

// decide says whether the first data segment a resumed stream sees may be
// released, and whether it starts a line. The previous process may have
// held back the start of an address line (never released, so the receiver
// never got it, and the labels cannot say): a segment that continues such
// a line must not pass, or the whole line could no longer be rewritten.
// The held bytes always start a line, so their retransmission passes
// alg.LineStart; a segment that does not is released only where the
// receiver is known to have everything before it (its ACK), or when the
// sender sends it again from the same place after a retransmission timeout
// (so it is the sender's oldest unacknowledged byte: nothing before it is
// missing; a copy sooner is a network duplicate, or a retransmission the
// receiver's SACKs asked for, whose ACKs would have told), and there it
// starts a line if it may (alg.MayStartLine). Otherwise it is dropped and
// TCP sends it again.
func (h *half) decide(s seqnum.Value, data []byte, now stamp, fn lineHandler) bool {
	exact := h.ackValid && s == h.acked || h.dropped && s == h.dropAt && now.sub(h.droppedAt) >= minRTO
	switch {
	case fn.lineStart(data, exact):
		h.sync = true
	case exact, h.ackValid && s.LessThan(h.acked):
		h.sync = false
	default:
		if !h.dropped || s != h.dropAt {
			h.dropped, h.dropAt, h.droppedAt = true, s, now
		}
		return false
	}
	h.unsure = false
	return true
}
