// Package metrics exports ftpalg's counters to Prometheus. It keeps its own
// registry, so embedding ftpalg's packages in another program never
// collides with that program's metrics, and every series exists from the
// start (at zero), so rate() and absent-series alerts work before the first
// FTP session.
//
// The recording methods are called on the packet path. Each label value is
// resolved to a pre-created child with a switch, so a call is an atomic add
// with no allocation and no map lookup; a value outside the documented set
// is counted under "other" rather than creating a series per typo.
package metrics

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/ftpalg/ftpalg/conntrack"
)

// Verdicts, the label values of ftpalg_packets_total; they equal
// conntrack.Verdict's String.
const (
	VerdictAccept         = "accept"
	VerdictAcceptModified = "accept-modified"
	VerdictDrop           = "drop"
)

// Rewrite kinds, the label values of ftpalg_rewrites_total; they equal
// alg.Kind's String.
const (
	KindPORT = "PORT"
	KindEPRT = "EPRT"
	KindLPRT = "LPRT"
	Kind227  = "227"
	Kind228  = "228"
	Kind229  = "229"
)

// Pinhole events, the label values of ftpalg_pinholes_total.
const (
	PinholeOpened  = "opened"  // installed before the announcing packet was released
	PinholeUsed    = "used"    // its data connection started; closed
	PinholeExpired = "expired" // unused for --pinhole-timeout; closed
	PinholeEnded   = "ended"   // its control connection ended first; closed
	PinholeFailed  = "failed"  // installing it failed
)

// Pinhole sync events (the two routers of a pair), the label values of
// ftpalg_pinhole_sync_total.
const (
	SyncSent       = "sent"        // a pinhole opened here, queued for the other router
	SyncSendFailed = "send_failed" // not sent: queue full, link closed or a failed send
	SyncReceived   = "received"    // received from the other router and opened here
	SyncRefused    = "refused"     // received and refused: malformed, out of policy, not from the peer, or failed to open
	SyncUsed       = "used"        // a received pinhole admitted its data connection here
	SyncExpired    = "expired"     // a received pinhole closed unused at its timeout
)

// Refusal reasons, the label values of ftpalg_refusals_total. ReasonOf maps
// the engine's errors onto them.
const (
	ReasonBounce       = "bounce"
	ReasonLowPort      = "low_port"
	ReasonSplit        = "split"
	ReasonStalled      = "stalled"
	ReasonTooManyEdits = "too_many_edits"
	ReasonInvalidAck   = "invalid_ack"
	ReasonGap          = "gap"
	ReasonTableFull    = "table_full"
	ReasonNoMapping    = "no_mapping"
	ReasonOther        = "other"
)

// other is the label value for anything outside a documented set.
const other = "other"

var (
	verdicts = []string{VerdictAccept, VerdictAcceptModified, VerdictDrop}
	kinds    = []string{KindPORT, KindEPRT, KindLPRT, Kind227, Kind228, Kind229}
	events   = []string{PinholeOpened, PinholeUsed, PinholeExpired, PinholeEnded, PinholeFailed}
	syncs    = []string{SyncSent, SyncSendFailed, SyncReceived, SyncRefused, SyncUsed, SyncExpired}
	reasons  = []string{ReasonBounce, ReasonLowPort, ReasonSplit, ReasonStalled, ReasonTooManyEdits,
		ReasonInvalidAck, ReasonGap, ReasonTableFull, ReasonNoMapping, ReasonOther}

	// refusalErrors pairs the engine's refusal errors with their labels.
	refusalErrors = []struct {
		err    error
		reason string
	}{
		{conntrack.ErrBounce, ReasonBounce},
		{conntrack.ErrLowPort, ReasonLowPort},
		{conntrack.ErrSplit, ReasonSplit},
		{conntrack.ErrStalled, ReasonStalled},
		{conntrack.ErrTooManyEdits, ReasonTooManyEdits},
		{conntrack.ErrInvalidAck, ReasonInvalidAck},
		{conntrack.ErrGap, ReasonGap},
		{conntrack.ErrTableFull, ReasonTableFull},
		{conntrack.ErrMapping, ReasonNoMapping},
	}
)

// Bucket bounds, in seconds. A verdict takes about a microsecond in the
// engine and up to a few milliseconds when a pinhole is installed first;
// a pinhole install takes milliseconds with the iptables backend.
var (
	verdictBuckets = []float64{1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4,
		1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 1e-1}
	installBuckets = []float64{1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2,
		1e-1, 2.5e-1, 5e-1, 1}
)

