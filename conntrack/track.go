package conntrack

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/ftpalg/ftpalg/alg"
	"github.com/ftpalg/ftpalg/conntrack/seqnum"
)

// track runs one segment of a known flow and builds the verdict.
func (e *Engine) track(f *flow, pkt []byte, seg *segment, now time.Time) Result {
	snd, rcv := f.halves(e.side)
	if !snd.init {
		snd.start(seg)
	}
	if snd.m.unmappable(seg.seq, false) && len(seg.payload) > 0 || seg.has(flagACK) && rcv.init && rcv.m.unmappable(seg.ack, true) {
		e.refuse(f, alg.KindNone, netip.AddrPort{}, ErrMulti)
		return Result{Verdict: Drop}
	}

	// The ACK and SACK numbers acknowledge the other direction's stream,
	// in its receiver's space: carry them back to its sender's.
	ack := seg.ack
	if seg.has(flagACK) && rcv.init {
		ack = rcv.m.toSender(seg.ack, snapStart)
		if rcv.restored && rcv.next.LessThan(ack) {
			rcv.resync(ack) // released by the previous process without edits
		}
		if rcv.sent.LessThan(ack) && !rcv.restored && e.finSkipped(f, rcv, ack) {
			rcv.fin, rcv.sent = true, ack
		}
		if rcv.sent.LessThan(ack) && !rcv.restored {
			e.refuse(f, alg.KindNone, netip.AddrPort{}, fmt.Errorf("%w: ack %d, sent up to %d", ErrInvalidAck, ack, rcv.sent))
			return Result{Verdict: Drop}
		}
		if !rcv.ackValid || rcv.acked.LessThan(ack) {
			rcv.acked, rcv.ackValid = ack, true
			rcv.m.forget(ack)
		}
	}
	var sacks [maxSACKs][2]seqnum.Value
	sackChanged := false
	if rcv.init {
		for i := 0; i < seg.nSACK; i++ {
			l, r := seg.sackBlock(pkt, i)
			sacks[i] = [2]seqnum.Value{rcv.m.toSender(l, snapEnd), rcv.m.toSender(r, snapStart)}
			sackChanged = sackChanged || sacks[i] != [2]seqnum.Value{l, r}
		}
	}

	dialog, held, partial := f.dialog, len(snd.held()) > 0, snd.lineLen() > 0
	var undo *replayUndo
	if snd.m.lab.active && len(seg.payload) > 0 {
		undo = &replayUndo{h: snd.clone(), dialog: f.dialog, refused: f.refused, rewrites: f.rewrites, liberal: f.liberal, events: len(e.events), step: snd.m.lab.step, at: snd.m.lab.at}
	}
	pr, scratch := snd.push(seg, e.payload[:0], e.scratch, e.stamp(now), &e.cfg, e)
	e.scratch = scratch
	e.payload = pr.out[:0]
	if pr.refuse != nil {
		e.refuse(f, alg.KindNone, netip.AddrPort{}, pr.refuse)
		return Result{Verdict: Drop}
	}
	if pr.replay && undo != nil {
		if err := undo.check(snd); err != nil {
			*snd = undo.h
			f.dialog, f.refused, f.rewrites, f.liberal = undo.dialog, undo.refused, undo.rewrites, undo.liberal
			e.events = e.events[:undo.events]
			e.refuse(f, alg.KindNone, netip.AddrPort{}, err)
			return Result{Verdict: Drop}
		}
	}
	switch {
	case snd.m.added || held || len(snd.held()) > 0 || partial || snd.lineLen() > 0:
		// A new edit, bytes held back, or a segment that ended (or
		// began) inside a line: a successor must know exactly which bytes
		// the receiver was given and where lines begin. (Real clients and
		// servers send whole lines, so only edits are frequent.)
		snd.m.added = false
		e.markChanged(f, true)
	case (f.saved || e.cfg.SaveDialogs) && f.dialog != dialog:
		// Durable too for a connection that is saved (it was rewritten):
		// a successor after a crash that missed a PASV, or the reply
		// that answered an earlier command, matches the next 227 to the
		// wrong command and refuses it (measured: 1 of 6 busy PASV
		// sessions lost to a SIGKILL while dialogs followed within
		// 100 ms). Costs one state write per command and reply of a
		// rewritten connection.
		e.markChanged(f, f.saved)
	}
	if pr.gap {
		return Result{Verdict: Drop}
	}
	seq := seg.seq
	if !seg.has(flagSYN) {
		seq = snd.m.toReceiver(pr.start)
	}
	if f.kernel {
		want, wantAck := seq, ack
		if !e.kernelNumbers(f, snd, rcv, pkt, seg, &seq, &ack, &sacks, &sackChanged) {
			e.refuse(f, alg.KindNone, netip.AddrPort{}, fmt.Errorf("%w: seq %d (receiver %d, seqadj %+v), ack %d (sender %d, seqadj %+v)",
				ErrKernelMap, seg.seq, want, snd.m.kernelAdj(), seg.ack, wantAck, rcv.m.kernelAdj()))
			return Result{Verdict: Drop}
		}
	}
	if !pr.changed && seq == seg.seq && ack == seg.ack && !sackChanged {
		return Result{Verdict: Accept}
	}
	if !pr.changed {
		return Result{Verdict: AcceptModified, Packet: e.patchNumbers(pkt, seg, seq, ack, &sacks, sackChanged)}
	}
	out, err := e.rebuild(pkt, seg, seq, ack, &sacks, sackChanged, pr.out, pr.trimTail)
	if err != nil {
		// Cannot happen for a packet that decoded; dropping is the safe
		// answer, as the sender will retransmit.
		e.refuse(f, alg.KindNone, netip.AddrPort{}, fmt.Errorf("rebuilding segment: %w", err))
		return Result{Verdict: Drop}
	}
	return Result{Verdict: AcceptModified, Packet: out}
}

