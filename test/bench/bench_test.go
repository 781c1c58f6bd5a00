package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"
)

func TestPercentile(t *testing.T) {
	tests := []struct {
		name    string
		samples []float64
		p       float64
		want    float64
	}{
		{"empty", nil, 50, 0},
		{"one", []float64{7}, 99, 7},
		{"median odd", []float64{3, 1, 2}, 50, 2},
		{"median even is the lower middle", []float64{4, 1, 3, 2}, 50, 2},
		{"p99 of 100 is the 99th", seq(100), 99, 99},
		{"p99 of 2000 is the 1980th", seq(2000), 99, 1980},
		{"p100 is the max", []float64{5, 9, 1}, 100, 9},
		{"p0 is nothing", []float64{5, 9, 1}, 0, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := percentile(tc.samples, tc.p); got != tc.want {
				t.Errorf("percentile(%v, %v) = %v, want %v", tc.samples, tc.p, got, tc.want)
			}
		})
	}
	s := []float64{3, 1, 2}
	percentile(s, 50)
	if s[0] != 3 || s[1] != 1 {
		t.Errorf("percentile sorted its input: %v", s)
	}
}

func seq(n int) []float64 {
	s := make([]float64, n)
	for i := range s {
		s[n-1-i] = float64(i + 1) // reversed, so sorting matters
	}
	return s
}

func TestSpread(t *testing.T) {
	if got := spread([]float64{90, 100, 110}); got < 0.199 || got > 0.201 {
		t.Errorf("spread = %v, want 0.2", got)
	}
	if got := spread([]float64{5}); got != 0 {
		t.Errorf("spread of one = %v, want 0", got)
	}
}

func TestReadReply(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		code    int
		text    string
		wantErr error
	}{
		{"single", "200 NOOP ok.\r\n", 200, "200 NOOP ok.", nil},
		{"bare code", "200\r\n", 200, "200", nil},
		{"LF only", "221 bye\n", 221, "221 bye", nil},
		{"multi-line", "211-Features:\r\n EPRT\r\n211-not the end\r\n211 End\r\n", 211,
			"211-Features:\n EPRT\n211-not the end\n211 End", nil},
		{"garbage", "hello\r\n", 0, "", ErrReply},
		{"code out of range", "999 no\r\n", 0, "", ErrReply},
		{"bad separator", "200x\r\n", 0, "", ErrReply},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rep, err := readReply(bufio.NewReader(strings.NewReader(tc.in)))
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
			if err == nil && (rep.code != tc.code || rep.text != tc.text) {
				t.Errorf("got %d %q, want %d %q", rep.code, rep.text, tc.code, tc.text)
			}
		})
	}
	for _, in := range []string{"", "200 no newline", "211-start\r\n"} {
		if _, err := readReply(bufio.NewReader(strings.NewReader(in))); err == nil {
			t.Errorf("readReply(%q) succeeded on a truncated reply", in)
		}
	}
}

func TestParse227(t *testing.T) {
	tests := []struct {
		in   string
		want string // "" for an error
	}{
		{"227 Entering Passive Mode (198,51,100,20,195,80).", "198.51.100.20:50000"},
		{"227 Entering Passive Mode (192,0,2,1,0,21)", "192.0.2.1:21"},
		{"227 =198,51,100,20,4,1", "198.51.100.20:1025"},
		{"227 Entering Passive Mode (198,51,100,20,256,1).", ""},
		{"227 Entering Passive Mode (198,51,100,20,4).", ""},
		{"227 Entering Passive Mode", ""},
		{"227", ""},
	}
	for _, tc := range tests {
		got, err := parse227(tc.in)
		switch {
		case tc.want == "" && !errors.Is(err, ErrReply):
			t.Errorf("parse227(%q) = %v, %v; want ErrReply", tc.in, got, err)
		case tc.want != "" && (err != nil || got.String() != tc.want):
			t.Errorf("parse227(%q) = %v, %v; want %s", tc.in, got, err, tc.want)
		}
	}
}

func TestPortArg(t *testing.T) {
	got, err := portArg(netip.MustParseAddrPort("192.0.2.10:50000"))
	if err != nil || got != "192,0,2,10,195,80" {
		t.Errorf("portArg = %q, %v", got, err)
	}
	if _, err := portArg(netip.MustParseAddrPort("[2001:db8::1]:21")); err == nil {
		t.Error("portArg accepted an IPv6 address")
	}
}

