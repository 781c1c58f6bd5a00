package daemon

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/ftpalg/ftpalg/conntrack"
	"github.com/ftpalg/ftpalg/metrics"
	"github.com/ftpalg/ftpalg/pinsync"
	"github.com/ftpalg/ftpalg/rules"
)

// Firewall opens and closes pinholes. rules.Table implements it.
type Firewall interface {
	Open(p rules.Pinhole) error
	Close(p rules.Pinhole) error
}

// timedFirewall opens a pinhole with a timeout of its own: a pinhole
// synced from the other router keeps only what was left of the sender's.
// rules.NFTable implements it; with rules.Table (no kernel timeouts) the
// keeper's timer alone closes the pinhole, as for any other.
type timedFirewall interface {
	OpenFor(p rules.Pinhole, timeout time.Duration) error
}

// syncSender sends pinholes to the other router of a pair (pinsync.Link).
type syncSender interface {
	Send(m pinsync.Message) error
}

// dataKey names the data connection a pinhole admits: its source address
// and its destination before any DNAT, as a conntrack NEW event's original
// tuple shows it.
type dataKey struct {
	peer   netip.Addr
	public netip.AddrPort
}

func keyOf(p rules.Pinhole) dataKey { return dataKey{p.Peer, p.Public} }

// pinhole is one open pinhole and what it is for.
type pinhole struct {
	p       rules.Pinhole
	session uint64
	client  netip.Addr // the control connection's client
	path    conntrack.Path
	opened  time.Time
	expires time.Time
	timer   *time.Timer
	nat     bool // a public port was reserved for it
	// synced says the other router opened it and sent it here
	// (OpenSynced): session is the sender's, client and path are unset,
	// and it counts in the Sync* counters and against Limits.Total only.
	synced bool
}

// Pinholes keeps the open pinholes: opened synchronously before the packet
// that announced them is released, closed when their data connection
// starts, when their control connection ends, or at the timeout. Closing
// runs on a worker goroutine because an iptables delete takes tens of
// milliseconds and must not delay packets.
type Pinholes struct {
	fw      Firewall
	ports   PortReserver
	timeout time.Duration
	limits  Limits
	metrics *metrics.Metrics // nil-safe
	log     *slog.Logger
	clock   func() time.Time

	mu        sync.Mutex
	open      map[dataKey]*pinhole
	bySession map[uint64][]rules.Pinhole
	byClient  map[netip.Addr]int
	closing   chan closeReq
	wg        sync.WaitGroup
	stats     PinholeStats
	sync      syncSender // nil: no pair
	synced    int        // open pinholes with synced set
}

// Limits bound the pinholes waiting for their data connection. A new
// announcement on a control connection that is at PerConnection replaces
// its oldest pending pinhole (the kernel helper's max_expected behaviour,
// which keeps a client's EPSV-then-PASV fallback working); one that would
// exceed PerClient or Total is refused, so a flood from one client cannot
// crowd out the others.
type Limits struct {
	PerConnection int // default 1
	PerClient     int // pending pinholes for one client address; default 64
	Total         int // default 1024
}

func (l *Limits) fill() {
	if l.PerConnection <= 0 {
		l.PerConnection = 1
	}
	if l.PerClient <= 0 {
		l.PerClient = 64
	}
	if l.Total <= 0 {
		l.Total = 1024
	}
}

// Errors of Admit.
var (
	ErrClientLimit = errors.New("too many pending pinholes for this client")
	ErrTotalLimit  = errors.New("too many pending pinholes in total")
)

// PinholeStats counts pinholes by outcome.
type PinholeStats struct {
	Opened, Used, Expired, Ended, Failed, Replaced uint64
	OpenNanos                                      []int64 // latest open latencies, newest last (bounded)
	// Pinholes synced with the other router of a pair: sent to it
	// (queued for its link), not sent (queue full, link closed, or, added
	// by PinSync, a send that failed on the wire), received from it and
	// opened here, received and refused (malformed, out of policy, not
	// from the peer, or failed to open), and of those received, used by
	// a data connection or expired unused.
	SyncSent, SyncSendFailed, SyncReceived, SyncRefused, SyncUsed, SyncExpired uint64
}

type closeReq struct {
	ph  *pinhole
	why string
}

// NewPinholes returns a pinhole keeper; Stop it to close everything.
func NewPinholes(fw Firewall, ports PortReserver, timeout time.Duration, limits Limits, log *slog.Logger) *Pinholes {
	limits.fill()
	k := &Pinholes{
		fw: fw, ports: ports, timeout: timeout, limits: limits, log: log, clock: time.Now,
		open:      make(map[dataKey]*pinhole),
		bySession: make(map[uint64][]rules.Pinhole),
		byClient:  make(map[netip.Addr]int),
		closing:   make(chan closeReq, 4096),
	}
	k.wg.Add(1)
	go k.closer()
	return k
}