// ReasonOf returns the refusal label for an error of the engine's refusal
// events (conntrack.Event.Reason).
func ReasonOf(err error) string {
	for _, r := range refusalErrors {
		if errors.Is(err, r.err) {
			return r.reason
		}
	}
	return ReasonOther
}

// Metrics holds ftpalg's metrics. Its methods are safe for concurrent use.
// The recording methods do nothing on a nil *Metrics, so the daemon calls
// them unconditionally whether or not --metrics-addr is set.
type Metrics struct {
	reg *prometheus.Registry

	packetsVec, rewritesVec, pinholesVec, refusalsVec, syncVec *prometheus.CounterVec

	packets  [3]prometheus.Counter // by index in verdicts
	rewrites [6]prometheus.Counter // by index in kinds
	pinholes [5]prometheus.Counter // by index in events
	refusals [10]prometheus.Counter
	syncs    [6]prometheus.Counter // by index in syncs

	tracked, open   prometheus.Gauge
	verdict, instal prometheus.Histogram

	labelWrites, labelFailures prometheus.Counter
	kernelSeqAdj               prometheus.Counter
}

// New returns ftpalg's metrics in a registry of their own, with the Go
// runtime and process collectors and ftpalg_build_info{version}.
func New(version string) *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry()}
	m.packetsVec = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ftpalg_packets_total",
		Help: "Control-connection packets that got a verdict, by verdict.",
	}, []string{"verdict"})
	m.rewritesVec = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ftpalg_rewrites_total",
		Help: "Announced addresses rewritten, by message kind.",
	}, []string{"kind"})
	m.pinholesVec = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ftpalg_pinholes_total",
		Help: "Pinhole lifecycle events: opened, then used, expired or ended; failed installs.",
	}, []string{"event"})
	m.refusalsVec = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ftpalg_refusals_total",
		Help: "Announcements or packets ftpalg refused to act on, by reason.",
	}, []string{"reason"})
	m.syncVec = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "ftpalg_pinhole_sync_total",
		Help: "Pinholes synced with the other router of a pair (--sync-peer): sent, send_failed, received, refused, and of those received, used or expired.",
	}, []string{"event"})
	m.tracked = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "ftpalg_tracked_connections",
		Help: "FTP control connections currently tracked.",
	})
	m.open = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "ftpalg_open_pinholes",
		Help: "Pinholes currently open.",
	})
	m.verdict = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "ftpalg_verdict_duration_seconds",
		Help:    "Time from receiving a queued packet to its verdict, pinhole installs included.",
		Buckets: verdictBuckets,
	})
	m.instal = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "ftpalg_pinhole_install_duration_seconds",
		Help:    "Time to install one pinhole's rules in the kernel.",
		Buckets: installBuckets,
	})
	m.labelWrites = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "ftpalg_label_writes_total",
		Help: "Connection states written to conntrack labels (before the packet that changed them was released).",
	})
	m.labelFailures = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "ftpalg_label_write_failures_total",
		Help: "Label writes the kernel refused: a successor could not take those connections over.",
	})
	m.kernelSeqAdj = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "ftpalg_kernel_seqadj_total",
		Help: "Rewritten control connections whose sequence numbers the kernel's seqadj maps (the rest ftpalg maps, with BE_LIBERAL).",
	})
	build := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "ftpalg_build_info",
		Help: "Always 1; the version label says which ftpalg is running.",
	}, []string{"version"})
	build.WithLabelValues(version).Set(1)

	m.reg.MustRegister(m.packetsVec, m.rewritesVec, m.pinholesVec, m.refusalsVec, m.syncVec, m.tracked, m.open,
		m.verdict, m.instal, m.labelWrites, m.labelFailures, m.kernelSeqAdj, build,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	for i, v := range verdicts {
		m.packets[i] = m.packetsVec.WithLabelValues(v)
	}
	for i, v := range kinds {
		m.rewrites[i] = m.rewritesVec.WithLabelValues(v)
	}
	for i, v := range events {
		m.pinholes[i] = m.pinholesVec.WithLabelValues(v)
	}
	for i, v := range reasons {
		m.refusals[i] = m.refusalsVec.WithLabelValues(v)
	}
	for i, v := range syncs {
		m.syncs[i] = m.syncVec.WithLabelValues(v)
	}
	return m
}

// Registry returns the registry, to add collectors or gather in tests.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Packet counts a verdict: VerdictAccept, VerdictAcceptModified or
// VerdictDrop.
func (m *Metrics) Packet(verdict string) {
	if m == nil {
		return
	}
	switch verdict {
	case VerdictAccept:
		m.packets[0].Inc()
	case VerdictAcceptModified:
		m.packets[1].Inc()
	case VerdictDrop:
		m.packets[2].Inc()
	default:
		m.packetsVec.WithLabelValues(other).Inc()
	}
}

