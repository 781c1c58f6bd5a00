package metrics

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/ftpalg/ftpalg/alg"
	"github.com/ftpalg/ftpalg/conntrack"
)

func TestCounters(t *testing.T) {
	m := New("v1.2.3")
	m.Packet(VerdictAccept)
	m.Packet(VerdictAccept)
	m.Packet(VerdictAcceptModified)
	m.Packet(VerdictDrop)
	m.Packet("bogus")
	m.Rewrite(KindPORT)
	m.Rewrite(Kind229)
	m.Rewrite(Kind229)
	m.Rewrite("XPRT")
	m.Pinhole(PinholeOpened)
	m.Pinhole(PinholeOpened)
	m.Pinhole(PinholeUsed)
	m.Pinhole(PinholeExpired)
	m.Pinhole("vanished")
	m.Refusal(ReasonBounce)
	m.Refusal(ReasonOf(fmt.Errorf("PORT 203.0.113.99: %w", conntrack.ErrBounce)))
	m.Refusal(ReasonOf(conntrack.ErrGap))
	m.Refusal("a reason nobody documented")
	m.SetTracked(3)
	m.SetOpenPinholes(2)

	const want = `
# HELP ftpalg_build_info Always 1; the version label says which ftpalg is running.
# TYPE ftpalg_build_info gauge
ftpalg_build_info{version="v1.2.3"} 1
# HELP ftpalg_open_pinholes Pinholes currently open.
# TYPE ftpalg_open_pinholes gauge
ftpalg_open_pinholes 2
# HELP ftpalg_packets_total Control-connection packets that got a verdict, by verdict.
# TYPE ftpalg_packets_total counter
ftpalg_packets_total{verdict="accept"} 2
ftpalg_packets_total{verdict="accept-modified"} 1
ftpalg_packets_total{verdict="drop"} 1
ftpalg_packets_total{verdict="other"} 1
# HELP ftpalg_pinholes_total Pinhole lifecycle events: opened, then used, expired or ended; failed installs.
# TYPE ftpalg_pinholes_total counter
ftpalg_pinholes_total{event="ended"} 0
ftpalg_pinholes_total{event="expired"} 1
ftpalg_pinholes_total{event="failed"} 0
ftpalg_pinholes_total{event="opened"} 2
ftpalg_pinholes_total{event="other"} 1
ftpalg_pinholes_total{event="used"} 1
# HELP ftpalg_refusals_total Announcements or packets ftpalg refused to act on, by reason.
# TYPE ftpalg_refusals_total counter
ftpalg_refusals_total{reason="bounce"} 2
ftpalg_refusals_total{reason="gap"} 1
ftpalg_refusals_total{reason="invalid_ack"} 0
ftpalg_refusals_total{reason="low_port"} 0
ftpalg_refusals_total{reason="no_mapping"} 0
ftpalg_refusals_total{reason="other"} 1
ftpalg_refusals_total{reason="split"} 0
ftpalg_refusals_total{reason="stalled"} 0
ftpalg_refusals_total{reason="table_full"} 0
ftpalg_refusals_total{reason="too_many_edits"} 0
# HELP ftpalg_rewrites_total Announced addresses rewritten, by message kind.
# TYPE ftpalg_rewrites_total counter
ftpalg_rewrites_total{kind="227"} 0
ftpalg_rewrites_total{kind="228"} 0
ftpalg_rewrites_total{kind="229"} 2
ftpalg_rewrites_total{kind="EPRT"} 0
ftpalg_rewrites_total{kind="LPRT"} 0
ftpalg_rewrites_total{kind="PORT"} 1
ftpalg_rewrites_total{kind="other"} 1
# HELP ftpalg_tracked_connections FTP control connections currently tracked.
# TYPE ftpalg_tracked_connections gauge
ftpalg_tracked_connections 3
`
	names := []string{"ftpalg_build_info", "ftpalg_open_pinholes", "ftpalg_packets_total", "ftpalg_pinholes_total",
		"ftpalg_refusals_total", "ftpalg_rewrites_total", "ftpalg_tracked_connections"}
	if err := testutil.GatherAndCompare(m.Registry(), strings.NewReader(want), names...); err != nil {
		t.Error(err)
	}
}