// Admit says whether session, a control connection of client, may have one
// more pinhole. Its own pending pinholes beyond PerConnection-1 do not
// count: Open replaces them.
func (k *Pinholes) Admit(session uint64, client netip.Addr) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	replaced := max(0, len(k.bySession[session])-k.limits.PerConnection+1)
	switch {
	case k.byClient[client.Unmap()]-replaced >= k.limits.PerClient:
		return fmt.Errorf("%w: %d pending for %s", ErrClientLimit, k.byClient[client.Unmap()], client)
	case len(k.open)-replaced >= k.limits.Total:
		return fmt.Errorf("%w: %d pending", ErrTotalLimit, len(k.open))
	}
	return nil
}

// Open installs a pinhole for session, the control connection conn. It
// returns once the rules are in the kernel. nat says the public port was
// reserved for this pinhole and must be released with it.
func (k *Pinholes) Open(session uint64, conn conntrack.Conn, path conntrack.Path, p rules.Pinhole, nat bool) error {
	client := conn.Client.Addr()
	k.mu.Lock()
	for list := k.bySession[session]; len(list) >= k.limits.PerConnection; list = k.bySession[session] {
		old := k.open[keyOf(list[0])]
		if old == nil || old.session != session {
			k.bySession[session] = list[1:] // stale index entry
			continue
		}
		k.stats.Replaced++
		k.removeLocked(old, "replaced by a newer announcement")
	}
	k.mu.Unlock()
	start := k.clock()
	err := k.fw.Open(p)
	took := k.clock().Sub(start)
	k.mu.Lock()
	defer k.mu.Unlock()
	if err != nil {
		k.stats.Failed++
		k.metrics.Pinhole(metrics.PinholeFailed)
		if nat {
			k.ports.Release(p.Public.Addr(), p.Public.Port())
		}
		return err
	}
	k.stats.Opened++
	k.metrics.Pinhole(metrics.PinholeOpened)
	k.metrics.ObservePinholeInstall(took)
	k.stats.OpenNanos = append(k.stats.OpenNanos, took.Nanoseconds())
	if n := len(k.stats.OpenNanos); n > 4096 {
		k.stats.OpenNanos = append(k.stats.OpenNanos[:0], k.stats.OpenNanos[n-2048:]...)
	}
	if old := k.open[keyOf(p)]; old != nil && old.p == p && !old.synced {
		// The same endpoint announced again (a client repeating PORT):
		// the firewall counts references, keep one record and restart
		// its clock. (A synced one is replaced below: the pinhole is
		// this router's own now.)
		old.timer.Reset(k.timeout)
		old.expires = k.clock().Add(k.timeout)
		// The caller reserved the public port only if it was free: the
		// old record holds no reservation (an adopted pinhole's, whose
		// announcement a resumed connection replays); it holds this one.
		old.nat = old.nat || nat
		k.queueClose(&pinhole{p: p}, "") // drop the extra reference
		k.sendLocked(session, p, k.timeout)
		return nil
	}
	ph := &pinhole{p: p, session: session, client: client.Unmap(), path: path, opened: start, expires: start.Add(k.timeout), nat: nat}
	ph.timer = time.AfterFunc(k.timeout, func() { k.expire(ph) })
	if old := k.open[keyOf(p)]; old != nil {
		k.removeLocked(old, "replaced") // same public endpoint, new target
	}
	k.open[keyOf(p)] = ph
	k.bySession[session] = append(k.bySession[session], p)
	k.byClient[ph.client]++
	k.log.Info("pinhole opened", "session", session, "conn", conn.String(), "path", path.String(), "pinhole", p.String(), "took", took.Round(time.Microsecond))
	k.sendLocked(session, p, k.timeout)
	return nil
}

// SyncTo makes the keeper send each pinhole it opens (not those it
// receives) to the other router of a pair. Call it before the first Open.
func (k *Pinholes) SyncTo(s syncSender) {
	k.mu.Lock()
	k.sync = s
	k.mu.Unlock()
}

