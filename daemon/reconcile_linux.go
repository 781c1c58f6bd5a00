package daemon

import (
	"context"
	"log/slog"
	"time"

	"github.com/ftpalg/ftpalg/ctnetlink"
)

// reconcileEvery is how often a daemon that learns of the end of control
// connections from conntrack DESTROY events (--skip-handshake) dumps the
// table to end those whose event never came: lost in an overrun, or never
// sent, because the kernel gives an entry created while no event listener
// existed (ftpalg restarting) no event extension (nf_ct_ecache_ext_add with
// nf_conntrack_events=2, the default). A dump of 100,000 entries costs the
// kernel tens of milliseconds.
const reconcileEvery = 10 * time.Minute

// reconciler dumps conntrack, on its own ctnetlink socket so that a long
// dump never holds up a shard's lookups, and ends the tracked control
// connections the dump does not hold (Shards.Reconcile).
type reconciler struct {
	shards Shards
	log    *slog.Logger
	now    chan struct{}
}

func newReconciler(s Shards, log *slog.Logger) *reconciler {
	return &reconciler{shards: s, log: log, now: make(chan struct{}, 1)}
}

// request asks for a reconcile soon; requests made while one is pending
// are one.
func (r *reconciler) request() {
	select {
	case r.now <- struct{}{}:
	default:
	}
}

// run reconciles on request and every reconcileEvery until ctx is done.
func (r *reconciler) run(ctx context.Context) {
	tick := time.NewTicker(reconcileEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-r.now:
			r.log.Info("conntrack events were lost: looking for control connections that ended")
		}
		r.once()
	}
}

func (r *reconciler) once() {
	ct, err := ctnetlink.Open(r.log)
	if err != nil {
		r.log.Warn("opening ctnetlink to find ended control connections; they end when idle", "err", err)
		return
	}
	defer ct.Close()
	dump, err := ct.Dump()
	if err != nil {
		r.log.Warn("dumping conntrack to find ended control connections; they end when idle", "err", err)
		return
	}
	if n := r.shards.Reconcile(dump); n > 0 {
		r.log.Info("ended control connections whose conntrack DESTROY event never came", "connections", n)
	}
}
