// Package daemon is ftpalg's running gateway: it feeds control-channel
// packets from an NFQUEUE through the conntrack engine and acts on what the
// engine reports — pinholes opened before the announcing packet is
// released, conntrack's window tracking made liberal for a connection whose
// payload length changed, one log line per rewrite, pinhole and refusal.
//
// The packet path (Gateway) is plain Go behind small interfaces so it can be
// tested with fakes; the kernel-facing wiring is in run_linux.go.
package daemon

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/ftpalg/ftpalg/conntrack"
	"github.com/ftpalg/ftpalg/ctnetlink"
	"github.com/ftpalg/ftpalg/metrics"
	"github.com/ftpalg/ftpalg/rules"
	"github.com/ftpalg/ftpalg/status"
)

// Liberaler relaxes conntrack's TCP window tracking on one connection. The
// ctnetlink client implements it.
type Liberaler interface {
	SetLiberal(seen ctnetlink.Tuple) error
}

// Marker sets conntrack mark bits on one entry. The ctnetlink client
// implements it.
type Marker interface {
	SetMarkBits(orig ctnetlink.Tuple, bits uint32) error
}

// Gateway runs packets through the engine and carries out its events.
type Gateway struct {
	mu       sync.Mutex
	engine   *conntrack.Engine
	pins     *Pinholes
	liberal  Liberaler
	marker   Marker // nil: data connections are not marked
	dataMark uint32
	metrics  *metrics.Metrics // nil-safe
	log      *slog.Logger
	errors   uint64
	started  time.Time
	version  string
	state    stateSaver  // nil: no persistence
	labels   *labelStore // nil: connection state is not kept in conntrack labels
	queue    queueStats  // the kernel's counters for our queue, polled
}

// keepLabels makes the gateway write each connection's state to its
// conntrack labels through s, which must also be the engine's LabelSource
// (with Config.WriteLabels).
func (g *Gateway) keepLabels(s *labelStore) {
	g.labels = s
	s.metrics = g.metrics
}

// queueStats are the kernel's counters for one NFQUEUE
// (/proc/net/netfilter/nfnetlink_queue): packets dropped because the
// queue was full (or accepted unexamined, with --fail-open) and because
// delivering them to ftpalg's socket failed.
type queueStats struct {
	queued, dropped, userDropped uint64
}

func (g *Gateway) setQueueStats(q queueStats) {
	g.mu.Lock()
	g.queue = q
	g.mu.Unlock()
}

// stateSaver persists connection state for a successor process.
type stateSaver interface {
	save(conntrack.FlowState)
	remove(session uint64)
	flush()
}

// NewGateway assembles a gateway.
func NewGateway(engine *conntrack.Engine, pins *Pinholes, liberal Liberaler, log *slog.Logger) *Gateway {
	return &Gateway{engine: engine, pins: pins, liberal: liberal, log: log, started: time.Now()}
}

// Observe makes the gateway and its pinholes record Prometheus metrics.
func (g *Gateway) Observe(m *metrics.Metrics, version string) {
	g.metrics, g.pins.metrics, g.version = m, m, version
	if g.labels != nil {
		g.labels.metrics = m
	}
}

// Resume takes over the connections a previous process (or, through
// conntrackd, the other router) left labels on: every entry of dump whose
// labels say REWRITTEN on a control port. Others wait for their first
// packet (one GET then). It returns how many were taken over; connections
// the engine tracks already (restored from --state-dir) are not counted.
func (g *Gateway) Resume(dump []ctnetlink.Entry, now time.Time) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	n := 0
	for _, e := range dump {
		if !e.HasLabels || e.TCPState.Closed() {
			continue // ended connections are not taken over
		}
		l, err := conntrack.LabelsFromBytes(e.Labels[:])
		if err != nil || !l.Bit(conntrack.LabelRewritten) {
			continue
		}
		// The connection as the engine sees it at the hook: the
		// client's own address (pre-SNAT) to the real server.
		c := conntrack.Conn{Client: e.Orig.Src, Server: e.Reply.Src}
		if !g.engine.IsControl(c.Server.Port()) {
			continue
		}
		if g.labels != nil {
			l = g.labels.checkKernel(c, e, l)
		}
		tracked := g.engine.Len()
		evs, err := g.engine.Resume(c, l, now)
		if err != nil {
			g.log.Warn("not taking over connection from its conntrack labels", "conn", c.String(), "labels", l.String(), "err", err)
			continue
		}
		if g.labels != nil {
			g.labels.remember(c, e)
		}
		if g.engine.Len() == tracked {
			continue // restored from --state-dir already, which knows more
		}
		for i := range evs {
			g.act(&evs[i])
		}
		n++
	}
	return n
}