// sendLocked sends a pinhole this router opened to the other router. It
// only queues: the packet that announced the pinhole is not delayed.
func (k *Pinholes) sendLocked(session uint64, p rules.Pinhole, left time.Duration) {
	if k.sync == nil {
		return
	}
	err := k.sync.Send(pinsync.Message{Type: pinsync.TypePinhole, Session: session, Timeout: left,
		Peer: p.Peer, Public: p.Public, Target: p.Target})
	if err != nil {
		k.stats.SyncSendFailed++
		k.metrics.PinSync(metrics.SyncSendFailed)
		return
	}
	k.stats.SyncSent++
	k.metrics.PinSync(metrics.SyncSent)
}

// countSync counts a sync event of PinSync's.
func (k *Pinholes) countSync(event string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	switch event {
	case metrics.SyncReceived:
		k.stats.SyncReceived++
	case metrics.SyncRefused:
		k.stats.SyncRefused++
	case metrics.SyncSendFailed:
		k.stats.SyncSendFailed++
	}
	k.metrics.PinSync(event)
}

// Resend sends every pinhole this router opened and still has open, with
// the time each has left, to the other router: its answer to a resync
// request from a router that just started. It returns how many it sent.
func (k *Pinholes) Resend() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	now, n := k.clock(), 0
	for _, ph := range k.open {
		if left := ph.expires.Sub(now).Truncate(time.Millisecond); !ph.synced && left > 0 {
			k.sendLocked(ph.session, ph.p, left)
			n++
		}
	}
	return n
}

// openFor opens p in the firewall for timeout (with a firewall that has no
// timeouts of its own, the keeper's timer closes it), reserving its public
// port first when reserve says so: ErrSyncPortTaken when this process holds
// that port for another pinhole. On failure nothing stays reserved.
func (k *Pinholes) openFor(p rules.Pinhole, timeout time.Duration, reserve bool) error {
	if reserve {
		got, err := k.ports.Reserve(p.Public.Addr(), p.Public.Port())
		if err != nil {
			return err
		}
		if got != p.Public.Port() {
			k.ports.Release(p.Public.Addr(), got)
			return ErrSyncPortTaken
		}
	}
	var err error
	if tf, ok := k.fw.(timedFirewall); ok {
		err = tf.OpenFor(p, timeout)
	} else {
		err = k.fw.Open(p)
	}
	if err != nil && reserve {
		k.ports.Release(p.Public.Addr(), p.Public.Port())
	}
	return err
}

// Adopt takes over a pinhole a previous ftpalg left in the kernel
// (rules.NFTable.Leftovers: a handover keeps the nftables tables with their
// elements, so does a crash) for the time it has left. Without it the
// pinhole would still admit connections until the kernel expired it, more
// than the one it was opened for. Adopted, its data connection closes it
// (Used) and it closes at its timeout, as a pinhole of this process's own.
// Its public port is not reserved: a connection taken over from its labels
// replays the announcement that opened it when the sender retransmits it,
// and must get the same public port again, or the rewrite changes length
// (measured: the replayed 227 of a SIGKILLed predecessor dropped, "rewrites
// to another length", in two CI runs in two). The replay's reservation then
// passes to this record (Open). Until then the port could be announced to
// another client of the same server. Its control connection is unknown
// here: session 0, no client, so it counts against Limits.Total only. A
// pinhole already open here is left alone.
func (k *Pinholes) Adopt(p rules.Pinhole, left time.Duration) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.open[keyOf(p)] != nil {
		return nil
	}
	if err := k.openFor(p, left, false); err != nil {
		return fmt.Errorf("adopting pinhole %s: %w", p, err)
	}
	now := k.clock()
	ph := &pinhole{p: p, opened: now, expires: now.Add(left)}
	ph.timer = time.AfterFunc(left, func() { k.expire(ph) })
	k.open[keyOf(p)] = ph
	k.bySession[0] = append(k.bySession[0], p)
	k.byClient[ph.client]++
	k.log.Info("pinhole taken over from the previous run", "pinhole", p.String(), "left", left.Round(time.Millisecond))
	return nil
}

// Errors of OpenSynced, besides the firewall's and the port reserver's.
var (
	// ErrSyncConflict: this router has a pinhole of its own for the same
	// data connection; it is kept.
	ErrSyncConflict = errors.New("this router has its own pinhole for that data connection")
	// ErrSyncPortTaken: the public port is reserved here for another
	// pinhole, so a DNAT for the synced one would steal that one's
	// connection.
	ErrSyncPortTaken = errors.New("public port reserved here for another pinhole")
)

