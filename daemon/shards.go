package daemon

import (
	"time"

	"github.com/ftpalg/ftpalg/conntrack"
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