// finSkipped reports whether ack, one past everything rcv's sender
// released, acknowledges that sender's FIN, which the queue rules let pass
// unseen (SkipHandshake): they do for the client's FIN of a connection
// whose labels say it was never rewritten, or that the kernel's seqadj
// maps with one edit in flight (rules.LabelKernel without LabelMulti), and
// the labels the kernel sees are the last f reported. A server's FIN is
// always queued (see rules.ackMatch).
func (e *Engine) finSkipped(f *flow, rcv *half, ack seqnum.Value) bool {
	if !e.cfg.SkipHandshake || rcv != &f.c || rcv.fin || ack != rcv.sent.Add(1) {
		return false
	}
	l := f.labels
	return !l.Bit(LabelRewritten) || l.Bit(LabelKernel) && !l.Bit(LabelMulti)
}

// kernelNumbers turns the numbers a segment of a kernel-mapped connection
// must reach its receiver with into those to release it with, which the
// kernel's seqadj then maps (SeqAdj.preSeq, preAck); sackChanged is set
// anew against the packet's own SACK edges. false: some number cannot be
// produced by the kernel's model.
func (e *Engine) kernelNumbers(f *flow, snd, rcv *half, pkt []byte, seg *segment, seq, ack *seqnum.Value, sacks *[maxSACKs][2]seqnum.Value, sackChanged *bool) bool {
	ok := true
	*seq, ok = snd.m.kernelAdj().preSeq(*seq, seg.seq)
	if !ok || !rcv.init {
		return ok
	}
	ra := rcv.m.kernelAdj()
	if seg.has(flagACK) {
		if *ack, ok = ra.preAck(*ack, seg.ack); !ok {
			return false
		}
	}
	*sackChanged = false
	for i := 0; i < seg.nSACK; i++ {
		l, r := seg.sackBlock(pkt, i)
		pl, okl := ra.preAck(sacks[i][0], l)
		pr, okr := ra.preAck(sacks[i][1], r)
		if !okl || !okr {
			return false
		}
		sacks[i] = [2]seqnum.Value{pl, pr}
		*sackChanged = *sackChanged || pl != l || pr != r
	}
	return true
}