func TestHistograms(t *testing.T) {
	m := New("dev")
	m.ObserveVerdict(800 * time.Nanosecond)
	m.ObserveVerdict(3 * time.Millisecond)
	m.ObserveVerdict(time.Second) // beyond the last bucket: +Inf only
	m.ObservePinholeInstall(2600 * time.Microsecond)

	const want = `
# HELP ftpalg_pinhole_install_duration_seconds Time to install one pinhole's rules in the kernel.
# TYPE ftpalg_pinhole_install_duration_seconds histogram
ftpalg_pinhole_install_duration_seconds_bucket{le="0.0001"} 0
ftpalg_pinhole_install_duration_seconds_bucket{le="0.00025"} 0
ftpalg_pinhole_install_duration_seconds_bucket{le="0.0005"} 0
ftpalg_pinhole_install_duration_seconds_bucket{le="0.001"} 0
ftpalg_pinhole_install_duration_seconds_bucket{le="0.0025"} 0
ftpalg_pinhole_install_duration_seconds_bucket{le="0.005"} 1
ftpalg_pinhole_install_duration_seconds_bucket{le="0.01"} 1
ftpalg_pinhole_install_duration_seconds_bucket{le="0.025"} 1
ftpalg_pinhole_install_duration_seconds_bucket{le="0.05"} 1
ftpalg_pinhole_install_duration_seconds_bucket{le="0.1"} 1
ftpalg_pinhole_install_duration_seconds_bucket{le="0.25"} 1
ftpalg_pinhole_install_duration_seconds_bucket{le="0.5"} 1
ftpalg_pinhole_install_duration_seconds_bucket{le="1"} 1
ftpalg_pinhole_install_duration_seconds_bucket{le="+Inf"} 1
ftpalg_pinhole_install_duration_seconds_sum 0.0026
ftpalg_pinhole_install_duration_seconds_count 1
# HELP ftpalg_verdict_duration_seconds Time from receiving a queued packet to its verdict, pinhole installs included.
# TYPE ftpalg_verdict_duration_seconds histogram
ftpalg_verdict_duration_seconds_bucket{le="1e-06"} 1
ftpalg_verdict_duration_seconds_bucket{le="2.5e-06"} 1
ftpalg_verdict_duration_seconds_bucket{le="5e-06"} 1
ftpalg_verdict_duration_seconds_bucket{le="1e-05"} 1
ftpalg_verdict_duration_seconds_bucket{le="2.5e-05"} 1
ftpalg_verdict_duration_seconds_bucket{le="5e-05"} 1
ftpalg_verdict_duration_seconds_bucket{le="0.0001"} 1
ftpalg_verdict_duration_seconds_bucket{le="0.00025"} 1
ftpalg_verdict_duration_seconds_bucket{le="0.0005"} 1
ftpalg_verdict_duration_seconds_bucket{le="0.001"} 1
ftpalg_verdict_duration_seconds_bucket{le="0.0025"} 1
ftpalg_verdict_duration_seconds_bucket{le="0.005"} 2
ftpalg_verdict_duration_seconds_bucket{le="0.01"} 2
ftpalg_verdict_duration_seconds_bucket{le="0.025"} 2
ftpalg_verdict_duration_seconds_bucket{le="0.05"} 2
ftpalg_verdict_duration_seconds_bucket{le="0.1"} 2
ftpalg_verdict_duration_seconds_bucket{le="+Inf"} 3
ftpalg_verdict_duration_seconds_sum 1.0030008
ftpalg_verdict_duration_seconds_count 3
`
	if err := testutil.GatherAndCompare(m.Registry(), strings.NewReader(want),
		"ftpalg_verdict_duration_seconds", "ftpalg_pinhole_install_duration_seconds"); err != nil {
		t.Error(err)
	}
}

// The label constants are the strings the engine's types print, so the
// daemon can pass v.String() and k.String() straight through.
func TestLabelsMatchEngine(t *testing.T) {
	for v, want := range map[conntrack.Verdict]string{
		conntrack.Accept: VerdictAccept, conntrack.AcceptModified: VerdictAcceptModified, conntrack.Drop: VerdictDrop,
	} {
		if v.String() != want {
			t.Errorf("verdict %d prints %q, label is %q", v, v.String(), want)
		}
	}
	for k, want := range map[alg.Kind]string{
		alg.KindPORT: KindPORT, alg.KindEPRT: KindEPRT, alg.KindLPRT: KindLPRT,
		alg.Kind227: Kind227, alg.Kind228: Kind228, alg.Kind229: Kind229,
	} {
		if k.String() != want {
			t.Errorf("kind %d prints %q, label is %q", k, k.String(), want)
		}
	}
}

func TestReasonOf(t *testing.T) {
	for _, r := range refusalErrors {
		if got := ReasonOf(fmt.Errorf("wrapped: %w", r.err)); got != r.reason {
			t.Errorf("ReasonOf(%v) = %q, want %q", r.err, got, r.reason)
		}
	}
	for _, err := range []error{nil, errors.New("something else"), conntrack.ErrMalformed} {
		if got := ReasonOf(err); got != ReasonOther {
			t.Errorf("ReasonOf(%v) = %q, want other", err, got)
		}
	}
}

// promlint's naming rules (units, _total suffixes, help text).
func TestLint(t *testing.T) {
	m := New("dev")
	problems, err := testutil.GatherAndLint(m.Registry())
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		if strings.HasPrefix(p.Metric, "ftpalg_") {
			t.Errorf("%s: %s", p.Metric, p.Text)
		}
	}
}

