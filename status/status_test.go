package status

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"
)

var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

func sample() Snapshot {
	return Snapshot{
		Version: "v1.2.3",
		Started: t0.Add(-3*time.Hour - 2*time.Minute),
		Taken:   t0,
		Conns: []Conn{
			{Session: 7, Client: netip.MustParseAddrPort("[2001:db8::10]:50000"), Server: netip.MustParseAddrPort("[2001:db8:1::20]:21"), Path: "local-server",
				Age: 1500 * time.Millisecond, Rewrites: 0},
			{Session: 3, Client: netip.MustParseAddrPort("192.0.2.10:44842"), Server: netip.MustParseAddrPort("198.51.100.20:21"), Path: "forward",
				Age: 4*time.Minute + 5*time.Second, Rewrites: 12, OffsetC2S: 36, OffsetS2C: -2, State: "ct"},
		},
		Pinholes: []Pinhole{
			{Session: 3, Path: "forward", Peer: netip.MustParseAddr("198.51.100.20"), Public: netip.MustParseAddrPort("198.51.100.1:40379"),
				Target: netip.MustParseAddrPort("192.0.2.10:40379"), Opened: t0.Add(-2 * time.Second), Expires: t0.Add(28 * time.Second)},
			{Session: 7, Path: "local-server", Peer: netip.MustParseAddr("2001:db8::10"), Public: netip.MustParseAddrPort("[2001:db8:1::20]:30001"),
				Target: netip.MustParseAddrPort("[2001:db8:1::20]:30001"), Opened: t0.Add(-200 * time.Millisecond), Expires: t0.Add(-10 * time.Millisecond)},
		},
		Counters: map[string]uint64{"packets": 1234, "rewrites": 12, "pinholes_opened": 5, "refusals": 0},
	}
}

func TestRender(t *testing.T) {
	var b bytes.Buffer
	if err := Render(&b, sample()); err != nil {
		t.Fatal(err)
	}
	const want = `ftpalg v1.2.3, up 3h02m

Control connections: 2
SESSION  PATH          CLIENT                SERVER               AGE    REWRITES  OFFSET C>S  OFFSET S>C  STATE
3        forward       192.0.2.10:44842      198.51.100.20:21     4m05s  12        +36         -2          ct
7        local-server  [2001:db8::10]:50000  [2001:db8:1::20]:21  1.5s   0         +0          +0          -

Open pinholes: 2
SESSION  PATH          PEER           PUBLIC                  TARGET            OPEN FOR  CLOSES IN
7        local-server  2001:db8::10   [2001:db8:1::20]:30001  -                 200ms     due
3        forward       198.51.100.20  198.51.100.1:40379      192.0.2.10:40379  2s        28s

Counters:
packets          1234
pinholes_opened  5
refusals         0
rewrites         12
`
	if got := b.String(); got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}

	b.Reset()
	if err := Render(&b, Snapshot{}); err != nil {
		t.Fatal(err)
	}
	if got := b.String(); !strings.Contains(got, "Control connections: 0\n\nOpen pinholes: 0\n\nCounters:\n") || !strings.HasPrefix(got, "ftpalg -, up ") {
		t.Errorf("empty snapshot:\n%s", got)
	}
}

type failWriter struct{}

func (failWriter) Write([]byte) (int, error) { return 0, errors.New("disk full") }

func TestRenderWriteError(t *testing.T) {
	if err := Render(failWriter{}, sample()); err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Errorf("got %v", err)
	}
}

func TestRoundAge(t *testing.T) {
	tests := []struct {
		d    time.Duration
		want string
	}{
		{-time.Second, "0s"},
		{0, "0s"},
		{850 * time.Millisecond, "850ms"},
		{12345 * time.Millisecond, "12.3s"},
		{4*time.Minute + 5*time.Second, "4m05s"},
		{3*time.Hour + 2*time.Minute + 59*time.Second, "3h02m"},
		{47 * time.Hour, "47h00m"},
		{52 * time.Hour, "2d04h"},
	}
	for _, tt := range tests {
		if got := roundAge(tt.d); got != tt.want {
			t.Errorf("roundAge(%v) = %q, want %q", tt.d, got, tt.want)
		}
	}
}

// serve runs Serve on a socket in a fresh directory and returns its path
// and a function that stops it and returns Serve's result.
func serve(t *testing.T, snap func() Snapshot) (string, func() error) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "run", "status.sock")
	l, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.Serve(ctx, snap) }()
	var once sync.Once
	var serr error
	stop := func() error {
		once.Do(func() { cancel(); serr = <-done })
		return serr
	}
	t.Cleanup(func() { stop() })
	return path, stop
}

