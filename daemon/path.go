package daemon

import (
	"time"

	"github.com/ftpalg/ftpalg/conntrack"
)

// Netfilter hook numbers (enum nf_inet_hooks) as NFQUEUE reports them in
// each packet's header.
const (
	nfInetLocalIn  = 1
	nfInetForward  = 2
	nfInetLocalOut = 3
)

// hookOf maps the hook a packet was queued from to the engine's Hook.
// ftpalg's queue rules sit only in mangle FORWARD, INPUT and OUTPUT; a
// packet from any other hook (an administrator's own NFQUEUE rule to the
// same queue) counts as forwarded, the engine's original path, so that it
// can never make a connection claim a local end it does not have.
func hookOf(nf uint8) conntrack.Hook {
	switch nf {
	case nfInetLocalIn:
		return conntrack.HookLocalIn
	case nfInetLocalOut:
		return conntrack.HookLocalOut
	}
	return conntrack.HookForward
}

// HandleQueued is Handle for a packet queued from netfilter hook nf: the
// connection's path (forward, local-server, local-client) shows in its
// log lines and in `ftpalg status`.
func (g *Gateway) HandleQueued(pkt []byte, nf uint8, now time.Time) (conntrack.Verdict, []byte) {
	return g.handleAt(pkt, hookOf(nf), now)
}
