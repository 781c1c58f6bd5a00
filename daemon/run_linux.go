package daemon

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ftpalg/ftpalg/conntrack"
	"github.com/ftpalg/ftpalg/ctnetlink"
	"github.com/ftpalg/ftpalg/metrics"
	"github.com/ftpalg/ftpalg/nfq"
	"github.com/ftpalg/ftpalg/pinsync"
	"github.com/ftpalg/ftpalg/rules"
	"github.com/ftpalg/ftpalg/status"
)

// ErrEnvironment reports something missing on the machine; its message is
// the one line an admin needs.
var ErrEnvironment = errors.New("environment")

// capNetAdmin is CAP_NET_ADMIN's bit in the capability sets.
const capNetAdmin = 12

// checkCapability fails unless the process may change netfilter state.
func checkCapability() error {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return fmt.Errorf("%w: reading capabilities: %w", ErrEnvironment, err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		hex, ok := strings.CutPrefix(sc.Text(), "CapEff:")
		if !ok {
			continue
		}
		caps, err := strconv.ParseUint(strings.TrimSpace(hex), 16, 64)
		if err != nil {
			return fmt.Errorf("%w: parsing CapEff %q: %w", ErrEnvironment, hex, err)
		}
		if caps&(1<<capNetAdmin) == 0 {
			return fmt.Errorf("%w: ftpalg needs root or CAP_NET_ADMIN (effective capabilities %#x)", ErrEnvironment, caps)
		}
		return nil
	}
	return fmt.Errorf("%w: no CapEff in /proc/self/status", ErrEnvironment)
}

func (c *Config) rulesConfig() rules.Config {
	rc := rules.Config{ControlPorts: c.ControlPorts, QueueNum: c.QueueNum, Queues: c.queues(), Bypass: c.QueueBypass, IPv4: c.IPv4, IPv6: c.IPv6,
		DataMark: c.AcceptMark, Role: c.Role, SkipPureACKs: c.SkipPureACKs, SkipHandshake: c.skipHandshake()}
	if c.Pinholes == NFTables {
		rc.AcceptMark = c.AcceptMark
	}
	return rc
}

// kernelRules is a set of rules ftpalg keeps in the kernel and repairs when
// an admin's firewall reload removed them.
type kernelRules interface {
	Check() (bool, error)
	Install() error
}

// installSeqAdj installs ftpalg's seqadj table (rules.SeqAdjTable), or
// adopts a predecessor's: Install replaces its contents in one batch.
func installSeqAdj(cfg Config, log *slog.Logger) (*rules.SeqAdjTable, error) {
	sq, err := rules.NewSeqAdjTable(cfg.rulesConfig(), log)
	if err != nil {
		return nil, err
	}
	if err := sq.Install(); err != nil {
		return nil, err
	}
	return sq, nil
}

// seqAdjRules is the seqadj table as the rules repair checks it.
type seqAdjRules struct{ *rules.SeqAdjTable }

func (r seqAdjRules) Check() (bool, error) { return r.Installed() }

// gcPercent is the Go garbage collector's target (GOGC) ftpalg runs with
// unless GOGC is set: the heap may grow 20% beyond what is live before a
// collection, not Go's default 100%. Nearly all of a busy ftpalg's heap is
// live (a flow per tracked connection) and the packet path allocates
// nothing, so collections stay rare while the memory per idle connection
// drops: 2122 to 1617 bytes of RSS at 9000 connections (test/bench).
const gcPercent = 20