// patchNumbers copies pkt and changes only sequence, acknowledgement and
// SACK numbers, updating the TCP checksum incrementally (RFC 1624): the
// payload is untouched, so summing it again would be wasted work.
func (e *Engine) patchNumbers(pkt []byte, seg *segment, seq, ack seqnum.Value, sacks *[maxSACKs][2]seqnum.Value, sackChanged bool) []byte {
	b := append(e.num[:0], pkt...)
	e.num = b
	t := seg.tcpOff
	sum := binary.BigEndian.Uint16(b[t+tcpSumOff:])
	sum = checksumUpdate32(sum, put32(b, t+tcpSeqOff, uint32(seq)), uint32(seq))
	if seg.has(flagACK) {
		sum = checksumUpdate32(sum, put32(b, t+tcpAckOff, uint32(ack)), uint32(ack))
	}
	if sackChanged {
		for i := 0; i < seg.nSACK; i++ {
			o := seg.sackOffs[i]
			sum = checksumUpdate32(sum, put32(b, o, uint32(sacks[i][0])), uint32(sacks[i][0]))
			sum = checksumUpdate32(sum, put32(b, o+4, uint32(sacks[i][1])), uint32(sacks[i][1]))
		}
	}
	binary.BigEndian.PutUint16(b[t+tcpSumOff:], sum)
	return b
}

// rebuild serializes the decoded headers with new numbers around a new
// payload, with gopacket fixing lengths and computing checksums in full.
func (e *Engine) rebuild(pkt []byte, seg *segment, seq, ack seqnum.Value, sacks *[maxSACKs][2]seqnum.Value, sackChanged bool, payload []byte, trimTail bool) ([]byte, error) {
	tcp := &e.dec.tcp
	tcp.Seq, tcp.Ack = uint32(seq), uint32(ack)
	if trimTail {
		tcp.FIN = false // the FIN follows bytes held back; it comes again
	}
	if sackChanged {
		// The decoded options alias pkt: give SACK its own bytes.
		opts := append(e.opts[:0], tcp.Options...)
		k := 0
		for i := range opts {
			if opts[i].OptionType != layers.TCPOptionKindSACK {
				continue
			}
			n := len(opts[i].OptionData) / 8 * 8
			data := e.sack[k*8 : k*8 : len(e.sack)]
			for j := 0; j < n && k < seg.nSACK; j += 8 {
				data = binary.BigEndian.AppendUint32(data, uint32(sacks[k][0]))
				data = binary.BigEndian.AppendUint32(data, uint32(sacks[k][1]))
				k++
			}
			opts[i].OptionData = data
		}
		tcp.Options = opts
	}
	var ip gopacket.SerializableLayer
	if pkt[0]>>4 == 4 {
		ip = &e.dec.ip4
		tcp.SetNetworkLayerForChecksum(&e.dec.ip4)
	} else {
		ip = &e.dec.ip6
		tcp.SetNetworkLayerForChecksum(&e.dec.ip6)
	}
	opts := gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}
	if err := gopacket.SerializeLayers(e.out, opts, ip, tcp, gopacket.Payload(payload)); err != nil {
		return nil, fmt.Errorf("serializing %s: %w", seg.src, err)
	}
	return e.out.Bytes(), nil
}

// The engine is the line handler of the flow being processed.

func (e *Engine) mayRewrite(partial []byte) bool {
	f := e.cur
	if e.cfg.TLS == TLSRefuse && !f.dialog.Opaque() {
		// Lines the TLS policy may replace are held like address lines.
		if e.side == alg.Server && f.refused > 0 || e.side == alg.Client && mayBeAuth(partial) {
			return true
		}
	}
	return f.dialog.MayRewrite(e.side, partial)
}

// mayBeAuth reports whether a partial client line could still be an AUTH
// command (leading spaces allowed, case-insensitive).
func mayBeAuth(p []byte) bool {
	p = bytes.TrimLeft(p, " ")
	n := min(len(p), 4)
	return bytes.EqualFold(p[:n], []byte("AUTH")[:n]) && (len(p) <= 4 || p[4] == ' ')
}

func (e *Engine) stalled(partial []byte) { e.stats.Stalled++ }

func (e *Engine) tooLong(head []byte) {
	e.refuse(e.cur, alg.KindNone, netip.AddrPort{}, fmt.Errorf("%w: %d bytes and counting, passed unparsed", alg.ErrLineTooLong, e.cfg.MaxLine))
}

func (e *Engine) cut() {
	if f := e.cur; e.side == alg.Client && !f.cut {
		f.cut = true
		f.dialog.Cut()
	}
}

