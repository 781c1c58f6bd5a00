package conntrack

import (
	"net/netip"
	"time"

	"github.com/ftpalg/ftpalg/alg"
)

// Conn identifies a control connection as seen at the hook: post-DNAT and
// pre-SNAT, so both directions name the same real endpoints.
type Conn struct {
	Client netip.AddrPort
	Server netip.AddrPort
}

func (c Conn) String() string { return c.Client.String() + "->" + c.Server.String() }

// ConnKey is a Conn in the form maps of connections keep: 38 bytes and no
// pointer, where a Conn takes 64 with two (a netip.Addr keeps its zone
// behind a pointer). The maps of tracked connections are most of ftpalg's
// memory per idle connection after the flows themselves; measured with
// 18,976 entries, a map[Conn]*flow took 138 bytes an entry, and a
// map[ConnKey]*flow 97. Zones are not kept: packets carry none.
type ConnKey struct {
	client, server [16]byte
	cport, sport   uint16
	v6             bool // IPv4 addresses are kept IPv4-mapped
}

// Key returns c's map key. Conns that differ only in their addresses'
// zones have the same key.
func (c Conn) Key() ConnKey {
	return ConnKey{
		client: c.Client.Addr().As16(), server: c.Server.Addr().As16(),
		cport: c.Client.Port(), sport: c.Server.Port(),
		v6: c.Client.Addr().Is6() && !c.Client.Addr().Is4In6(),
	}
}

// flow is one tracked control connection.
type flow struct {
	conn     Conn
	id       uint64
	dialog   alg.Dialog
	c, s     half          // the client's and the server's byte streams
	public   [2]netip.Addr // per alg.Side: the sender's address as the peer sees it, once looked up
	liberal  bool          // a length-changing rewrite was made
	kernel   bool          // the kernel's seqadj maps sequence numbers (SeqAdj), not the engine
	pickedUp bool          // first seen after its SYN: login state unknown
	rechecks uint8         // picked up while conntrack had no entry: segments left to look for labels again
	path     Path          // set from every packet's hook
	refused  uint8         // AUTH commands refused by policy, awaiting their reply
	changed  bool          // queued for Engine.Changed
	// saved: the daemon keeps this connection's state, so dialog changes
	// are reported too; mappingChanged: an edit since the last Changed.
	saved, mappingChanged bool
	rewrites              uint32
	// ctID is conntrack's ID of the connection's entry, 0 when unknown
	// (SkipHandshake: see Engine.reused).
	ctID uint32
	// labels were last reported (EventLabels) or found on the entry;
	// resumed: taken over from them; dead: they said OVERFLOW, so the
	// connection's packets are dropped; overflowLogged: OVERFLOW reported.
	labels         Labels
	resumed, dead  bool
	overflowLogged bool
	cut            bool // the client's first line after resuming was cut (alg.Dialog.Cut)
	started        stamp
	last           stamp
	closeAt        stamp // zero while open
	older          *flow // LRU neighbours: older is closer to eviction
	newer          *flow
}

// sender and receiver return the halves for a packet sent by side.
func (f *flow) halves(side alg.Side) (sender, receiver *half) {
	if side == alg.Client {
		return &f.c, &f.s
	}
	return &f.s, &f.c
}

// shifted reports whether either stream's later bytes are numbered
// differently for the receiver than for the sender.
func (f *flow) shifted() bool {
	return f.c.m.total() != 0 || f.s.m.total() != 0
}

// table holds flows with an LRU list for idle expiry and eviction.
type table struct {
	m      map[ConnKey]*flow
	oldest *flow
	newest *flow
}

func (t *table) get(c Conn) *flow { return t.m[c.Key()] }
func (t *table) put(f *flow)      { t.m[f.conn.Key()] = f }

func (t *table) touch(f *flow) {
	if t.newest == f {
		return
	}
	t.unlink(f)
	f.older = t.newest
	if t.newest != nil {
		t.newest.newer = f
	}
	t.newest = f
	if t.oldest == nil {
		t.oldest = f
	}
}

func (t *table) unlink(f *flow) {
	if f.older != nil {
		f.older.newer = f.newer
	} else if t.oldest == f {
		t.oldest = f.newer
	}
	if f.newer != nil {
		f.newer.older = f.older
	} else if t.newest == f {
		t.newest = f.older
	}
	f.older, f.newer = nil, nil
}

func (t *table) remove(f *flow) {
	t.unlink(f)
	delete(t.m, f.conn.Key())
}

// stamp is a point in time as the engine keeps it for each connection: the
// time since the engine's epoch (just before the first time it was given),
// so 0 means unset. 8 bytes where a time.Time takes 24: a flow holds five
// (measured: 728 bytes a flow with time.Time, in Go's 768-byte size class;
// 616 with stamps, in the 640-byte class). Differences of stamps use the
// monotonic clock of the times they came from, as time.Time.Sub does.
type stamp time.Duration

// sub returns s minus t.
func (s stamp) sub(t stamp) time.Duration { return time.Duration(s - t) }