// Rewrite counts a rewrite of the given message kind (KindPORT ...).
func (m *Metrics) Rewrite(kind string) {
	if m == nil {
		return
	}
	switch kind {
	case KindPORT:
		m.rewrites[0].Inc()
	case KindEPRT:
		m.rewrites[1].Inc()
	case KindLPRT:
		m.rewrites[2].Inc()
	case Kind227:
		m.rewrites[3].Inc()
	case Kind228:
		m.rewrites[4].Inc()
	case Kind229:
		m.rewrites[5].Inc()
	default:
		m.rewritesVec.WithLabelValues(other).Inc()
	}
}

// Pinhole counts a pinhole event (PinholeOpened ...).
func (m *Metrics) Pinhole(event string) {
	if m == nil {
		return
	}
	switch event {
	case PinholeOpened:
		m.pinholes[0].Inc()
	case PinholeUsed:
		m.pinholes[1].Inc()
	case PinholeExpired:
		m.pinholes[2].Inc()
	case PinholeEnded:
		m.pinholes[3].Inc()
	case PinholeFailed:
		m.pinholes[4].Inc()
	default:
		m.pinholesVec.WithLabelValues(other).Inc()
	}
}

// PinSync counts a pinhole sync event (SyncSent ...).
func (m *Metrics) PinSync(event string) {
	if m == nil {
		return
	}
	for i, e := range syncs {
		if e == event {
			m.syncs[i].Inc()
			return
		}
	}
	m.syncVec.WithLabelValues(other).Inc()
}

// Refusal counts a refusal; reason is one of the Reason constants (see
// ReasonOf), anything else counts as ReasonOther.
func (m *Metrics) Refusal(reason string) {
	if m == nil {
		return
	}
	for i, r := range reasons {
		if r == reason {
			m.refusals[i].Inc()
			return
		}
	}
	m.refusals[len(reasons)-1].Inc()
}

// LabelWrite counts a write of a connection's conntrack labels, failed or
// not.
func (m *Metrics) LabelWrite(failed bool) {
	if m == nil {
		return
	}
	if failed {
		m.labelFailures.Inc()
		return
	}
	m.labelWrites.Inc()
}

// KernelSeqAdj counts a connection handed to the kernel's seqadj.
func (m *Metrics) KernelSeqAdj() {
	if m == nil {
		return
	}
	m.kernelSeqAdj.Inc()
}

// SetTracked sets the number of tracked control connections.
func (m *Metrics) SetTracked(n int) {
	if m != nil {
		m.tracked.Set(float64(n))
	}
}

// SetOpenPinholes sets the number of open pinholes.
func (m *Metrics) SetOpenPinholes(n int) {
	if m != nil {
		m.open.Set(float64(n))
	}
}

// ObserveVerdict records how long a packet took from the queue to its
// verdict.
func (m *Metrics) ObserveVerdict(d time.Duration) {
	if m != nil {
		m.verdict.Observe(d.Seconds())
	}
}

// ObservePinholeInstall records how long one pinhole took to install.
func (m *Metrics) ObservePinholeInstall(d time.Duration) {
	if m != nil {
		m.instal.Observe(d.Seconds())
	}
}

// Handler serves the registry in the Prometheus exposition formats.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{
		ErrorHandling:       promhttp.ContinueOnError,
		MaxRequestsInFlight: 4,
		Timeout:             10 * time.Second,
	})
}

// Serve serves /metrics on the TCP address addr until ctx is done. It
// returns an error at once if addr cannot be listened on, and nil after
// ctx ends.
func (m *Metrics) Serve(ctx context.Context, addr string) error {
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("metrics listener %s: %w", addr, err)
	}
	return m.ServeListener(ctx, ln)
}

// ServeListener serves /metrics on ln until ctx is done, then closes ln.
func (m *Metrics) ServeListener(ctx context.Context, ln net.Listener) error {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", m.Handler())
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		io.WriteString(w, "ftpalg metrics: /metrics\n")
	})
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       60 * time.Second,
		ErrorLog:          log.New(io.Discard, "", 0), // stay quiet: the daemon logs through slog
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	select {
	case err := <-done:
		return fmt.Errorf("serving metrics on %s: %w", ln.Addr(), err)
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if err := srv.Shutdown(sctx); err != nil {
			srv.Close()
		}
		<-done
		return nil
	}
}