// Run checks the environment, adopts or installs ftpalg's chains and
// nftables tables (unless the admin keeps the chains in a firewall script),
// serves the queue until ctx is done, and then either hands over or stops
// for good. A context cancelled with cause ErrHandover (SIGTERM) leaves
// every rule, table and pinhole in place for a successor; any other
// cancellation (SIGINT) removes everything. An error return leaves the
// rules too, like a crash: fail closed, and the next start adopts them.
func Run(ctx context.Context, cfg Config) (err error) {
	if err := cfg.Validate(); err != nil {
		return err
	}
	log := cfg.Log
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(gcPercent)
	}
	if err := checkCapability(); err != nil {
		return err
	}
	if cfg.OutsideIf != "" {
		if _, err := net.InterfaceByName(cfg.OutsideIf); err != nil {
			return fmt.Errorf("%w: --outside-if %q: %w", ErrEnvironment, cfg.OutsideIf, err)
		}
	}
	rcfg := cfg.rulesConfig()
	chains, err := rules.NewChains(rcfg, log)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrEnvironment, err)
	}
	var (
		fw     Firewall
		nft    *rules.NFTable
		iptTab *rules.Table
	)
	if cfg.Pinholes == NFTables {
		if nft, err = rules.NewNFTable(rcfg, cfg.PinholeTimeout, log); err != nil {
			return fmt.Errorf("%w: %w (try --pinholes=iptables)", ErrEnvironment, err)
		}
		fw = nft
	} else {
		if iptTab, err = rules.NewTable(rcfg, log); err != nil {
			return fmt.Errorf("%w: %w", ErrEnvironment, err)
		}
		fw = iptTab
	}
	ports, err := rules.NewPorts(cfg.DataPortLo, cfg.DataPortHi)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrConfig, err)
	}
	ct, err := ctnetlink.Open(log)
	if err != nil {
		return fmt.Errorf("%w: opening ctnetlink: %w", ErrEnvironment, err)
	}
	defer ct.Close()
	// The kernel drops the events of connections no pinhole can admit:
	// they are not TCP, or their port is below any a pinhole is opened to
	// (announced ports are DefaultMinDataPort or above; NAT'd ones may
	// move into --data-ports). The rest of the router's traffic then
	// costs ftpalg nothing and cannot overrun the event socket, which
	// would lose data connections' events with it.
	// With --skip-handshake the ends of control connections come as
	// DESTROY events, which the filter keeps for the control ports only.
	var destroyPorts []uint16
	if cfg.skipHandshake() {
		destroyPorts = cfg.ControlPorts
	}
	if err := ct.FilterEvents(min(conntrack.DefaultMinDataPort, cfg.DataPortLo), destroyPorts); err != nil {
		log.Warn("conntrack events are not filtered in the kernel: every new connection of this machine is read", "err", err)
	}
	// Joined before any queue is bound or pinhole adopted: a data
	// connection that opens a pinhole while this run starts up is
	// reported to the Watch started once everything is ready, instead of
	// being missed and leaving its pinhole open to a second connection.
	if err := ct.Subscribe(); err != nil {
		return fmt.Errorf("%w: %w", ErrEnvironment, err)
	}
	// Likewise the end of a control connection that opens now.
	if cfg.skipHandshake() {
		if err := ct.SubscribeDestroy(); err != nil {
			return fmt.Errorf("%w: %w", ErrEnvironment, err)
		}
	}

	pins := NewPinholes(fw, ports, cfg.PinholeTimeout, cfg.Limits, log)
	// The sync link is bound, and given to the pinholes, before any
	// packet is queued to us, so every pinhole this run opens is sent.
	var (
		link *pinsync.Link
		ps   *PinSync
	)
	if cfg.SyncPeer.IsValid() {
		ps = NewPinSync(pins, log)
		if link, err = pinsync.Listen(cfg.SyncListen, cfg.SyncPeer, ps.SendFailed); err != nil {
			return fmt.Errorf("%w: --sync-listen: %w", ErrEnvironment, err)
		}
		defer link.Close() // if Run ends before it is served; closing twice is harmless
		pins.SyncTo(link)
	}
	// One shard per queue, each with its own engine, ctnetlink socket (NAT
	// lookups, label writes with BE_LIBERAL) and label store; ct is shared
	// for the rest (events, data connection marks, restoring state).
	shards := make(Shards, cfg.queues())
	for i := range shards {
		sct := ct
		if i > 0 {
			if sct, err = ctnetlink.Open(log); err != nil {
				return fmt.Errorf("%w: opening ctnetlink for queue %d: %w", ErrEnvironment, int(cfg.QueueNum)+i, err)
			}
			defer sct.Close()
		}
		labels := newLabelStore(sct, log)
		engine := conntrack.New(conntrack.Config{
			ControlPorts:   cfg.ControlPorts,
			VerifyChecksum: true,
			TLS:            cfg.TLS,
			MaxFlows:       perShard(cfg.MaxConnections, len(shards)),
			Shard:          uint64(i),
			Shards:         uint64(len(shards)),
			Admit:          func(session uint64, c conntrack.Conn) error { return pins.Admit(session, c.Client.Addr()) },
			WriteLabels:    true,
			LabelSource:    labels,
			SkipHandshake:  cfg.skipHandshake(),
		}, &natResolver{mapper: sct, ports: ports, override: cfg.overrides()})
		if cfg.KernelSeqAdj {
			labels.useKernelSeqAdj(sct)
		}
		shards[i] = NewGateway(engine, pins, sct, log)
		shards[i].keepLabels(labels)
	}
	gw := shards[0] // the only one without --queues; data connections and state for all
	if cfg.AcceptMark != 0 && (nft == nil || !nft.MarksDataConnections()) {
		gw.MarkDataConnections(ct, cfg.AcceptMark)
	}
	var m *metrics.Metrics // nil-safe: metrics off
	if cfg.MetricsAddr != "" {
		m = metrics.New(cfg.Version)
	}
	for _, g := range shards {
		g.Observe(m, cfg.Version)
	}
	if cfg.StateDir != "" {
		store, err := openStateStore(cfg.StateDir, log)
		if err != nil {
			return fmt.Errorf("%w: %w", ErrEnvironment, err)
		}
		restored := 0
		for _, st := range store.load(24 * time.Hour) {
			// A connection that ended while ftpalg was down is gone from
			// conntrack too: its state must not be taken over.
			if _, _, err := ct.Lookup(ctnetlink.Tuple{Src: st.Conn.Client, Dst: st.Conn.Server}); errors.Is(err, ctnetlink.ErrNotFound) {
				store.remove(st.Session)
				continue
			}
			if err := gw.engine.Restore(st, time.Now()); err != nil {
				log.Warn("not restoring saved connection", "session", st.Session, "err", err)
				store.remove(st.Session)
				continue
			}
			restored++
		}
		if restored > 0 {
			log.Info("took over control connections from the previous run", "connections", restored, "state_dir", cfg.StateDir)
		}
		gw.state = store
	}
	// Connections a previous run (or the other router, through
	// conntrackd) left state on: taken over now, BE_LIBERAL set. With
	// several queues nobody knows which shard will see a connection (the
	// kernel seeds the hash per rule), so each shard looks a connection it
	// does not know up at its first packet instead (LabelSource).
	//
	// With --skip-handshake the dump also says which control connections
	// are older than this process (labelStore.start): their dialogs went
	// on before it, so they are not taken for fresh at their first packet.
	var dump []ctnetlink.Entry
	dumped := false
	if len(shards) == 1 || cfg.skipHandshake() {
		var derr error
		dump, derr = ct.Dump()
		switch {
		case derr != nil && cfg.skipHandshake():
			// Without it every connection open now would be taken
			// for fresh at its first packet, its login for not made.
			return fmt.Errorf("%w: dumping conntrack for the control connections open before this start (--skip-handshake): %w", ErrEnvironment, derr)
		case derr != nil:
			log.Warn("dumping conntrack to take connections over; each is looked up at its first packet instead", "err", derr)
		}
		dumped = derr == nil
	}
	if cfg.skipHandshake() {
		start := newStartEntries(dump, gw.engine.IsControl)
		for _, g := range shards {
			g.labels.start = start
		}
	}
	switch {
	case len(shards) > 1:
		log.Info("taking connections over from their conntrack labels at their first packet", "queues", len(shards))
	case dumped:
		if n := gw.Resume(dump, time.Now()); n > 0 {
			log.Info("took over rewritten control connections from their conntrack labels", "connections", n)
		}
	}
	qctx, stopQueue := context.WithCancel(ctx)
	defer stopQueue()
	var (
		overrunMu                sync.Mutex // the shards' readers report concurrently
		overruns, loggedOverruns uint64
		lastOverrunLog           time.Time
	)
	handler := func(g *Gateway) nfq.Handler {
		return func(p nfq.Packet) (nfq.Verdict, []byte) {
			start := time.Now()
			v, out := g.HandleQueued(p.Payload, p.Hook, start)
			m.ObserveVerdict(time.Since(start))
			switch v {
			case conntrack.Accept:
				return nfq.Accept, nil
			case conntrack.AcceptModified:
				return nfq.Accept, out
			}
			return nfq.Drop, nil
		}
	}
	onErr := func(num uint16) nfq.ErrorFunc {
		return func(e error) {
			if errors.Is(e, nfq.ErrOverrun) {
				// Counted always, logged at most once per interval.
				overrunMu.Lock()
				defer overrunMu.Unlock()
				overruns++
				if now := time.Now(); now.Sub(lastOverrunLog) >= 10*time.Second {
					log.Warn("queue socket overruns: the kernel dropped queued packets (TCP retransmits them)",
						"overruns_total", overruns, "since_last_report", overruns-loggedOverruns)
					lastOverrunLog, loggedOverruns = now, overruns
				}
				return
			}
			log.Error("serving NFQUEUE", "queue", num, "err", e)
		}
	}
	queues := make([]packetQueue, 0, len(shards))
	closeQueues := sync.OnceFunc(func() {
		for _, q := range queues {
			if cerr := q.Close(); cerr != nil {
				log.Warn("closing NFQUEUE", "err", cerr)
			}
		}
	})
	defer func() {
		stopQueue() // Close waits for Serve to see this
		closeQueues()
	}()
	queueDone := make(chan error, len(shards))
	for i, g := range shards {
		num := cfg.QueueNum + uint16(i)
		queue, err := openQueue(qctx, cfg, num, handler(g), onErr(num))
		if err != nil {
			if errors.Is(err, nfq.ErrBusy) {
				return fmt.Errorf("%w: NFQUEUE %d is bound by another program (another ftpalg?): %w", ErrEnvironment, num, err)
			}
			return fmt.Errorf("%w: opening NFQUEUE %d: %w", ErrEnvironment, num, err)
		}
		queues = append(queues, queue)
		go func() { queueDone <- queue.Serve(qctx) }()
	}

	sctx, stopServing := context.WithCancel(ctx)
	var serving sync.WaitGroup
	defer serving.Wait() // the status socket is removed before Run returns
	defer stopServing()  // (runs first)
	if cfg.MetricsAddr != "" {
		ln, err := net.Listen("tcp", cfg.MetricsAddr)
		if err != nil {
			return fmt.Errorf("%w: --metrics-addr: %w", ErrEnvironment, err)
		}
		serving.Go(func() {
			if err := m.ServeListener(sctx, ln); err != nil && sctx.Err() == nil {
				log.Error("serving metrics", "addr", cfg.MetricsAddr, "err", err)
			}
		})
	}
	if cfg.StatusSocket != "" {
		sl, err := status.Listen(cfg.StatusSocket)
		if err != nil {
			return fmt.Errorf("%w: --status-socket: %w", ErrEnvironment, err)
		}
		serving.Go(func() {
			if err := sl.Serve(sctx, shards.Snapshot); err != nil && sctx.Err() == nil {
				log.Error("serving status", "socket", cfg.StatusSocket, "err", err)
			}
		})
	}

	// Everything exclusive is ours now (the queue, the sockets): only
	// now touch the kernel's rules. What a predecessor left is adopted,
	// never removed first: its queue rules keep control packets away
	// from the unexamined path until ours replace them.
	var removals []func() error
	defer func() {
		if !stopForGood(ctx) {
			pins.Detach()
			if err == nil {
				log.Info("handing over: rules, tables and pinholes stay for the next ftpalg; control packets are dropped (TCP retransmits them) until it starts or `ftpalg cleanup` runs")
			} else {
				log.Warn("exiting on an error: rules, tables and pinholes stay; control packets are dropped until ftpalg starts again or `ftpalg cleanup` runs")
			}
			return
		}
		pins.Stop() // pinholes close before their chains and tables go
		for i := len(removals) - 1; i >= 0; i-- {
			if rerr := removals[i](); rerr != nil {
				log.Error("cleaning up", "err", rerr)
				err = errors.Join(err, rerr)
			}
		}
	}()
	repair := &rulesRepair{log: log}
	if rc := cfg.rulesConfig(); rules.XtablesOnNFTables(rc) {
		if gen, err := rules.OpenGeneration(); err != nil {
			log.Warn("checking ftpalg's rules every second without the ruleset generation", "err", err)
		} else {
			defer gen.Close()
			repair.gen = gen
		}
	}
	if nft != nil {
		// ftpalg's own nftables tables, whatever --install-rules says,
		// and before any queue rule: a PORT rewritten before the table
		// exists gets no pinhole (measured: a predecessor that removed
		// everything, then a start whose queue rule came 0.36 s before
		// its table, and data connections were dropped).
		if err := nft.SweepDisabled(); err != nil {
			return fmt.Errorf("sweeping leftover nftables tables: %w", err)
		}
		if err := nft.Install(); err != nil {
			return fmt.Errorf("installing nftables pinhole tables: %w", err)
		}
		removals = append(removals, func() error {
			if rerr := nft.Remove(); rerr != nil {
				return fmt.Errorf("removing nftables tables: %w", rerr)
			}
			return nil
		})
		repair.sets = append(repair.sets, nft)
		adoptPinholes(nft, pins, log)
	}
	if cfg.KernelSeqAdj {
		// Before the queue rules, whatever --install-rules says: a
		// control connection that opened before the table has no
		// seqadj extension, and ftpalg maps it itself.
		if sq, err := installSeqAdj(cfg, log); err != nil {
			log.Warn("the kernel's seqadj is not available: ftpalg maps every rewritten connection itself, with BE_LIBERAL", "err", err)
		} else {
			removals = append(removals, sq.Remove)
			repair.sets = append(repair.sets, seqAdjRules{sq})
		}
	} else if sq, err := rules.NewSeqAdjTable(cfg.rulesConfig(), log); err == nil {
		if err := sq.Remove(); err != nil { // a previous run's, if any
			log.Warn("removing a previous run's seqadj table", "err", err)
		}
	}
	if cfg.InstallRules {
		if err := chains.SweepDisabled(); err != nil {
			return fmt.Errorf("sweeping leftover chains: %w", err)
		}
		if err := chains.Install(); err != nil {
			return fmt.Errorf("installing chains: %w", err)
		}
		removals = append(removals, func() error {
			if rerr := chains.Remove(); rerr != nil {
				return fmt.Errorf("removing chains: %w", rerr)
			}
			return nil
		})
		repair.sets = append(repair.sets, chains)
	}
	var leftoversUntil time.Time
	if iptTab != nil {
		n, err := iptTab.AdoptLeftovers()
		if err != nil {
			return fmt.Errorf("reading pinholes of the previous run (are the chains in your firewall script? see `ftpalg rules`): %w", err)
		}
		if n > 0 {
			leftoversUntil = time.Now().Add(cfg.PinholeTimeout)
			log.Info("keeping the previous run's pinhole rules until the pinhole timeout", "rules", n, "until", leftoversUntil.Format(time.RFC3339))
		}
		if !cfg.InstallRules {
			removals = append(removals, func() error {
				if rerr := iptTab.CloseAll(); rerr != nil {
					return fmt.Errorf("emptying pinhole chains: %w", rerr)
				}
				return nil
			})
		}
	}

	if link != nil {
		// Served after the tables and chains (a received pinhole needs
		// them) and after the deferred stop above, so the link is closed,
		// and its reader done, before the pinholes are stopped or
		// detached.
		served := make(chan struct{})
		defer func() {
			if cerr := link.Close(); cerr != nil {
				log.Warn("closing the pinhole sync link", "err", cerr)
			}
			<-served
		}()
		go func() {
			defer close(served)
			if serr := link.Serve(qctx, ps.Message, ps.Refused); serr != nil {
				log.Error("pinhole sync link", "err", serr)
			}
		}()
		// The other router may have pinholes open that this one, just
		// started, never got (a failback: it was down when they opened).
		if err := link.Send(pinsync.Message{Type: pinsync.TypeResync}); err != nil {
			ps.SendFailed(err)
		}
		log.Info("syncing pinholes with the other router", "listen", cfg.SyncListen.String(), "peer", cfg.SyncPeer.String())
	}

	// With --skip-handshake, control connections whose DESTROY never
	// came are found by a dump: after an event overrun, and every
	// reconcileEvery, since an entry created while no event listener
	// existed (during a restart) never sends one.
	reconcile := newReconciler(shards, log)
	if cfg.skipHandshake() {
		go reconcile.run(qctx)
	}
	watchDone := make(chan error, 1)
	go func() {
		h := ctnetlink.WatchHandler{NewFlow: gw.DataConnection}
		if cfg.skipHandshake() {
			h.Destroyed = func(e ctnetlink.Destroyed) { shards.ControlDestroyed(e.Orig, e.Reply, e.ID, e.TCPState.Closed()) }
			// DESTROY events may have been lost with the rest.
			h.Overrun = func(uint64) { reconcile.request() }
		}
		watchDone <- ct.Watch(qctx, h)
	}()
	log.Info("ftpalg running", "role", cfg.Role.String(), "queue", cfg.QueueNum, "queues", len(shards), "queue_reader", cfg.QueueReader.String(), "queue_spin", cfg.QueueSpin.String(), "pinholes", cfg.Pinholes.String(), "control_ports", fmt.Sprint(cfg.ControlPorts),
		"install_rules", cfg.InstallRules, "pinhole_timeout", cfg.PinholeTimeout.String(),
		"data_ports", fmt.Sprintf("%d-%d", cfg.DataPortLo, cfg.DataPortHi), "fail_open", cfg.FailOpen, "queue_bypass", cfg.QueueBypass, "skip_pure_acks", cfg.SkipPureACKs, "skip_handshake", cfg.skipHandshake(), "kernel_seqadj", cfg.KernelSeqAdj)

	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var reportedLost uint64
	var lastLossLog time.Time
	flush := time.NewTicker(flushEvery)
	defer flush.Stop()
	for {
		select {
		case <-flush.C:
			shards.FlushState()
		case now := <-tick.C:
			shards.Expire(now)
			if !leftoversUntil.IsZero() && now.After(leftoversUntil) {
				leftoversUntil = time.Time{}
				if err := iptTab.RemoveLeftovers(); err != nil {
					log.Error("removing the previous run's pinhole rules", "err", err)
				} else {
					log.Info("removed the previous run's pinhole rules")
				}
			}
			repair.check(ctx)
			var lost, full, failed uint64
			for i, g := range shards {
				if qs, ok := readQueueStats(cfg.QueueNum + uint16(i)); ok {
					g.setQueueStats(qs)
					full, failed = full+qs.dropped, failed+qs.userDropped
				}
			}
			if lost = full + failed; lost > reportedLost && now.Sub(lastLossLog) >= 10*time.Second {
				what := "dropped (TCP retransmits them)"
				if cfg.FailOpen {
					what = "accepted unexamined (--fail-open)"
				}
				log.Warn("queue overload: control packets "+what, "queue_full", full, "delivery_failed", failed,
					"since_last_report", lost-reportedLost)
				reportedLost, lastLossLog = lost, now
			}
		case qerr := <-queueDone:
			if qctx.Err() == nil {
				return fmt.Errorf("%w: %w", ErrEnvironment, qerr)
			}
		case werr := <-watchDone:
			if qctx.Err() == nil {
				return fmt.Errorf("watching conntrack events: %w", werr)
			}
		case <-ctx.Done():
			// Stop taking packets first. Until a successor binds (or,
			// on a stop for good, until the rules are gone), the queue
			// rules drop control packets, or with --queue-bypass let
			// them pass unexamined.
			stopQueue()
			closeQueues()
			shards.FlushState() // a successor takes the connections over
			s := shards.Stats()
			ps := pins.Stats()
			log.Info("ftpalg stopping", "for_good", stopForGood(ctx), "packets", s.Packets, "modified", s.Modified, "dropped", s.Dropped,
				"rewrites", s.Rewrites, "refusals", s.Refusals, "pinholes_opened", ps.Opened, "pinholes_used", ps.Used,
				"pinholes_expired", ps.Expired, "connections_seen", s.Flows, "connections_resumed", s.Resumed,
				"sync_sent", ps.SyncSent, "sync_received", ps.SyncReceived, "sync_refused", ps.SyncRefused, "sync_used", ps.SyncUsed)
			return nil
		}
	}
}