// OpenSynced opens a pinhole the other router opened and sent (session
// is the sender's, for the log), for what was left of its timeout:
// reserving its public port so this router never announces it while it
// is open, admitting its data connection if it arrives here after a
// failover (Used closes and marks it then, as any other), and closing it
// at its timeout. The same pinhole received again restarts its clock.
// It holds the keeper's lock throughout: synced pinholes arrive one at a
// time from one reader, and the nftables backend opens one in
// microseconds.
func (k *Pinholes) OpenSynced(session uint64, p rules.Pinhole, timeout time.Duration) error {
	p = rules.Pinhole{Peer: p.Peer.Unmap(), Public: netip.AddrPortFrom(p.Public.Addr().Unmap(), p.Public.Port()),
		Target: netip.AddrPortFrom(p.Target.Addr().Unmap(), p.Target.Port())}
	key := keyOf(p)
	k.mu.Lock()
	defer k.mu.Unlock()
	old := k.open[key]
	switch {
	case old != nil && !old.synced:
		return fmt.Errorf("synced pinhole %s: %w (%s)", p, ErrSyncConflict, old.p)
	case old == nil && k.synced >= k.limits.Total:
		return fmt.Errorf("synced pinhole %s: %w: %d synced pinholes open", p, ErrTotalLimit, k.synced)
	}
	nat := p.Public != p.Target
	reserve := old == nil && nat
	if reserve {
		if stale := k.syncedOnPortLocked(p.Public, key); stale != nil {
			// Another peer's pinhole on the same public port, from the
			// other router too. The sender reserves a public port for one
			// pinhole at a time, so it announced the port again only after
			// its pinhole there was used or closed, which a copy is not
			// told: this copy is stale and hands its port over. Refusing
			// instead cost a pending PORT at a switchover (the copy of a
			// used PASV pinhole kept the port; "public port reserved here").
			stale.nat = false
			k.removeLocked(stale, "replaced: the other router reused its public port")
			reserve = false
		}
	}
	if old != nil && old.p != p {
		// The same public endpoint, another target: the sender replaced
		// its pinhole; so does this router. Its port stays reserved.
		nat = old.nat
		old.nat = false
		k.removeLocked(old, "replaced by the other router")
		old = nil
	}
	if err := k.openFor(p, timeout, reserve); err != nil {
		return fmt.Errorf("synced pinhole %s: %w", p, err)
	}
	now := k.clock()
	if old != nil {
		old.timer.Reset(timeout)
		old.expires = now.Add(timeout)
		k.queueClose(&pinhole{p: p}, "") // drop the extra reference
		return nil
	}
	ph := &pinhole{p: p, session: session, opened: now, expires: now.Add(timeout), nat: nat, synced: true}
	ph.timer = time.AfterFunc(timeout, func() { k.expire(ph) })
	k.open[key] = ph
	k.synced++
	return nil
}

// syncedOnPortLocked returns the synced pinhole other than key's that holds
// the reservation of public, or nil. It scans the open pinholes, at most
// Limits.Total of each kind, once per synced pinhole received.
func (k *Pinholes) syncedOnPortLocked(public netip.AddrPort, key dataKey) *pinhole {
	for kk, ph := range k.open {
		if kk != key && ph.synced && ph.nat && ph.p.Public == public {
			return ph
		}
	}
	return nil
}

// Used closes the pinhole that a new data connection from peer to public
// (its destination before DNAT) came through: the connection's conntrack
// entry now carries it, so the rules are no longer needed and must not
// admit a second connection. mark, if not nil, is called first, while the
// pinhole still admits the connection: it marks the connection's entry so
// that its retransmitted SYNs are still admitted once the pinhole is gone.
// It reports whether a pinhole matched.
func (k *Pinholes) Used(peer netip.Addr, public netip.AddrPort, mark func() error) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	ph := k.open[dataKey{peer.Unmap(), netip.AddrPortFrom(public.Addr().Unmap(), public.Port())}]
	if ph == nil {
		return false
	}
	if mark != nil {
		if err := mark(); err != nil {
			k.log.Error("marking data connection: a retransmitted SYN of it will be refused", "session", ph.session,
				"pinhole", ph.p.String(), "err", err)
		}
	}
	k.endLocked(ph, "used", &k.stats.Used, &k.stats.SyncUsed, metrics.PinholeUsed, metrics.SyncUsed)
	return true
}

func (k *Pinholes) expire(ph *pinhole) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.open[keyOf(ph.p)] != ph {
		return
	}
	k.endLocked(ph, "expired", &k.stats.Expired, &k.stats.SyncExpired, metrics.PinholeExpired, metrics.SyncExpired)
}

// endLocked counts why a pinhole closes, in the pinhole counters or, for a
// synced one, in the sync counters, and removes it.
func (k *Pinholes) endLocked(ph *pinhole, why string, local, synced *uint64, localEvent, syncEvent string) {
	if ph.synced {
		*synced++
		k.metrics.PinSync(syncEvent)
	} else {
		*local++
		k.metrics.Pinhole(localEvent)
	}
	k.removeLocked(ph, why)
}

