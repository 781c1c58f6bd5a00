// Package conntrack tracks FTP control connections packet by packet: it
// reassembles each direction into lines, has package alg find the data
// addresses announced in them, rewrites those that the peer cannot reach,
// and keeps the TCP sequence, acknowledgement and SACK numbers of both
// directions consistent with the rewritten byte streams for the life of the
// connection.
//
// The Engine is pure: raw IP packets in, a verdict and events out. It makes
// no system calls; what it needs from the kernel (the public address of a
// NAT'd sender, a free port) it asks through the NAT interface, which the
// daemon implements with ctnetlink and tests implement with a fake. It is
// not safe for concurrent use: the daemon feeds it from one goroutine.
package conntrack

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"

	"github.com/ftpalg/ftpalg/alg"
)

// Reasons an announcement is refused. Refusals never change the bytes: the
// line passes as the sender wrote it and no pinhole is opened.
var (
	ErrBounce       = errors.New("announced address is neither the sender's nor its public address")
	ErrLowPort      = errors.New("announced data port is below the minimum")
	ErrSplit        = errors.New("address line split across a segment that was already released")
	ErrStalled      = errors.New("sender stalled on a held partial line; released unchanged")
	ErrTooManyEdits = errors.New("too many unacknowledged rewrites on this connection")
	ErrInvalidAck   = errors.New("acknowledges data that was never sent")
	ErrGap          = errors.New("segment starts beyond a hole in the stream")
	ErrTableFull    = errors.New("connection table full; evicted the least recently used")
	ErrMapping      = errors.New("no public mapping for the sender")
	ErrNotLoggedIn  = errors.New("announcement before the server accepted a login")
	ErrTLS          = errors.New("control channel switched to TLS after AUTH; its data connections cannot be seen")
	ErrTLSRefused   = errors.New("AUTH refused by policy (--tls=refuse); the client is told with a 534 reply")
	ErrLimit        = errors.New("pinhole limit reached")
	// Refusals of a connection resumed from conntrack labels (see Labels).
	ErrReplaySplit    = errors.New("retransmitted rewritten line is not complete in its segment; dropped")
	ErrReplayMismatch = errors.New("retransmitted rewritten line rewrites to another length than the previous process's; dropped")
	ErrReplayLate     = errors.New("retransmitted rewritten line comes after later rewrites were released; dropped")
	ErrMulti          = errors.New("segment needs sequence positions the conntrack labels cannot map (MULTI); dropped")
	ErrLabelOverflow  = errors.New("sequence offsets too large for the conntrack labels (OVERFLOW): a successor cannot take this connection over")
	ErrNotTakenOver   = errors.New("the previous process could not record this connection's offsets (OVERFLOW); its packets are dropped")
	ErrKernelMap      = errors.New("segment needs a sequence number the kernel's one correction point cannot produce; dropped")
)

// DefaultMinDataPort is the lowest data port announcements may name
// (Config.MinDataPort): no PORT to a privileged service (22, 25) of the
// client's host, no 227 to one of the server's.
const DefaultMinDataPort = 1024

// LabelSource reads the conntrack labels a previous process wrote on a
// connection's entry. The daemon implements it with one ctnetlink GET.
type LabelSource interface {
	// Entry returns the labels and ID of c's entry; zero labels when it
	// has none. ErrNoEntry means conntrack has no entry for c yet (see
	// there); any other error means they could not be read: c is picked
	// up plain.
	Entry(c Conn) (CTEntry, error)
}

// CTEntry is what the engine reads of a connection's conntrack entry.
type CTEntry struct {
	Labels Labels
	// ID is conntrack's ID of the entry (CTA_ID), 0 when unknown. With
	// Config.SkipHandshake it tells the entry from a later one on the
	// same port pair, whose SYN the engine does not see either.
	ID uint32
	// Preexisting: the entry existed when this process began to track
	// connections (the daemon's dump at start). Its dialog went on in a
	// predecessor, which may have seen a PASS whose 230 this process
	// sees: such a connection is picked up with its login state unknown,
	// as without SkipHandshake, however its labels read (measured: the
	// labels-restart simulation refused every later announcement of a
	// session restarted between PASS and 230).
	Preexisting bool
}