// adoptPinholes takes over the pinholes a previous run left in the
// nftables tables (Pinholes.Adopt).
func adoptPinholes(nft *rules.NFTable, pins *Pinholes, log *slog.Logger) {
	left, err := nft.Leftovers()
	if err != nil {
		log.Warn("listing the previous run's pinholes; they stay open until their kernel timeout", "err", err)
	}
	n := 0
	for _, l := range left {
		if err := pins.Adopt(l.Pinhole, l.Left); err != nil {
			log.Warn("not taking over a pinhole of the previous run; it stays open until its kernel timeout", "pinhole", l.Pinhole.String(), "err", err)
			continue
		}
		n++
	}
	if n > 0 {
		log.Info("took over pending pinholes from the previous run", "pinholes", n)
	}
}

// perShard divides a limit over n shards, each keeping at least one; 0
// (the engine's default) stays 0.
func perShard(limit, n int) int {
	if limit <= 0 {
		return 0
	}
	return max(1, limit/n)
}

// stopForGood says whether Run's context asks for everything to be
// removed: cancelled, and not with ErrHandover.
func stopForGood(ctx context.Context) bool {
	return ctx.Err() != nil && !errors.Is(context.Cause(ctx), ErrHandover)
}

// rulesGeneration is what the repair check asks first: a counter the kernel
// changes with every rule change (rules.Generation, nf_tables' ruleset
// generation). Nil where no such counter covers the rules (iptables-legacy).
type rulesGeneration interface {
	ID() (uint32, error)
}