// EndSession closes every pinhole of a control connection that ended.
func (k *Pinholes) EndSession(session uint64) {
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, p := range k.bySession[session] {
		if ph := k.open[keyOf(p)]; ph != nil && ph.session == session {
			k.stats.Ended++
			k.metrics.Pinhole(metrics.PinholeEnded)
			k.removeLocked(ph, "control connection ended")
		}
	}
	delete(k.bySession, session)
}

func (k *Pinholes) removeLocked(ph *pinhole, why string) {
	ph.timer.Stop()
	delete(k.open, keyOf(ph.p))
	if ph.synced {
		k.synced--
		k.queueClose(ph, why)
		return
	}
	if k.byClient[ph.client]--; k.byClient[ph.client] <= 0 {
		delete(k.byClient, ph.client)
	}
	list := k.bySession[ph.session]
	for i, p := range list {
		if p == ph.p {
			list = append(list[:i], list[i+1:]...)
			break
		}
	}
	if len(list) == 0 {
		delete(k.bySession, ph.session)
	} else {
		k.bySession[ph.session] = list
	}
	k.queueClose(ph, why)
}

func (k *Pinholes) queueClose(ph *pinhole, why string) {
	select {
	case k.closing <- closeReq{ph, why}:
	default:
		// The worker is far behind: close inline rather than leak.
		k.closeNow(closeReq{ph, why})
	}
}

func (k *Pinholes) closer() {
	defer k.wg.Done()
	for req := range k.closing {
		k.closeNow(req)
	}
}

func (k *Pinholes) closeNow(req closeReq) {
	if err := k.fw.Close(req.ph.p); err != nil {
		k.log.Error("closing pinhole", "session", req.ph.session, "pinhole", req.ph.p.String(), "err", err)
		return
	}
	if req.ph.nat {
		k.ports.Release(req.ph.p.Public.Addr(), req.ph.p.Public.Port())
	}
	switch {
	case req.why == "":
	case req.ph.synced:
		k.log.Info("synced pinhole closed", "peer_session", req.ph.session, "pinhole", req.ph.p.String(), "why", req.why,
			"age", k.clock().Sub(req.ph.opened).Round(time.Millisecond))
	default:
		k.log.Info("pinhole closed", "session", req.ph.session, "path", req.ph.path.String(), "pinhole", req.ph.p.String(), "why", req.why,
			"age", k.clock().Sub(req.ph.opened).Round(time.Millisecond))
	}
}

// PinholeInfo describes an open pinhole for status displays.
type PinholeInfo struct {
	Session         uint64
	Path            conntrack.Path
	Pinhole         rules.Pinhole
	Opened, Expires time.Time
	Synced          bool // opened by the other router and sent here; Session is the sender's
}

// List returns the open pinholes.
func (k *Pinholes) List() []PinholeInfo {
	k.mu.Lock()
	defer k.mu.Unlock()
	out := make([]PinholeInfo, 0, len(k.open))
	for _, ph := range k.open {
		out = append(out, PinholeInfo{Session: ph.session, Path: ph.path, Pinhole: ph.p, Opened: ph.opened, Expires: ph.expires, Synced: ph.synced})
	}
	return out
}

// Len returns the number of open pinholes.
func (k *Pinholes) Len() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return len(k.open)
}

// Stats returns a copy of the counters.
func (k *Pinholes) Stats() PinholeStats {
	k.mu.Lock()
	defer k.mu.Unlock()
	s := k.stats
	s.OpenNanos = append([]int64(nil), k.stats.OpenNanos...)
	return s
}

// Detach stops the close worker after the closes already queued, and
// leaves the open pinholes in the kernel for a successor (a handover):
// their nftables elements expire by their kernel timeouts, their
// iptables rules are removed by the successor (rules.Table.AdoptLeftovers).
func (k *Pinholes) Detach() {
	k.mu.Lock()
	for _, ph := range k.open {
		ph.timer.Stop()
	}
	clear(k.open)
	k.synced = 0
	k.mu.Unlock()
	close(k.closing)
	k.wg.Wait()
}

// Stop closes every open pinhole and waits for the closes to finish.
func (k *Pinholes) Stop() {
	k.mu.Lock()
	for _, ph := range k.open {
		k.removeLocked(ph, "shutdown")
	}
	k.mu.Unlock()
	close(k.closing)
	k.wg.Wait()
}