// ErrNoEntry is what a LabelSource returns for a connection conntrack has
// no confirmed entry for: the packet in hand started one by conntrack's
// loose pickup of a mid-stream segment, and that entry exists only once the
// packet has passed the last hook. On a standby router this is a segment
// that came before conntrackd committed the replicated entry (with its
// labels): picked up plain, the connection would never be taken over, and
// its offsets would be lost. Such a connection is picked up plain, and
// its labels are looked up again at each later segment until conntrack has
// an entry for it: with labels, it is taken over from them (see
// Engine.recheck); without, it stays plain. A firewall that drops
// mid-stream NEW segments (the HA kit's) makes the sender retransmit the
// early segments after the commit.
var ErrNoEntry = errors.New("no conntrack entry yet")

// TLSPolicy says what to do when a client asks to protect the control
// channel (AUTH TLS, AUTH SSL or any other AUTH mechanism).
type TLSPolicy uint8

const (
	// TLSPass lets AUTH through. After the server's 234 the channel is
	// opaque: nothing more is rewritten and no pinhole is opened, so data
	// connections work only where the firewall already allows them.
	TLSPass TLSPolicy = iota
	// TLSRefuse rewrites the AUTH command so the server cannot accept it,
	// and its reply into a 534 that tells the client why, so that clients
	// fall back to plain FTP or fail at once with a clear message instead
	// of hanging at their first transfer.
	TLSRefuse
)

// Lines ftpalg puts on the wire for TLSRefuse. The mechanism name is one no
// server implements, so the server answers 504 (or 500/502) and stays in
// plain text; the answer's text is replaced by refusedReply.
const (
	refusedAuth  = "AUTH X-FTPALG-REFUSED"
	refusedReply = "534 TLS on the control connection is refused by the firewall's FTP gateway (ftpalg --tls=refuse)"
)

// NAT is what the engine needs to know about address translation. The
// daemon answers from the kernel's conntrack table; tests use a fake.
type NAT interface {
	// PublicAddr returns the address the peer sees for the sender of
	// packets on c: the client when fromClient, else the server. It equals
	// the sender's own address when no NAT is involved.
	PublicAddr(c Conn, fromClient bool) (netip.Addr, error)
	// ReservePort reserves a port on the public address for a new data
	// connection, preferring want. The daemon releases it with the pinhole.
	ReservePort(public netip.Addr, want uint16) (uint16, error)
}

// Config tunes the engine. Zero values select the defaults.
type Config struct {
	ControlPorts []uint16      // server ports of control connections; default 21
	MaxLine      int           // longest line parsed; default 4096
	MaxFlows     int           // tracked connections; default 65536
	MaxEdits     int           // unacknowledged rewrites per direction; default 64
	IdleTimeout  time.Duration // default 24h
	CloseTimeout time.Duration // after both FINs or an RST; default 30s
	// TimeWaitTimeout replaces CloseTimeout for a connection whose
	// streams are shifted by rewrites: conntrack accepts its packets for
	// that long after the close (nf_conntrack_tcp_timeout_time_wait, 120s
	// by default), and a retransmitted FIN or its ACK in that time still
	// needs the mapping. Unshifted ones pass the same untracked, so they
	// go sooner. Default 120s.
	TimeWaitTimeout time.Duration
	MinDataPort     uint16        // lowest acceptable data port; default DefaultMinDataPort
	StallTimeout    time.Duration // hold a partial address line at most this long against a retransmitting sender; default 150ms
	VerifyChecksum  bool          // drop segments with a bad TCP checksum
	TLS             TLSPolicy     // what to do with AUTH; default TLSPass
	// AllowBeforeLogin lets announcements open pinholes before the server
	// accepted a login. Off by default: see alg.Dialog.LoggedIn.
	AllowBeforeLogin bool
	// SaveDialogs makes Changed report every connection whose FTP dialog
	// moved on, not only those whose sequence mapping changed, so that a
	// restarted process also knows which commands await their replies.
	SaveDialogs bool
	// Shard and Shards give engines that run side by side (one per
	// NFQUEUE, see daemon) disjoint session IDs: this engine's n-th
	// connection gets n*Shards + Shard. The zero values mean one engine:
	// IDs 1, 2, 3, ...
	Shard, Shards uint64
	// Admit, if set, is asked before a pinhole is planned for session; an
	// error refuses the announcement (its line passes unchanged). The
	// daemon enforces its per-client and total pinhole limits here.
	Admit func(session uint64, c Conn) error
	// WriteLabels makes the engine report (EventLabels) every change of a
	// connection's label state, which the daemon writes to its conntrack
	// entry before the packet is released.
	WriteLabels bool
	// LabelSource, if set, is asked for the labels of every connection
	// first seen without its SYN, before it is picked up plain.
	LabelSource LabelSource
	// SkipHandshake says that the queue rules let the SYN, the SYN/ACK
	// and the client's FIN without payload of control connections pass
	// without queueing (rules.Config.SkipHandshake), so that a
	// connection's first segment here is its first payload segment, and
	// that the SYN rule sets SEEN on the entry as it passes. It needs
	// LabelSource.
	// Then:
	//   - a connection first seen without its SYN whose labels hold
	//     SEEN and no state began while the rules were loaded: every
	//     payload byte of it passed through an ftpalg, which would have
	//     written LOGGED_IN before releasing a login's 230. It is fresh
	//     (its login is enforced, see Config.AllowBeforeLogin), not
	//     picked up in the middle;
	//   - a server's ACK one past the last byte the client released
	//     acknowledges the client's FIN, which passed unseen;
	//   - the end of a connection is learnt from conntrack (Destroyed),
	//     and a segment of a later connection on the same port pair from
	//     the entry's ID (see Engine.reused).
	SkipHandshake bool
}