// Handle processes one queued packet and returns the verdict and, for
// AcceptModified, the bytes to send instead (valid until the next call).
// Every pinhole the packet announces is open, and the connection is
// liberal if its length changed, before Handle returns.
func (g *Gateway) Handle(pkt []byte, now time.Time) (conntrack.Verdict, []byte) {
	return g.handleAt(pkt, conntrack.HookForward, now)
}

func (g *Gateway) handleAt(pkt []byte, hook conntrack.Hook, now time.Time) (conntrack.Verdict, []byte) {
	g.mu.Lock()
	defer g.mu.Unlock()
	res := g.engine.ProcessAt(pkt, hook, now)
	labelled := false
	for i := range res.Events {
		labelled = labelled || res.Events[i].Kind == conntrack.EventLabels && g.labels != nil
	}
	if labelled && g.labels.kernel != nil {
		g.handOver(pkt, &res)
	}
	// Pinholes first, then the state file, then the labels: a successor
	// that takes a connection over from its saved state replays what the
	// state says was released without acting on it again, so its
	// pinholes must exist by then; and the state file, which also knows
	// where the client's stream is, must never be older than the labels.
	// A SIGKILL between a label write and the file write left a
	// connection known to its successor only by labels that already said
	// a 227 was rewritten, whose PASV the client then sent again
	// (TestRestartBusy ServerForward/PASV/SIGKILL in CI; the engine now
	// tells that PASV by its ACK too, see TestResumedPassiveRetransmitted).
	for i := range res.Events {
		switch k := res.Events[i].Kind; {
		case labelled && k == conntrack.EventLiberal:
			continue // the label write carries BE_LIBERAL
		case k == conntrack.EventLabels:
			continue // below
		}
		g.act(&res.Events[i])
	}
	if g.state != nil {
		for _, st := range g.engine.Changed() {
			g.state.save(st) // mapping changes are durable before the verdict
		}
	}
	for i := range res.Events {
		if res.Events[i].Kind == conntrack.EventLabels {
			g.act(&res.Events[i])
		}
	}
	g.metrics.Packet(res.Verdict.String())
	return res.Verdict, res.Packet
}

// handOver hands the mapping of each connection that made its first
// length-changing edit (EventLiberal) to the kernel's seqadj, if its entry
// has one: first of all, so that the state file saved next already says
// so, and the connection's EventLabels is replaced by the engine's new one
// (KERNEL, no BE_LIBERAL). res, pkt's result, is renumbered for the seqadj
// the kernel will apply to it (Engine.KernelMaps).
func (g *Gateway) handOver(pkt []byte, res *conntrack.Result) {
	evs := res.Events
	for i := range evs {
		if evs[i].Kind != conntrack.EventLiberal {
			continue
		}
		for j := range evs {
			if evs[j].Kind != conntrack.EventLabels || evs[j].Conn != evs[i].Conn || evs[j].Kernel {
				continue
			}
			if g.labels.handOver(&evs[j]) {
				if ev, ok := g.engine.KernelMaps(evs[j].Conn, pkt, res); ok {
					res.Events[j] = ev // res.Events may have grown: a refusal
					g.metrics.KernelSeqAdj()
				}
			}
			break
		}
	}
}