func TestServeFetch(t *testing.T) {
	want := sample()
	path, stop := serve(t, func() Snapshot { return want })

	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, want a socket with 0600", fi.Mode())
	}
	if _, err := os.Lstat(path + ".new"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("temporary name left behind: %v", err)
	}

	// Concurrent clients all get the same snapshot.
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got, err := Fetch(context.Background(), path)
			if err != nil {
				errs <- err
				return
			}
			if !reflect.DeepEqual(got, want) {
				errs <- errors.New("snapshot changed in transit")
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}

	if err := stop(); err != nil {
		t.Fatalf("Serve: %v", err)
	}
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket not removed at exit: %v", err)
	}
	if _, err := Fetch(context.Background(), path); !errors.Is(err, ErrNotRunning) {
		t.Errorf("Fetch after stop: %v, want ErrNotRunning", err)
	}
}

func TestJSONShape(t *testing.T) {
	// `ftpalg status --json` prints this: the field names are an interface.
	b, err := json.Marshal(sample())
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	conn := m["conns"].([]any)[1].(map[string]any)
	pin := m["pinholes"].([]any)[0].(map[string]any)
	checks := []struct {
		got, want any
	}{
		{m["version"], "v1.2.3"},
		{m["taken"], "2025-03-01T12:00:00Z"},
		{conn["client"], "192.0.2.10:44842"},
		{conn["age_ns"], float64(245e9)},
		{conn["offset_c2s"], float64(36)},
		{conn["offset_s2c"], float64(-2)},
		{pin["peer"], "198.51.100.20"},
		{pin["target"], "192.0.2.10:40379"},
		{pin["expires"], "2025-03-01T12:00:28Z"},
		{m["counters"].(map[string]any)["packets"], float64(1234)},
	}
	for i, c := range checks {
		if c.got != c.want {
			t.Errorf("check %d: %v, want %v", i, c.got, c.want)
		}
	}
}

func TestStaleSocketReplaced(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "status.sock")
	// A crashed daemon leaves its socket file with nobody accepting.
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
	if _, err := os.Lstat(path); err != nil {
		t.Fatal("no stale socket to test with")
	}
	l, err := Listen(path)
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	defer l.Close()
	if _, err := net.Dial("unix", path); err != nil {
		t.Errorf("new socket does not accept: %v", err)
	}
}

func TestLiveSocketKept(t *testing.T) {
	path := filepath.Join(t.TempDir(), "status.sock")
	first, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	defer first.Close()
	if _, err := Listen(path); !errors.Is(err, ErrInUse) {
		t.Fatalf("second Listen: %v, want ErrInUse", err)
	}
	if _, err := net.Dial("unix", path); err != nil {
		t.Errorf("first socket broken by the second Listen: %v", err)
	}
}

func TestNotASocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "status.sock")
	if err := os.WriteFile(path, []byte("precious"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(path); !errors.Is(err, ErrNotSocket) {
		t.Fatalf("Listen over a file: %v, want ErrNotSocket", err)
	}
	if b, err := os.ReadFile(path); err != nil || string(b) != "precious" {
		t.Errorf("file touched: %q %v", b, err)
	}
}

func TestPathTooLong(t *testing.T) {
	path := "/" + strings.Repeat("x", 110)
	if _, err := Listen(path); !errors.Is(err, ErrPathLength) {
		t.Errorf("got %v, want ErrPathLength", err)
	}
}

// A newer daemon that took over the path keeps its socket when the older
// one exits.
func TestCloseKeepsReplacement(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "status.sock")
	old, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	// Simulate the replacement: the path now names another socket.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	repl, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	defer repl.Close()
	if err := old.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := net.Dial("unix", path); err != nil {
		t.Errorf("replacement socket removed by the old daemon: %v", err)
	}
}

func TestFetchBadResponses(t *testing.T) {
	tests := []struct {
		name    string
		handler http.HandlerFunc
	}{
		{"server error", func(w http.ResponseWriter, r *http.Request) { http.Error(w, "boom", http.StatusInternalServerError) }},
		{"not json", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("<html>")) }},
		{"wrong types", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte(`{"conns": 5}`)) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "s.sock")
			ln, err := net.Listen("unix", path)
			if err != nil {
				t.Fatal(err)
			}
			srv := &http.Server{Handler: tt.handler}
			go srv.Serve(ln)
			defer srv.Close()
			if _, err := Fetch(context.Background(), path); !errors.Is(err, ErrResponse) {
				t.Errorf("got %v, want ErrResponse", err)
			}
		})
	}
}

func TestFetchHonoursContext(t *testing.T) {
	block := make(chan struct{})
	path, _ := serve(t, func() Snapshot { <-block; return Snapshot{} })
	defer close(block)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := Fetch(ctx, path); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("got %v, want a deadline error", err)
	}
}

func TestHandlerMethods(t *testing.T) {
	h := Handler(sample)
	tests := []struct {
		method, path string
		code         int
	}{
		{"GET", SnapshotPath, 200},
		{"HEAD", SnapshotPath, 200},
		{"POST", SnapshotPath, 405},
		{"GET", "/", 404},
	}
	for _, tt := range tests {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(tt.method, tt.path, nil))
		if rec.Code != tt.code {
			t.Errorf("%s %s: %d, want %d", tt.method, tt.path, rec.Code, tt.code)
		}
	}
}