// sessionID is the session ID of this engine's n-th connection.
func (e *Engine) sessionID(n uint64) uint64 { return n*e.cfg.Shards + e.cfg.Shard }

func (c *Config) fill() {
	if len(c.ControlPorts) == 0 {
		c.ControlPorts = []uint16{21}
	}
	if c.MaxLine <= 0 {
		c.MaxLine = 4096
	}
	if c.MaxFlows <= 0 {
		c.MaxFlows = 65536
	}
	if c.MaxEdits <= 0 {
		c.MaxEdits = 64
	}
	if c.Shards == 0 {
		c.Shards = 1
	}
	c.Shard %= c.Shards
	if c.IdleTimeout <= 0 {
		c.IdleTimeout = 24 * time.Hour
	}
	if c.CloseTimeout <= 0 {
		c.CloseTimeout = 30 * time.Second
	}
	if c.TimeWaitTimeout <= 0 {
		c.TimeWaitTimeout = 120 * time.Second
	}
	if c.StallTimeout <= 0 {
		c.StallTimeout = 150 * time.Millisecond
	}
	if c.MinDataPort == 0 {
		c.MinDataPort = DefaultMinDataPort
	}
}

// Verdict is what to do with a packet.
type Verdict uint8

const (
	Accept         Verdict = iota // pass the packet unchanged
	AcceptModified                // pass Result.Packet instead
	Drop                          // drop it; TCP will retransmit
)

func (v Verdict) String() string {
	switch v {
	case Accept:
		return "accept"
	case AcceptModified:
		return "accept-modified"
	case Drop:
		return "drop"
	}
	return fmt.Sprintf("verdict(%d)", v)
}

// EventKind says what an Event reports.
type EventKind uint8

const (
	EventRewrite EventKind = iota + 1 // an announced address was rewritten
	EventPinhole                      // a data connection must be let through before the packet is released
	EventRefusal                      // an announcement was found and not acted on, or a packet refused
	EventFlowEnd                      // a connection is no longer tracked: close its pinholes
	// EventLiberal: the first length-changing edit of a connection was
	// made. The kernel's window tracking must be made liberal on it before
	// the packet is released (see DESIGN.md).
	EventLiberal
	// EventLabels: the connection's label state changed; Labels must be
	// written to its conntrack entry before the packet is released (with
	// BE_LIBERAL in the same update when Liberal).
	EventLabels
)

func (k EventKind) String() string {
	switch k {
	case EventRewrite:
		return "rewrite"
	case EventPinhole:
		return "pinhole"
	case EventRefusal:
		return "refusal"
	case EventFlowEnd:
		return "flow-end"
	case EventLiberal:
		return "liberal"
	case EventLabels:
		return "labels"
	}
	return fmt.Sprintf("event(%d)", k)
}