func (g *Gateway) act(ev *conntrack.Event) {
	switch ev.Kind {
	case conntrack.EventPinhole:
		p := rules.Pinhole{Peer: ev.Pinhole.Peer, Public: ev.Pinhole.Public, Target: ev.Pinhole.Target}
		if err := g.pins.Open(ev.Session, ev.Conn, ev.Path, p, p.Public != p.Target); err != nil {
			g.errors++
			g.log.Error("opening pinhole", "session", ev.Session, "path", ev.Path.String(), "pinhole", p.String(), "err", err)
		}
	case conntrack.EventLiberal:
		seen := ctnetlink.Tuple{Src: ev.Conn.Client, Dst: ev.Conn.Server}
		if err := g.liberal.SetLiberal(seen); err != nil {
			g.errors++
			g.log.Error("relaxing window tracking; the connection's ACKs may be dropped as INVALID",
				"session", ev.Session, "conn", ev.Conn.String(), "path", ev.Path.String(), "err", err)
		}
	case conntrack.EventLabels:
		if g.labels != nil {
			g.labels.write(ev)
		}
	case conntrack.EventRewrite:
		g.metrics.Rewrite(ev.Msg.String())
		g.log.LogAttrs(context.Background(), slog.LevelInfo, "rewrite", ev.LogAttrs()...)
	case conntrack.EventRefusal:
		g.metrics.Refusal(metrics.ReasonOf(ev.Reason))
		g.log.LogAttrs(context.Background(), slog.LevelWarn, "refused", ev.LogAttrs()...)
	case conntrack.EventFlowEnd:
		g.pins.EndSession(ev.Session)
		if g.state != nil {
			g.state.remove(ev.Session)
		}
		if g.labels != nil {
			g.labels.forget(ev.Session, ev.Conn)
		}
		g.log.Debug("control connection no longer tracked", "session", ev.Session, "conn", ev.Conn.String())
	}
}

// Expire ends idle and closed connections; call it about once a second.
func (g *Gateway) Expire(now time.Time) {
	g.metrics.SetTracked(g.expire(now))
	g.metrics.SetOpenPinholes(g.pins.Len())
}

// expire ends idle and closed connections and returns how many remain.
func (g *Gateway) expire(now time.Time) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, ev := range g.engine.Expire(now) {
		g.act(&ev)
	}
	return g.engine.Len()
}

// FlushState writes the connection states whose writing was deferred.
func (g *Gateway) FlushState() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.state != nil {
		g.state.flush()
	}
}

// Snapshot is the live view `ftpalg status` shows.
func (g *Gateway) Snapshot() status.Snapshot { return snapshot([]*Gateway{g}) }

// engineView is one gateway's part of a snapshot.
type engineView struct {
	conns         []status.Conn
	stats         conntrack.Stats
	errors        uint64
	queue         queueStats
	labelWrites   uint64
	labelFailures uint64
}

// view returns the gateway's part of a snapshot: its connections, its
// engine's counters, its errors, its queue's and its label writes' counters.
func (g *Gateway) view(now time.Time) engineView {
	var v engineView
	g.mu.Lock()
	defer g.mu.Unlock()
	g.engine.Flows(func(f conntrack.FlowInfo) {
		v.conns = append(v.conns, status.Conn{Session: f.Session, Client: f.Conn.Client, Server: f.Conn.Server, Path: f.Path.String(),
			Age: now.Sub(f.Started), Rewrites: f.Rewrites, OffsetC2S: f.ShiftC2S, OffsetS2C: f.ShiftS2C,
			State: labelState(f)})
	})
	v.stats, v.errors, v.queue = g.engine.Stats(), g.errors, g.queue
	if g.labels != nil {
		v.labelWrites, v.labelFailures = g.labels.writes, g.labels.failed
	}
	return v
}

