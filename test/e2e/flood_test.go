//go:build linux

package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/test/rig"
)

// TestFlood holds 5,000 logged-in control connections open through ftpalg
// (to a minimal FTP server on port 2121) while normal active-mode sessions
// run: the normal sessions must complete, ftpalg must track every
// connection, its memory must stay bounded, and its counters must show it.
func TestFlood(t *testing.T) {
	if testing.Short() {
		t.Skip("5,000 connections take a while; not in -short mode")
	}
	const n = 5000
	// Each connection holds a descriptor at both ends in this process.
	// Root may raise its own hard limit; a limit that stays too low is a
	// machine this test cannot judge ftpalg on, which must not pass as a
	// skip.
	need := uint64(2*n + 512)
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	if lim.Cur < need {
		lim.Cur, lim.Max = need, max(lim.Max, need)
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
			t.Fatalf("needs %d file descriptors, the limit is %d and cannot be raised: %v", need, lim.Cur, err)
		}
	}
	r := rig.New(t, rig.ClientNAT, rig.WithPrefix(nsPrefix))
	s, err := r.StartVsftpd(rig.VsftpdOptions{})
	if err != nil {
		t.Fatal(err)
	}
	idle := net.JoinHostPort(r.ServerHostAddr().String(), "2121")
	l, err := r.Listen(rig.Server, "tcp", idle)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	var conns sync.Map
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			conns.Store(c, true)
			go func() {
				fmt.Fprint(c, "220 idle\r\n")
				br := bufio.NewReader(c)
				for {
					line, err := br.ReadString('\n')
					if err != nil {
						return
					}
					switch strings.ToUpper(strings.Fields(line + " x")[0]) {
					case "USER":
						fmt.Fprint(c, "331 pw\r\n")
					case "PASS":
						fmt.Fprint(c, "230 ok\r\n")
					default:
						fmt.Fprint(c, "200 ok\r\n")
					}
				}
			}()
		}
	}()
	t.Cleanup(func() {
		conns.Range(func(k, _ any) bool { k.(net.Conn).Close(); return true })
	})
	g := startFtpalg(t, r, "--control-ports", "21,2121")
	rss := func() int {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", g.p.Pid()))
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
				kb, _ := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
				return kb
			}
		}
		return 0
	}
	before := rss()
	if _, err := s.CreateFile("1m.bin", 1<<20); err != nil {
		t.Fatal(err)
	}

	// The flood, 64 dialers at a time, while normal sessions run.
	normal := make(chan error, 1)
	go func() {
		for range 5 {
			if _, err := r.CurlGet(rig.PORT, r.URL("1m.bin"), filepath.Join(t.TempDir(), "1m.bin")); err != nil {
				normal <- err
				return
			}
		}
		normal <- nil
	}()
	start := time.Now()
	var mu sync.Mutex
	var clients []net.Conn
	var failed int
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64)
	for range n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			c, err := r.Dial(ctx, rig.Client, "tcp", idle)
			if err == nil {
				c.SetDeadline(time.Now().Add(30 * time.Second))
				br := bufio.NewReader(c)
				for _, cmd := range []string{"", "USER a\r\n", "PASS b\r\n"} {
					if cmd != "" {
						if _, err = c.Write([]byte(cmd)); err != nil {
							break
						}
					}
					if _, err = br.ReadString('\n'); err != nil {
						break
					}
				}
			}
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				failed++
				if c != nil {
					c.Close()
				}
				return
			}
			clients = append(clients, c)
		})
	}
	wg.Wait()
	t.Cleanup(func() {
		for _, c := range clients {
			c.Close()
		}
	})
	t.Logf("%d connections logged in through ftpalg in %v (%d failed)", len(clients), time.Since(start).Round(time.Millisecond), failed)
	if failed != 0 {
		t.Errorf("%d of %d flood connections failed", failed, n)
	}
	if err := <-normal; err != nil {
		t.Fatalf("a normal session failed during the flood: %v", err)
	}
	out, err := r.Run(t.Context(), rig.Router, ftpalgBin, "status", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var snap struct {
		Conns    []json.RawMessage
		Counters map[string]uint64
	}
	if err := json.Unmarshal([]byte(out), &snap); err != nil {
		t.Fatal(err)
	}
	after := rss()
	t.Logf("ftpalg tracks %d control connections; resident memory %d kB -> %d kB (%.0f bytes per connection); queue drops %d",
		len(snap.Conns), before, after, float64(after-before)*1024/float64(len(snap.Conns)), snap.Counters["queue_full_drops"])
	if len(snap.Conns) < n {
		t.Errorf("ftpalg tracks %d connections, want at least %d", len(snap.Conns), n)
	}
	if after-before > 64<<10 {
		t.Errorf("ftpalg grew by %d kB for %d connections", after-before, n)
	}
	if n, err := r.InvalidDrops(); err != nil || n != 0 {
		t.Errorf("router dropped %d INVALID packets (%v)", n, err)
	}
	g.stop()
}