// Pinhole describes one expected data connection.
type Pinhole struct {
	Peer   netip.Addr     // the only source allowed to connect
	Public netip.AddrPort // where it connects, as announced to it
	Target netip.AddrPort // the real endpoint (equal to Public without NAT)
}

func (p Pinhole) String() string {
	if p.Public == p.Target {
		return fmt.Sprintf("%s -> %s", p.Peer, p.Target)
	}
	return fmt.Sprintf("%s -> %s (to %s)", p.Peer, p.Public, p.Target)
}

// Event is something the daemon acts on or logs.
type Event struct {
	Kind    EventKind
	Session uint64
	Conn    Conn
	Msg     alg.Kind       // the message concerned, if any
	From    netip.AddrPort // rewrite: announced; refusal: as found
	To      netip.AddrPort // rewrite: what the peer is told
	Pinhole Pinhole        // pinhole
	Reason  error          // refusal
	Path    Path           // the connection's path through this machine
	Labels  Labels         // labels: the new labels
	Liberal bool           // labels: the connection needs BE_LIBERAL
	// Kernel (labels): the kernel maps the connection; SeqAdj must be
	// written with the labels. SeqAdj (labels) is the mapping of the
	// client's and the server's stream as the kernel's seqadj would
	// hold it, whether or not it does.
	Kernel bool
	SeqAdj [2]SeqAdj
}

// LogAttrs renders the event as slog attributes.
func (ev *Event) LogAttrs() []slog.Attr {
	a := []slog.Attr{slog.Uint64("session", ev.Session), slog.String("conn", ev.Conn.String()), slog.String("path", ev.Path.String())}
	if ev.Msg != alg.KindNone {
		a = append(a, slog.String("cmd", ev.Msg.String()))
	}
	switch ev.Kind {
	case EventRewrite:
		a = append(a, slog.String("from", ev.From.String()), slog.String("to", ev.To.String()))
	case EventPinhole:
		a = append(a, slog.String("pinhole", ev.Pinhole.String()))
	case EventRefusal:
		if ev.From.IsValid() {
			a = append(a, slog.String("announced", ev.From.String()))
		}
		a = append(a, slog.String("reason", ev.Reason.Error()))
	}
	return a
}

// Result is the engine's answer for one packet. Packet and Events alias
// engine buffers and are valid until the next call.
type Result struct {
	Verdict Verdict
	Packet  []byte
	Events  []Event
}

// Stats counts what the engine did.
type Stats struct {
	Packets, Modified, Dropped, Untracked uint64
	Rewrites, Refusals, Flows, Evicted    uint64
	Stalled, TLS                          uint64
	// Resumed counts connections taken over from conntrack labels,
	// LabelErrors labels that could not be read.
	Resumed, LabelErrors uint64
}

// Add returns the sum of two engines' counters (the shards of a daemon).
func (s Stats) Add(o Stats) Stats {
	return Stats{
		Packets: s.Packets + o.Packets, Modified: s.Modified + o.Modified, Dropped: s.Dropped + o.Dropped,
		Untracked: s.Untracked + o.Untracked, Rewrites: s.Rewrites + o.Rewrites, Refusals: s.Refusals + o.Refusals,
		Flows: s.Flows + o.Flows, Evicted: s.Evicted + o.Evicted, Stalled: s.Stalled + o.Stalled, TLS: s.TLS + o.TLS,
		Resumed: s.Resumed + o.Resumed, LabelErrors: s.LabelErrors + o.LabelErrors,
	}
}

// Engine processes the packets of FTP control connections.
type Engine struct {
	cfg   Config
	nat   NAT
	tab   table
	dec   *decoder
	seg   segment
	ids   uint64
	stats Stats

	events  []Event
	payload []byte // rebuilt payload
	scratch []byte // reassembly of held bytes
	lineBuf []byte // rewritten line
	out     gopacket.SerializeBuffer
	num     []byte // number-only edits
	opts    [40]layers.TCPOption
	sack    [maxSACKs * 8]byte

	changed []*flow // flows whose mapping changed, for Changed

	// epoch is what the flows' stamps count from: just before the first
	// time the engine was given.
	epoch time.Time

	cur  *flow // the flow being processed, for the line handler
	side alg.Side
}

