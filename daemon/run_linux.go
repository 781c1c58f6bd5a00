package daemon

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ftpalg/ftpalg/conntrack"
	"github.com/ftpalg/ftpalg/ctnetlink"
	"github.com/ftpalg/ftpalg/metrics"
	"github.com/ftpalg/ftpalg/nfq"
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
	rc := rules.Config{ControlPorts: c.ControlPorts, QueueNum: c.QueueNum, Bypass: c.QueueBypass, IPv4: c.IPv4, IPv6: c.IPv6,
		DataMark: c.AcceptMark, Role: c.Role}
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

// Run checks the environment, installs ftpalg's chains (unless the admin
// keeps them in a firewall script), serves the queue until ctx is done, and
// then removes everything it installed.
func Run(ctx context.Context, cfg Config) (err error) {
	if err := cfg.Validate(); err != nil {
		return err
	}
	log := cfg.Log
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

	pins := NewPinholes(fw, ports, cfg.PinholeTimeout, cfg.Limits, log)
	labels := newLabelStore(ct, log)
	engine := conntrack.New(conntrack.Config{
		ControlPorts:   cfg.ControlPorts,
		VerifyChecksum: true,
		TLS:            cfg.TLS,
		MaxFlows:       cfg.MaxConnections,
		Admit:          func(session uint64, c conntrack.Conn) error { return pins.Admit(session, c.Client.Addr()) },
		WriteLabels:    true,
		LabelSource:    labels,
	}, &natResolver{mapper: ct, ports: ports, override: cfg.overrides()})
	gw := NewGateway(engine, pins, ct, log)
	gw.keepLabels(labels)
	if cfg.AcceptMark != 0 {
		gw.MarkDataConnections(ct, cfg.AcceptMark)
	}
	var m *metrics.Metrics // nil-safe: metrics off
	if cfg.MetricsAddr != "" {
		m = metrics.New(cfg.Version)
	}
	gw.Observe(m, cfg.Version)
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
			if err := engine.Restore(st, time.Now()); err != nil {
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
	// conntrackd) left state on: taken over now, BE_LIBERAL set.
	if dump, err := ct.Dump(); err != nil {
		log.Warn("dumping conntrack to take connections over; each is looked up at its first packet instead", "err", err)
	} else if n := gw.Resume(dump, time.Now()); n > 0 {
		log.Info("took over rewritten control connections from their conntrack labels", "connections", n)
	}
	qctx, stopQueue := context.WithCancel(ctx)
	defer stopQueue()
	var overruns, loggedOverruns uint64
	var lastOverrunLog time.Time
	handle := func(p nfq.Packet) (nfq.Verdict, []byte) {
		start := time.Now()
		v, out := gw.HandleQueued(p.Payload, p.Hook, start)
		m.ObserveVerdict(time.Since(start))
		switch v {
		case conntrack.Accept:
			return nfq.Accept, nil
		case conntrack.AcceptModified:
			return nfq.Accept, out
		}
		return nfq.Drop, nil
	}
	onErr := func(e error) {
		if errors.Is(e, nfq.ErrOverrun) {
			// Counted always, logged at most once per interval.
			overruns++
			if now := time.Now(); now.Sub(lastOverrunLog) >= 10*time.Second {
				log.Warn("queue socket overruns: the kernel dropped queued packets (TCP retransmits them)",
					"overruns_total", overruns, "since_last_report", overruns-loggedOverruns)
				lastOverrunLog, loggedOverruns = now, overruns
			}
			return
		}
		log.Error("serving NFQUEUE", "queue", cfg.QueueNum, "err", e)
	}
	queue, err := openQueue(qctx, cfg, handle, onErr)
	if err != nil {
		if errors.Is(err, nfq.ErrBusy) {
			return fmt.Errorf("%w: NFQUEUE %d is bound by another program (another ftpalg?): %w", ErrEnvironment, cfg.QueueNum, err)
		}
		return fmt.Errorf("%w: opening NFQUEUE %d: %w", ErrEnvironment, cfg.QueueNum, err)
	}
	closeQueue := sync.OnceValue(queue.Close)
	defer func() {
		stopQueue() // Close waits for Serve to see this
		closeQueue()
	}()
	queueDone := make(chan error, 1)
	go func() { queueDone <- queue.Serve(qctx) }()

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
			if err := sl.Serve(sctx, gw.Snapshot); err != nil && sctx.Err() == nil {
				log.Error("serving status", "socket", cfg.StatusSocket, "err", err)
			}
		})
	}

	// Everything exclusive is ours now (the queue, the sockets): only
	// now touch the kernel's rules. Chains of a crashed run go first.
	var removals []func() error
	defer func() {
		pins.Stop() // pinholes close before their chains and tables go
		for i := len(removals) - 1; i >= 0; i-- {
			if rerr := removals[i](); rerr != nil {
				log.Error("cleaning up", "err", rerr)
				err = errors.Join(err, rerr)
			}
		}
	}()
	var repair []kernelRules
	if cfg.InstallRules {
		if err := chains.Sweep(); err != nil {
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
		repair = append(repair, chains)
	} else if iptTab != nil {
		if err := iptTab.CloseAll(); err != nil {
			return fmt.Errorf("emptying pinhole chains (are they in your firewall script? see `ftpalg rules`): %w", err)
		}
	}
	if nft != nil {
		// ftpalg's own nftables tables, whatever --install-rules says.
		if err := nft.Sweep(); err != nil {
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
		repair = append(repair, nft)
	}

	watchDone := make(chan error, 1)
	go func() {
		watchDone <- ct.Watch(qctx, ctnetlink.WatchHandler{NewFlow: gw.DataConnection})
	}()
	log.Info("ftpalg running", "role", cfg.Role.String(), "queue", cfg.QueueNum, "queue_reader", cfg.QueueReader.String(), "queue_spin", cfg.QueueSpin.String(), "pinholes", cfg.Pinholes.String(), "control_ports", fmt.Sprint(cfg.ControlPorts),
		"install_rules", cfg.InstallRules, "pinhole_timeout", cfg.PinholeTimeout.String(),
		"data_ports", fmt.Sprintf("%d-%d", cfg.DataPortLo, cfg.DataPortHi), "fail_open", cfg.FailOpen, "queue_bypass", cfg.QueueBypass)

	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var reportedLost uint64
	var lastLossLog time.Time
	flush := time.NewTicker(flushEvery)
	defer flush.Stop()
	for {
		select {
		case <-flush.C:
			gw.FlushState()
		case now := <-tick.C:
			gw.Expire(now)
			repairRules(repair, log)
			if qs, ok := readQueueStats(cfg.QueueNum); ok {
				gw.setQueueStats(qs)
				if lost := qs.dropped + qs.userDropped; lost > reportedLost && now.Sub(lastLossLog) >= 10*time.Second {
					what := "dropped (TCP retransmits them)"
					if cfg.FailOpen {
						what = "accepted unexamined (--fail-open)"
					}
					log.Warn("queue overload: control packets "+what, "queue_full", qs.dropped, "delivery_failed", qs.userDropped,
						"since_last_report", lost-reportedLost)
					reportedLost, lastLossLog = lost, now
				}
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
			// Stop taking packets first: once unbound, --queue-bypass
			// lets control traffic pass while the rules are removed.
			stopQueue()
			if cerr := closeQueue(); cerr != nil {
				log.Warn("closing NFQUEUE", "err", cerr)
			}
			gw.FlushState() // a successor takes the connections over
			s := gw.Stats()
			ps := pins.Stats()
			log.Info("ftpalg stopping", "packets", s.Packets, "modified", s.Modified, "dropped", s.Dropped,
				"rewrites", s.Rewrites, "refusals", s.Refusals, "pinholes_opened", ps.Opened, "pinholes_used", ps.Used,
				"pinholes_expired", ps.Expired)
			return nil
		}
	}
}

// repairRules re-installs rules an admin's firewall reload removed (an
// iptables-restore or nft flush of the tables): checked every second, so
// new transfers work again within about a second.
func repairRules(sets []kernelRules, log *slog.Logger) {
	for _, r := range sets {
		ok, err := r.Check()
		if err != nil {
			log.Warn("checking installed rules", "err", err)
			continue
		}
		if ok {
			continue
		}
		if err := r.Install(); err != nil {
			log.Error("re-installing rules after a firewall reload", "err", err)
			continue
		}
		log.Warn("rules were removed from the kernel (firewall reload?); re-installed them")
	}
}