// The recording methods must not allocate: they run once per packet.
func TestNoAllocs(t *testing.T) {
	m := New("dev")
	calls := map[string]func(){
		"Packet":                func() { m.Packet(VerdictAcceptModified) },
		"Rewrite":               func() { m.Rewrite(Kind227) },
		"Pinhole":               func() { m.Pinhole(PinholeUsed) },
		"Refusal":               func() { m.Refusal(ReasonStalled) },
		"SetTracked":            func() { m.SetTracked(5) },
		"SetOpenPinholes":       func() { m.SetOpenPinholes(5) },
		"ObserveVerdict":        func() { m.ObserveVerdict(3 * time.Microsecond) },
		"ObservePinholeInstall": func() { m.ObservePinholeInstall(3 * time.Millisecond) },
	}
	for name, f := range calls {
		if n := testing.AllocsPerRun(1000, f); n != 0 {
			t.Errorf("%s: %.1f allocs per call", name, n)
		}
	}
}

// A nil *Metrics (metrics off) records nothing and does not panic.
func TestNil(t *testing.T) {
	var m *Metrics
	m.Packet(VerdictDrop)
	m.Rewrite(KindPORT)
	m.Pinhole(PinholeOpened)
	m.Refusal(ReasonGap)
	m.SetTracked(1)
	m.SetOpenPinholes(1)
	m.ObserveVerdict(time.Millisecond)
	m.ObservePinholeInstall(time.Millisecond)
}

func BenchmarkPacket(b *testing.B) {
	m := New("dev")
	b.ReportAllocs()
	for b.Loop() {
		m.Packet(VerdictAccept)
		m.ObserveVerdict(2 * time.Microsecond)
	}
}

// A real scrape over HTTP. The listener is a unix socket: the tests send no
// traffic to any IP address.
func TestScrape(t *testing.T) {
	m := New("v9")
	m.Rewrite(KindEPRT)
	ln, err := net.Listen("unix", filepath.Join(t.TempDir(), "metrics.sock"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.ServeListener(ctx, ln) }()

	client := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", ln.Addr().String())
		},
	}}
	resp, err := client.Get("http://router/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") {
		t.Fatalf("scrape: %s, %s", resp.Status, resp.Header.Get("Content-Type"))
	}
	want := map[string]bool{
		`ftpalg_rewrites_total{kind="EPRT"} 1`:          false,
		`ftpalg_build_info{version="v9"} 1`:             false,
		`ftpalg_verdict_duration_seconds_count 0`:       false,
		`ftpalg_packets_total{verdict="drop"} 0`:        false,
		`ftpalg_pinhole_install_duration_seconds_sum 0`: false,
		"go_goroutines":              false,
		"process_start_time_seconds": false,
	}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		for w := range want {
			if strings.HasPrefix(sc.Text(), w) {
				want[w] = true
			}
		}
	}
	for w, seen := range want {
		if !seen {
			t.Errorf("scrape lacks %s", w)
		}
	}
	for _, path := range []string{"/", "/nope"} {
		r, err := client.Get("http://router" + path)
		if err != nil {
			t.Fatal(err)
		}
		r.Body.Close()
		if want := map[string]int{"/": 200, "/nope": 404}[path]; r.StatusCode != want {
			t.Errorf("GET %s: %d, want %d", path, r.StatusCode, want)
		}
	}
	client.CloseIdleConnections()

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("ServeListener: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("ServeListener did not return after cancel")
	}
}

func TestServeBadAddress(t *testing.T) {
	m := New("dev")
	for _, addr := range []string{"192.0.2.1:99999", "not an address"} {
		if err := m.Serve(context.Background(), addr); err == nil || !strings.Contains(err.Error(), "metrics listener") {
			t.Errorf("Serve(%q): %v", addr, err)
		}
	}
}

func TestPinSyncCounters(t *testing.T) {
	m := New("dev")
	m.PinSync(SyncSent)
	m.PinSync(SyncSent)
	m.PinSync(SyncReceived)
	m.PinSync(SyncRefused)
	m.PinSync(SyncUsed)
	m.PinSync("lost in the mail")
	var none *Metrics
	none.PinSync(SyncSent) // metrics off

	const want = `
# HELP ftpalg_pinhole_sync_total Pinholes synced with the other router of a pair (--sync-peer): sent, send_failed, received, refused, and of those received, used or expired.
# TYPE ftpalg_pinhole_sync_total counter
ftpalg_pinhole_sync_total{event="expired"} 0
ftpalg_pinhole_sync_total{event="other"} 1
ftpalg_pinhole_sync_total{event="received"} 1
ftpalg_pinhole_sync_total{event="refused"} 1
ftpalg_pinhole_sync_total{event="send_failed"} 0
ftpalg_pinhole_sync_total{event="sent"} 2
ftpalg_pinhole_sync_total{event="used"} 1
`
	if err := testutil.GatherAndCompare(m.Registry(), strings.NewReader(want), "ftpalg_pinhole_sync_total"); err != nil {
		t.Error(err)
	}
}