// stamp returns now as a flow keeps it.
func (e *Engine) stamp(now time.Time) stamp {
	if e.epoch.IsZero() {
		e.epoch = now.Add(-time.Nanosecond)
	}
	return stamp(now.Sub(e.epoch))
}

// at returns the time of stamp s.
func (e *Engine) at(s stamp) time.Time { return e.epoch.Add(time.Duration(s)) }

// New returns an engine. nat must not be nil.
func New(cfg Config, nat NAT) *Engine {
	cfg.fill()
	return &Engine{
		cfg: cfg,
		nat: nat,
		tab: table{m: make(map[ConnKey]*flow)},
		dec: newDecoder(),
		out: gopacket.NewSerializeBuffer(),
	}
}

// Stats returns the counters.
func (e *Engine) Stats() Stats { return e.stats }

// Len returns the number of tracked connections.
func (e *Engine) Len() int { return len(e.tab.m) }

func (e *Engine) isControl(port uint16) bool { return slices.Contains(e.cfg.ControlPorts, port) }

// IsControl reports whether port is a control connections' server port.
func (e *Engine) IsControl(port uint16) bool { return e.isControl(port) }

func (e *Engine) emit(ev Event) {
	if ev.Kind == EventRefusal {
		e.stats.Refusals++
	}
	e.events = append(e.events, ev)
}

func (e *Engine) refuse(f *flow, msg alg.Kind, from netip.AddrPort, reason error) {
	e.emit(Event{Kind: EventRefusal, Session: f.id, Conn: f.conn, Msg: msg, From: from, Reason: reason, Path: f.path})
}

// Process handles one IP packet of a forwarded control connection, as
// queued from mangle FORWARD. now drives timeouts.
func (e *Engine) Process(pkt []byte, now time.Time) Result {
	return e.ProcessAt(pkt, HookForward, now)
}

// ProcessAt handles one IP packet of a control connection queued at hook:
// forwarded, or ending or starting on this machine. The same parser,
// policy and sequence mapping apply on every path; the hook only names the
// connection's Path in its events and FlowInfo.
func (e *Engine) ProcessAt(pkt []byte, hook Hook, now time.Time) Result {
	e.events = e.events[:0]
	e.stats.Packets++
	seg := &e.seg
	if err := e.dec.decode(pkt, seg, e.cfg.VerifyChecksum); err != nil {
		if errors.Is(err, ErrBadChecksum) {
			e.stats.Dropped++
			return Result{Verdict: Drop}
		}
		e.stats.Untracked++
		return Result{Verdict: Accept}
	}
	var conn Conn
	switch {
	case e.isControl(seg.dst.Port()):
		e.side, conn = alg.Client, Conn{Client: seg.src, Server: seg.dst}
	case e.isControl(seg.src.Port()):
		e.side, conn = alg.Server, Conn{Client: seg.dst, Server: seg.src}
	default:
		e.stats.Untracked++
		return Result{Verdict: Accept}
	}
	f := e.lookup(conn, seg, now)
	if f == nil {
		e.stats.Untracked++
		return Result{Verdict: Accept, Events: e.events}
	}
	e.cur = f
	f.path = pathOf(hook, e.side)
	if f.dead {
		e.stats.Dropped++
		return Result{Verdict: Drop, Events: e.events}
	}
	res := e.track(f, pkt, seg, now)
	if e.cfg.WriteLabels {
		e.reportLabels(f)
	}
	if seg.has(flagRST) || (f.c.fin && f.s.fin) {
		if f.closeAt == 0 {
			wait := e.cfg.CloseTimeout
			if f.shifted() {
				wait = max(wait, e.cfg.TimeWaitTimeout)
			}
			f.closeAt = e.stamp(now.Add(wait))
		}
	}
	res.Events = e.events
	switch res.Verdict {
	case AcceptModified:
		e.stats.Modified++
	case Drop:
		e.stats.Dropped++
	}
	return res
}