func (e *Engine) lineStart(b []byte, loose bool) bool {
	if loose {
		return alg.MayStartLine(e.side, b)
	}
	return alg.LineStart(e.side, b)
}

func (e *Engine) line(content []byte, whole, overlong, replay bool) []byte {
	f := e.cur
	var found alg.Found
	switch {
	case replay:
		found = f.dialog.Replay(e.side, content)
	case overlong:
		// Only the head is known: the dialog still counts the line (it
		// was reported when it grew too long).
		head := content[:min(len(content), e.cfg.MaxLine)]
		if e.side == alg.Client {
			f.dialog.ClientOverlong(head)
		} else {
			f.dialog.ServerOverlong(head)
		}
		return nil
	case e.side == alg.Client && f.resumed && !f.cut:
		f.cut = true
		found = f.firstClientLine(content)
	case e.side == alg.Client:
		found = f.dialog.ClientLine(content)
	default:
		opaque := f.dialog.Opaque()
		found = f.dialog.ServerLine(content)
		if !opaque && f.dialog.Opaque() {
			e.stats.TLS++
			e.refuse(f, alg.KindNone, netip.AddrPort{}, ErrTLS)
		}
	}
	if e.cfg.TLS == TLSRefuse {
		if repl := e.refuseTLS(f, found, whole); repl != nil {
			return e.edited(f, content, repl)
		}
	}
	switch {
	case found.Kind == alg.KindNone:
		return nil
	case found.Err != nil:
		e.refuse(f, found.Kind, found.Addr, found.Err)
		return nil
	case !whole:
		e.refuse(f, found.Kind, found.Addr, ErrSplit)
		return nil
	}
	snd, _ := f.halves(e.side)
	if len(snd.m.edits) >= e.cfg.MaxEdits {
		e.refuse(f, found.Kind, found.Addr, ErrTooManyEdits)
		return nil
	}
	if !f.dialog.LoggedIn() && !f.pickedUp && !e.cfg.AllowBeforeLogin {
		e.refuse(f, found.Kind, found.Addr, ErrNotLoggedIn)
		return nil
	}
	if e.cfg.Admit != nil {
		if err := e.cfg.Admit(f.id, f.conn); err != nil {
			e.refuse(f, found.Kind, found.Addr, fmt.Errorf("%w: %w", ErrLimit, err))
			return nil
		}
	}
	ph, announced, err := e.plan(f, found)
	if err != nil {
		e.refuse(f, found.Kind, announced, err)
		return nil
	}
	// 229 carries only a port: the peer reuses the control address.
	change := ph.Public != announced
	if found.Kind == alg.Kind229 {
		change = ph.Public.Port() != announced.Port()
	}
	var repl []byte
	if change {
		repl, err = found.Rewrite(e.lineBuf[:0], content, ph.Public)
		if err != nil {
			e.refuse(f, found.Kind, announced, err)
			return nil
		}
		e.lineBuf = repl
	}
	e.emit(Event{Kind: EventPinhole, Session: f.id, Conn: f.conn, Msg: found.Kind, Pinhole: ph, Path: f.path})
	if repl == nil {
		return nil
	}
	f.rewrites++
	e.stats.Rewrites++
	e.emit(Event{Kind: EventRewrite, Session: f.id, Conn: f.conn, Msg: found.Kind, From: announced, To: ph.Public, Path: f.path})
	return e.edited(f, content, repl)
}

// firstClientLine reads the first client line of a connection resumed from
// its labels. A passive command the client sent before it got the server's
// last rewritten reply (its ACK does not reach that reply's start) is the
// command that reply answered, come again: the previous process was killed
// after it wrote the reply's labels but before it released the reply, so
// the client sends its PASV again and the server its 227. The labels say
// nothing is outstanding but not where the client's stream is; counted as
// a new command, the PASV made every later final reply answer the command
// before its own, and the next 227 was refused as unsolicited (measured:
// TestRestartBusy ServerForward/PASV/SIGKILL, 1 of 6 sessions in a CI run
// under load). Every other first line is alg.Dialog.ClientFirstLine's.
func (f *flow) firstClientLine(content []byte) alg.Found {
	if srv := &f.s; srv.m.hasLast && srv.ackValid && !srv.m.lastAt.LessThan(srv.acked) {
		if found := f.dialog.Replay(alg.Client, content); found.Verb == alg.VerbPASV {
			return found
		}
	}
	return f.dialog.ClientFirstLine(content)
}