// snapshot merges the views of gateways that share one Pinholes (the
// shards of one daemon, see Shards): connections and counters of every
// engine, the pinholes once.
func snapshot(gws []*Gateway) status.Snapshot {
	now := time.Now()
	first := gws[0]
	s := status.Snapshot{Version: first.version, Started: first.started, Taken: now, Counters: map[string]uint64{}}
	var es conntrack.Stats
	var errs, lw, lf uint64
	var q queueStats
	for _, g := range gws {
		v := g.view(now)
		s.Conns = append(s.Conns, v.conns...)
		es = es.Add(v.stats)
		errs, lw, lf = errs+v.errors, lw+v.labelWrites, lf+v.labelFailures
		q.queued, q.dropped, q.userDropped = q.queued+v.queue.queued, q.dropped+v.queue.dropped, q.userDropped+v.queue.userDropped
	}
	for _, p := range first.pins.List() {
		path := p.Path.String()
		if p.Synced {
			path = status.PathSynced
		}
		s.Pinholes = append(s.Pinholes, status.Pinhole{Session: p.Session, Path: path, Peer: p.Pinhole.Peer, Public: p.Pinhole.Public,
			Target: p.Pinhole.Target, Opened: p.Opened, Expires: p.Expires, Synced: p.Synced})
	}
	ps := first.pins.Stats()
	for k, v := range map[string]uint64{
		"packets": es.Packets, "packets_modified": es.Modified, "packets_dropped": es.Dropped, "packets_untracked": es.Untracked,
		"rewrites": es.Rewrites, "refusals": es.Refusals, "connections_seen": es.Flows, "connections_evicted": es.Evicted,
		"tls_sessions": es.TLS, "stalled_lines": es.Stalled, "pinholes_opened": ps.Opened, "pinholes_used": ps.Used,
		"pinholes_expired": ps.Expired, "pinholes_ended": ps.Ended, "pinholes_failed": ps.Failed, "pinholes_replaced": ps.Replaced,
		"errors": errs, "queue_full_drops": q.dropped, "queue_delivery_failures": q.userDropped,
		"label_writes": lw, "label_write_failures": lf, "connections_resumed": es.Resumed,
		"sync_sent": ps.SyncSent, "sync_send_failed": ps.SyncSendFailed, "sync_received": ps.SyncReceived,
		"sync_refused": ps.SyncRefused, "sync_used": ps.SyncUsed, "sync_expired": ps.SyncExpired,
	} {
		s.Counters[k] = v
	}
	return s
}

// MarkDataConnections makes DataConnection set bit in the ct mark of each
// data connection that came through a pinhole, before the pinhole closes;
// the static rule of rules.Config.DataMark then admits that connection's
// retransmitted SYNs (its first SYN may be lost after the router, or the
// SYN/ACK before it) and nothing else.
func (g *Gateway) MarkDataConnections(m Marker, bit uint32) {
	g.marker, g.dataMark = m, bit
}

// DataConnection is told of each new TCP connection conntrack sees; the
// pinhole it came through, if any, is closed, after the connection is
// marked (see MarkDataConnections).
//
// Only a connection in its handshake can have come through a pinhole here.
// A NEW event also reports each entry conntrackd commits at a takeover:
// data connections that started on the other router, through its own
// pinhole. The copy of that pinhole synced here may by now stand for a
// later data connection to the same port (the client reused its port for
// the next PORT), which must keep its pinhole: closing it cost a pending
// PORT session at a switchover (the server's connection dropped, 425).
// The copy of a pinhole that was used on the sender expires by itself.
func (g *Gateway) DataConnection(f ctnetlink.NewFlow) {
	if f.TCPState != 0 && !f.TCPState.Opening() {
		return
	}
	var mark func() error
	if g.marker != nil {
		mark = func() error { return g.marker.SetMarkBits(f.Orig, g.dataMark) }
	}
	g.pins.Used(f.Orig.Src.Addr(), f.Orig.Dst, mark)
}

// ControlDestroyed ends the control connection whose conntrack entry was
// destroyed (closed: in TIME_WAIT or CLOSE), if this gateway tracks it and
// the entry is its own (conntrack.Engine.Destroyed), and reports whether it
// did. The
// engine's connection is the entry seen at ftpalg's hook: the original
// tuple's source (before SNAT) to the reply tuple's source (after DNAT).
func (g *Gateway) ControlDestroyed(orig, reply ctnetlink.Tuple, id uint32, closed bool) bool {
	c := conntrack.Conn{Client: orig.Src, Server: reply.Src}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.labels != nil {
		g.labels.start.take(id)
	}
	evs := g.engine.Destroyed(c, id, closed)
	for i := range evs {
		g.act(&evs[i])
	}
	return len(evs) > 0
}

// reconcile ends the connections live (conntrack's, by tuples) no longer
// holds, and returns how many.
func (g *Gateway) reconcile(live map[conntrack.ConnKey]bool) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	var gone []conntrack.FlowInfo
	g.engine.Flows(func(f conntrack.FlowInfo) {
		if !live[f.Conn.Key()] {
			gone = append(gone, f)
		}
	})
	for _, f := range gone {
		evs := g.engine.Destroyed(f.Conn, 0, false)
		for i := range evs {
			g.act(&evs[i])
		}
	}
	return len(gone)
}

// Stats returns the engine's counters.
func (g *Gateway) Stats() conntrack.Stats {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.engine.Stats()
}