// rulesRepair re-installs rules an admin's firewall reload removed (an
// iptables-restore or nft flush of the tables): checked every second, so
// new transfers work again within about a second. A check is skipped
// while the ruleset generation is the one of the last check that found
// everything in place.
type rulesRepair struct {
	sets  []kernelRules
	gen   rulesGeneration // nil: check every time
	clean uint32          // generation of the last clean check
	known bool            // clean is valid
	log   *slog.Logger
}

// check runs one repair check; it reports whether it looked at the rules.
func (r *rulesRepair) check(ctx context.Context) bool {
	var id uint32
	haveID := false
	if r.gen != nil {
		got, err := r.gen.ID()
		switch {
		case err != nil:
			r.log.Debug("ruleset generation unknown; checking the rules", "err", err)
		case r.known && got == r.clean:
			return false // nothing changed since the last clean check
		default:
			id, haveID = got, true
		}
	}
	allThere := true
	for _, set := range r.sets {
		// A check runs iptables-save per family (tens of milliseconds,
		// more on a loaded machine): a stop that came meanwhile goes
		// first.
		if ctx.Err() != nil {
			r.known = false
			return true
		}
		ok, err := set.Check()
		if err != nil {
			allThere = false
			r.log.Warn("checking installed rules", "err", err)
			continue
		}
		if ok {
			continue
		}
		allThere = false
		if err := set.Install(); err != nil {
			r.log.Error("re-installing rules after a firewall reload", "err", err)
			continue
		}
		r.log.Warn("rules were removed from the kernel (firewall reload?); re-installed them")
	}
	// The generation read before the check: a change made during it is
	// seen at the next tick.
	r.clean, r.known = id, haveID && allThere
	return true
}