// edited is called with every replacement line before it is recorded: the
// first one that changes a connection's length asks for liberal window
// tracking.
func (e *Engine) edited(f *flow, content, repl []byte) []byte {
	if len(repl) != len(content) && !f.liberal {
		f.liberal = true
		e.emit(Event{Kind: EventLiberal, Session: f.id, Conn: f.conn, Path: f.path})
	}
	return repl
}

// refuseTLS carries out TLSRefuse: a whole AUTH command is replaced by one
// the server cannot accept, and the reply that answers it by a 534 that says
// why. It returns the replacement line, or nil.
func (e *Engine) refuseTLS(f *flow, found alg.Found, whole bool) []byte {
	snd, _ := f.halves(e.side)
	switch {
	case !whole || len(snd.m.edits) >= e.cfg.MaxEdits:
		return nil
	case e.side == alg.Client && found.Verb == alg.VerbAUTH:
		f.refused++
		e.refuse(f, alg.KindNone, netip.AddrPort{}, ErrTLSRefused)
		return append(e.lineBuf[:0], refusedAuth...)
	case e.side == alg.Server && found.Answers == alg.VerbAUTH && f.refused > 0:
		f.refused--
		return append(e.lineBuf[:0], refusedReply...)
	}
	return nil
}

// plan decides where the peer must connect for an announced data endpoint,
// and refuses announcements that point anywhere but at the sender (FTP
// bounce, CVE-1999-0017) or at a privileged port.
func (e *Engine) plan(f *flow, found alg.Found) (Pinhole, netip.AddrPort, error) {
	sender, peer := f.conn.Server, f.conn.Client
	if e.side == alg.Client {
		sender, peer = f.conn.Client, f.conn.Server
	}
	announced := found.Addr
	if found.Kind == alg.Kind229 {
		announced = netip.AddrPortFrom(sender.Addr(), found.Addr.Port())
	}
	if announced.Port() < e.cfg.MinDataPort {
		return Pinhole{}, announced, fmt.Errorf("%w: %d < %d", ErrLowPort, announced.Port(), e.cfg.MinDataPort)
	}
	pub := f.public[e.side]
	if !pub.IsValid() {
		var err error
		pub, err = e.nat.PublicAddr(f.conn, e.side == alg.Client)
		if err != nil {
			return Pinhole{}, announced, fmt.Errorf("%w: %w", ErrMapping, err)
		}
		f.public[e.side] = pub
	}
	var target netip.AddrPort
	switch announced.Addr() {
	case sender.Addr():
		target = announced
	case pub: // the sender already announces its public address
		target = netip.AddrPortFrom(sender.Addr(), announced.Port())
	default:
		return Pinhole{}, announced, fmt.Errorf("%w: sender %s, public %s", ErrBounce, sender.Addr(), pub)
	}
	public := target
	if pub != sender.Addr() {
		port, err := e.nat.ReservePort(pub, announced.Port())
		if err != nil {
			return Pinhole{}, announced, fmt.Errorf("%w: reserving a port on %s: %w", ErrMapping, pub, err)
		}
		public = netip.AddrPortFrom(pub, port)
	}
	return Pinhole{Peer: peer.Addr(), Public: public, Target: target}, announced, nil
}

// replayUndo is what a push that replays a resumed edit's line may have to
// undo.
type replayUndo struct {
	h        half
	dialog   alg.Dialog
	refused  uint8
	rewrites uint32
	liberal  bool
	events   int
	step     seqnum.Delta
	at       seqnum.Value
}

// check verifies that the replayed line changed the stream's length by
// exactly the resumed edit's step.
func (u *replayUndo) check(h *half) error {
	var got seqnum.Delta
	for i := range h.m.edits {
		if h.m.edits[i].start == u.at {
			got = h.m.edits[i].delta()
		}
	}
	if got != u.step {
		return fmt.Errorf("%w: at %d, %+d bytes, the previous process %+d", ErrReplayMismatch, u.at, got, u.step)
	}
	return nil
}