// lookup finds or creates the flow of a segment.
func (e *Engine) lookup(conn Conn, seg *segment, now time.Time) *flow {
	f := e.tab.get(conn)
	newSYN := e.side == alg.Client && seg.has(flagSYN) && !seg.has(flagACK)
	if f != nil && newSYN && f.c.init && !f.c.isSYN(seg.seq) {
		e.end(f) // the port pair is reused by a new connection
		f = nil
	}
	ent := entryOnce{src: e.cfg.LabelSource, conn: conn}
	if f != nil && e.cfg.SkipHandshake && !newSYN {
		switch {
		case e.reopened(f, seg):
			e.end(f) // a later connection on the same port pair
			f = nil
		case ent.src != nil && e.implausible(f, seg):
			if got, err := ent.get(); err == nil && f.ctID != 0 && got.ID != 0 && got.ID != f.ctID {
				e.end(f) // a later connection on the same port pair
				f = nil
			}
		}
	}
	if f == nil {
		if seg.has(flagRST) {
			// Nothing to track, but an RST of a connection a previous
			// process rewrote must reach its receiver at the shifted
			// position, or it is ignored there (RFC 5961) and the
			// connection hangs (TestSkippedHandshakeSessions, labels
			// restarts, seed 6385: a restart between the 221 and the
			// server's RST).
			if newSYN || ent.src == nil {
				return nil
			}
			if got, err := ent.get(); err != nil || got.Labels.Empty() {
				return nil
			}
		}
		if len(e.tab.m) >= e.cfg.MaxFlows && e.tab.oldest != nil {
			old := e.tab.oldest
			e.stats.Evicted++
			e.refuse(old, alg.KindNone, netip.AddrPort{}, ErrTableFull)
			e.end(old)
		}
		e.ids++
		var p pickup
		if !newSYN && ent.src != nil {
			got, err := ent.get()
			p = e.pickUp(conn, got, err)
		}
		e.stats.Flows++
		f = p.f
		if f == nil {
			f = &flow{conn: conn, id: e.sessionID(e.ids), dialog: alg.NewDialog(alg.Config{MaxLine: e.cfg.MaxLine}),
				pickedUp: !newSYN && !p.fresh, ctID: p.id}
			if p.noEntry {
				f.rechecks = maxRechecks
			}
		}
		e.tab.put(f)
	} else if f.rechecks > 0 && !newSYN {
		f = e.recheck(f)
	}
	if f.started == 0 {
		f.started = e.stamp(now)
	}
	f.last = e.stamp(now)
	e.tab.touch(f)
	return f
}

// entryOnce looks a connection's conntrack entry up at most once while
// the engine decides a segment's flow.
type entryOnce struct {
	src  LabelSource // nil: no lookups
	conn Conn
	ent  CTEntry
	err  error
	done bool
}

func (o *entryOnce) get() (CTEntry, error) {
	if !o.done {
		o.ent, o.err = o.src.Entry(o.conn)
		o.done = true
	}
	return o.ent, o.err
}

// maxRechecks bounds the segments at which a connection picked up while
// conntrack had no entry for it looks for its labels again (one or two
// ctnetlink GETs each). A standby's entry appears within a few: the
// segments before the commit are dropped as mid-stream NEW and resent. A
// connection conntrack never tracks (an administrator's NOTRACK) stays
// plain after that, without a GET per packet.
const maxRechecks = 16

// recheck looks again for the labels of f, picked up plain while conntrack
// had no entry for it (ErrNoEntry). Once the entry exists with labels, the
// connection is taken over from them in place of f, under f's session id:
// what f made of the segments before (on a standby router, segments that
// came before conntrackd committed the entry, which the HA kit's firewall
// drops as mid-stream NEW) never reached the peer.
func (e *Engine) recheck(f *flow) *flow {
	p := e.fromLabels(f.conn)
	if p.noEntry {
		f.rechecks--
		return f
	}
	f.rechecks = 0
	g := p.f
	if g == nil {
		f.ctID = p.id
		return f // the entry exists and carries no state of ftpalg's: f stands
	}
	e.tab.remove(f)
	if f.changed {
		for i, c := range e.changed {
			if c == f {
				e.changed = append(e.changed[:i], e.changed[i+1:]...)
				break
			}
		}
	}
	g.id = f.id
	e.tab.put(g)
	return g
}

