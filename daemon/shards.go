package daemon

import (
	"time"

	"github.com/ftpalg/ftpalg/conntrack"
	"github.com/ftpalg/ftpalg/ctnetlink"
	"github.com/ftpalg/ftpalg/status"
)

// Shards are the gateways of one daemon with --queues N: one per NFQUEUE,
// each with an engine, a lock and a ctnetlink socket of its own, so that
// no lock is shared on the packet path. NFQUEUE's --queue-balance hashes
// a packet's two addresses, sorted, so every packet of a connection, in
// both directions, reaches the same queue and therefore the same shard.
// They share the Pinholes (locked inside, taken only when an announcement
// opens a pinhole or a data connection starts) and the metrics; the
// engines number their sessions apart (conntrack.Config.Shard), so a
// session ID means one connection across the daemon.
type Shards []*Gateway

// Expire ends idle and closed connections in every shard.
func (s Shards) Expire(now time.Time) {
	n := 0
	for _, g := range s {
		n += g.expire(now)
	}
	s[0].metrics.SetTracked(n)
	s[0].metrics.SetOpenPinholes(s[0].pins.Len())
}

// ControlDestroyed ends the control connection of a destroyed conntrack
// entry in the shard that tracks it (Gateway.ControlDestroyed). NFQUEUE's
// balance hash picked that shard; an event does not say which, and asking
// each shard's table costs a map lookup.
func (s Shards) ControlDestroyed(orig, reply ctnetlink.Tuple, id uint32, closed bool) {
	for _, g := range s {
		if g.ControlDestroyed(orig, reply, id, closed) {
			return
		}
	}
}

// Reconcile ends every tracked control connection that dump, a conntrack
// dump taken after DESTROY events were lost, does not hold (by its
// tuples), and returns how many it ended. A connection
// that opened after the dump was taken is not tracked yet or, if it is,
// is taken over again from its labels at its next packet.
func (s Shards) Reconcile(dump []ctnetlink.Entry) int {
	live := make(map[conntrack.ConnKey]bool, len(dump))
	for _, e := range dump {
		live[conntrack.Conn{Client: e.Orig.Src, Server: e.Reply.Src}.Key()] = true
	}
	n := 0
	for _, g := range s {
		n += g.reconcile(live)
	}
	return n
}

// FlushState writes every shard's deferred connection states.
func (s Shards) FlushState() {
	for _, g := range s {
		g.FlushState()
	}
}

// Stats returns the sum of the shards' engine counters.
func (s Shards) Stats() conntrack.Stats {
	var t conntrack.Stats
	for _, g := range s {
		t = t.Add(g.Stats())
	}
	return t
}

// Snapshot is the daemon's view for `ftpalg status`: every shard's
// connections and counters, the shared pinholes once.
func (s Shards) Snapshot() status.Snapshot { return snapshot(s) }