// loopback opens sockets on 127.0.0.1 for the client tests.
type loopback struct{}

func (loopback) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, network, address)
}

func (loopback) Listen(network, address string) (net.Listener, error) {
	return net.Listen(network, address)
}

// TestClientIdleServer runs the benchmark's client against its idle
// server over real loopback sockets: the login the memory workload does,
// NOOP, an unknown command and QUIT; and Close ends live sessions.
func TestClientIdleServer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := serveIdle(ln)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	server := netip.MustParseAddrPort(ln.Addr().String())
	c, err := dial(ctx, loopback{}, server, netip.MustParseAddr("127.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.login(); err != nil {
		t.Fatalf("login: %v", err)
	}
	if _, err := c.cmd("NOOP", 200); err != nil {
		t.Error(err)
	}
	if _, err := c.cmd("NOOP", 250); !errors.Is(err, ErrReply) {
		t.Errorf("NOOP expecting 250: err = %v, want ErrReply", err)
	}
	if _, err := c.cmd("SITE HELP", 502); err != nil {
		t.Error(err)
	}
	if err := c.quit(); err != nil {
		t.Errorf("quit: %v", err)
	}

	idle, err := dial(ctx, loopback{}, server, netip.MustParseAddr("127.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	if err := idle.login(); err != nil {
		t.Fatal(err)
	}
	if err := srv.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if err := srv.Err(); err != nil {
		t.Errorf("Err after Close = %v, want nil", err)
	}
	if _, err := idle.expect(200); err == nil {
		t.Error("session still answering after Close")
	}
}

func TestAlgLog(t *testing.T) {
	var l algLog
	lines := []string{
		`{"time":"t","level":"INFO","msg":"ftpalg running","queue":21}`,
		`not json at all`,
		`{"level":"INFO","msg":"pinhole opened","session":1,"took":3000000}`,
		`{"level":"WARN","msg":"refused","reason":"acknowledges data that was never sent: ack 12, sent up to 10"}`,
		`{"level":"WARN","msg":"refused","reason":"acknowledges data that was never sent: ack 7702, sent up to 7700"}`,
		`{"level":"ERROR","msg":"opening pinhole","err":"exit status 4"}`,
		`{"level":"INFO","msg":"pinhole opened","session":2,"took":1500000}`,
	}
	// Split writes across line boundaries, as a pipe may deliver them.
	all := strings.Join(lines, "\n") + "\n"
	for len(all) > 0 {
		n := min(len(all), 37)
		if _, err := l.Write([]byte(all[:n])); err != nil {
			t.Fatal(err)
		}
		all = all[n:]
	}
	if !l.Running() {
		t.Error("not running")
	}
	if got := l.Since(0); len(got) != 2 || got[0] != 3*time.Millisecond || got[1] != 1500*time.Microsecond {
		t.Errorf("latencies = %v", got)
	}
	if got := l.Since(1); len(got) != 1 || l.Since(5) != nil {
		t.Errorf("Since(1) = %v, Since(5) = %v", got, l.Since(5))
	}
	if n, last := l.Errors(); n != 1 || !strings.Contains(last, "opening pinhole") {
		t.Errorf("errors = %d %q", n, last)
	}
	w := l.Warnings()
	if len(w) != 1 || w["refused : acknowledges data that was never sent: ack N, sent up to N"].Count != 2 {
		t.Errorf("warnings = %v", w)
	}
	if l.Stopped() != nil {
		t.Error("stopped before the stopping record")
	}
	l.Write([]byte(`{"level":"INFO","msg":"ftpalg stopping","packets":12}` + "\n"))
	if st := l.Stopped(); st == nil || st["packets"] != float64(12) {
		t.Errorf("stopped = %v", st)
	}
}

func TestParseBackends(t *testing.T) {
	tests := []struct {
		name, help string
		want       []string
	}{
		{"no flag", "  -pinhole-timeout duration\n    \tclose a pinhole\n", nil},
		{"two named", "  -pinholes name\n    \thow pinholes are installed: iptables (exec) or\n    \tnetlink (nf_tables) (default \"iptables\")\n  -pinhole-timeout duration\n    \tnetlink nothing\n",
			[]string{"iptables", "netlink"}},
		{"unnamed values", "  -pinholes string\n    \tpinhole mechanism\n", []string{""}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := parseBackends(tc.help)
			if strings.Join(got, ",") != strings.Join(tc.want, ",") || (got == nil) != (tc.want == nil) {
				t.Errorf("parseBackends = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestJudge(t *testing.T) {
	cell := func(v float64) *Cell { return &Cell{Value: v, Reps: []float64{v}} }
	r := &Report{
		Gateways: []string{gwPlain, gwKernel, gwFtpalg},
		Rows: []*Row{
			{ID: "bulk-median", Higher: true, Cells: map[string]*Cell{gwPlain: cell(1000), gwKernel: cell(1000), gwFtpalg: cell(980)}},
			{ID: "noop-p50", Cells: map[string]*Cell{gwPlain: cell(10), gwKernel: cell(10), gwFtpalg: cell(16)}},
			{ID: "sessions-port", Higher: true, Cells: map[string]*Cell{gwPlain: {NA: "needs an ALG"}, gwKernel: cell(100), gwFtpalg: cell(95)}},
			{ID: "crossings-sessions-pasv", Cells: map[string]*Cell{gwPlain: {NA: "no queue"}, gwFtpalg: cell(13)}},
			{ID: "segments-sessions-pasv", Cells: map[string]*Cell{gwPlain: cell(12), gwFtpalg: cell(12)}},
			{ID: "crossings-sessions-port", Cells: map[string]*Cell{gwFtpalg: cell(11)}},
			{ID: "segments-sessions-port", Cells: map[string]*Cell{gwFtpalg: cell(12)}},
			{ID: "long-port", Cells: map[string]*Cell{gwPlain: {NA: "needs an ALG"}, gwKernel: cell(1), gwFtpalg: {Err: "boom"}}},
			{ID: "memory", Cells: map[string]*Cell{gwFtpalg: cell(1100)}},
		},
	}
	r.judge()
	want := map[string]struct {
		met     bool
		missing bool
	}{
		"bulk-median":   {met: true},  // 0.98 ≥ 0.97
		"noop-p50":      {met: false}, // 1.6 > 1.25
		"sessions-port": {met: true},  // 0.95 ≥ 0.95
		// ftpalg's crossings against its own segment count
		"crossings-sessions-pasv": {met: false}, // 13 > 12
		"crossings-sessions-port": {met: true},  // 11 ≤ 12
		"long-port":               {missing: true},
		"memory":                  {met: false}, // 1100 > 1024
		"noop-p99":                {missing: true},
	}
	seen := 0
	for _, v := range r.Targets {
		w, ok := want[v.Row]
		if !ok {
			continue
		}
		seen++
		if v.Met != w.met || (v.Missing != "") != w.missing {
			t.Errorf("%s: met %v missing %q, want met %v missing %v", v.Row, v.Met, v.Missing, w.met, w.missing)
		}
	}
	if seen != len(want) {
		t.Errorf("judged %d of the %d rows checked", seen, len(want))
	}
	var b strings.Builder
	if err := r.WriteText(&b); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"N/A", "FAIL", "MISSED", "met", "0.98"} {
		if !strings.Contains(b.String(), s) {
			t.Errorf("table lacks %q:\n%s", s, b.String())
		}
	}
}

func TestParseQueued(t *testing.T) {
	n, err := parseQueued("   21 2727913850     0 2 65531     0     0   110045  1\n")
	if err != nil || n != 110045 {
		t.Errorf("parseQueued = %d, %v; want 110045", n, err)
	}
	// --queues 2: two bound queues, each packet in one of them.
	n, err = parseQueued("   21 2727913850     0 2 65531     0     0   110045  1\n   22 3727913850     0 2 65531     0     0       55  1\n")
	if err != nil || n != 110100 {
		t.Errorf("parseQueued of two queues = %d, %v; want 110100", n, err)
	}
	for _, bad := range []string{"", "\n", "21 1 0 2", "21 1 0 2 65531 0 0 x 1", "21 1 0 2 65531 0 0 5 1\n22 1 0 2"} {
		if _, err := parseQueued(bad); err == nil {
			t.Errorf("parseQueued(%q) succeeded", bad)
		}
	}
}

// TestUnitNice: the bench runs ftpalg at the nice value its systemd unit
// gives it.
func TestUnitNice(t *testing.T) {
	b, err := os.ReadFile("../../deploy/ftpalg.service")
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("\nNice=%d\n", unitNice)
	if !strings.Contains(string(b), want) {
		t.Fatalf("deploy/ftpalg.service has no %q line: keep unitNice and the unit's Nice= equal", strings.TrimSpace(want))
	}
}