// reuseWindow is how far from its sender's release point a segment may lie
// before the engine asks whether it belongs to a later connection on the
// same port pair (see implausible): far more than a control connection
// ever has in flight, and a 1 in 32768 chance for a new connection's
// random first sequence number to land inside. Asking costs one lookup and
// changes nothing when the entry is the same.
const reuseWindow = 1 << 16

// implausible reports whether a segment of f cannot be part of f's sender's
// stream as the engine knows it: with the handshake unseen
// (SkipHandshake), the first payload segment of a later connection on the
// same port pair arrives at f when conntrack's DESTROY of f's entry has not
// been handled yet, or was lost (an event overrun), and would be taken for
// bytes beyond a hole, dropped again and again, or for old bytes.
func (e *Engine) implausible(f *flow, seg *segment) bool {
	if len(seg.payload) == 0 || f.ctID == 0 {
		return false
	}
	snd, _ := f.halves(e.side)
	if !snd.init {
		return false
	}
	d := seg.seq.Sub(snd.next)
	return d > reuseWindow || d < -reuseWindow
}

// reopened reports whether a payload segment of f comes from a later
// connection on the same port pair: its sender's FIN was released (a
// server's FIN is always queued), and the segment is not a retransmission
// of bytes before it. FTP servers close first, so their clients may open
// the next connection from the same port at once, while conntrack still
// holds the old entry in TIME_WAIT; conntrack replaces the entry, often
// with the same ID (ctnetlink's TestIDReusedPortPair), and its DESTROY
// event may be handled after the new connection's greeting arrives
// (measured: 2 refusals, ErrInvalidAck, in one make bench run).
func (e *Engine) reopened(f *flow, seg *segment) bool {
	snd, _ := f.halves(e.side)
	if len(seg.payload) == 0 || !snd.fin {
		return false
	}
	d := seg.seq.Sub(snd.sent)
	return d >= 0 || d < -reuseWindow
}

// Destroyed stops tracking c when conntrack destroyed its entry, whose ID
// is id (0: unknown), and returns its EventFlowEnd, if any (valid until the
// next call). closed says the entry ended closed (TIME_WAIT or CLOSE). With
// SkipHandshake the engine does not see the client's FIN of a connection
// that was never rewritten, and learns of the end only so.
//
// The DESTROY of an earlier connection on the same port pair can come
// after the next one was picked up: conntrack kills the old entry in
// TIME_WAIT when the client reopens from its port, often giving the new one
// the same ID (see reopened), and the event is handled late under load.
// Taken for the new connection's end, it ended a session between its PASS
// and its 230, whose successor flow never learnt of the login (make bench
// run 14: a PORT refused as before a login, once in each placement). So an
// entry with another ID, or one that ended closed while f saw neither FIN
// nor RST (a closed entry's server FIN and RST are always queued), is not
// f's: f stays, and ends by its own DESTROY, its idle timeout, or a
// reconcile that no longer finds its entry.
func (e *Engine) Destroyed(c Conn, id uint32, closed bool) []Event {
	e.events = e.events[:0]
	f := e.tab.get(c)
	switch {
	case f == nil:
		return nil
	case id != 0 && f.ctID != 0 && id != f.ctID:
		return nil
	case closed && !f.s.fin && !f.c.fin && f.closeAt == 0:
		return nil
	}
	e.end(f)
	return e.events
}

// end stops tracking f and tells the daemon.
func (e *Engine) end(f *flow) {
	e.tab.remove(f)
	e.events = append(e.events, Event{Kind: EventFlowEnd, Session: f.id, Conn: f.conn, Path: f.path})
}

// Expire stops tracking connections idle for longer than the idle timeout
// or closed for longer than the close timeout, and returns their
// EventFlowEnd events (valid until the next call).
func (e *Engine) Expire(now time.Time) []Event {
	e.events = e.events[:0]
	t := e.stamp(now)
	for f := e.tab.oldest; f != nil; {
		next := f.newer
		idle := t.sub(f.last) > e.cfg.IdleTimeout
		closed := f.closeAt != 0 && t > f.closeAt
		if idle || closed {
			e.end(f)
		}
		f = next
	}
	return e.events
}
