//go:build linux

package e2e

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/alg"
	"github.com/ftpalg/ftpalg/conntrack"
	"github.com/ftpalg/ftpalg/test/rig"
)

// TestRestartMidSession restarts ftpalg while 20 active-mode sessions behind
// NAT are transferring: each session's PORT was rewritten (one byte
// longer: 192,0,2,10 -> 198,51,100,1 plus the port), so its sequence
// numbers are offset for the rest of the session. After the restart, the
// rest of every control dialog (226, QUIT, FIN) must pass through the
// offsets the new process took over, with every file intact and no packet
// dropped as INVALID. Once with SIGKILL (rules stay, nothing cleaned up),
// once with SIGTERM and a new start (systemctl restart).
//
// The "labels" case is SIGKILL with no state directory: the new process
// knows each rewritten connection only from the labels the old one wrote on
// its conntrack entry (decision 2), which it reads by a dump at start.
func TestRestartMidSession(t *testing.T) {
	for _, tc := range []struct {
		name   string
		sig    syscall.Signal
		labels bool // no --state-dir
	}{
		{"killed", syscall.SIGKILL, false},
		{"terminated", syscall.SIGTERM, false},
		{"labels", syscall.SIGKILL, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sig := tc.sig
			r := rig.New(t, rig.ClientNAT, rig.WithPrefix(nsPrefix))
			s, err := r.StartVsftpd(rig.VsftpdOptions{})
			if err != nil {
				t.Fatal(err)
			}
			state := filepath.Join(t.TempDir(), "state")
			args := []string{"--state-dir", state}
			if tc.labels {
				args = nil
			}
			g := startFtpalg(t, r, args...)
			const sessions, size = 20, 8 << 20
			sums := make([]string, sessions)
			for i := range sessions {
				if sums[i], err = s.CreateFile(fmt.Sprintf("f%d.bin", i), size); err != nil {
					t.Fatal(err)
				}
			}
			dir := t.TempDir()
			errs := make([]error, sessions)
			var wg sync.WaitGroup
			for i := range sessions {
				wg.Go(func() {
					out := filepath.Join(dir, fmt.Sprintf("f%d.bin", i))
					// ~4 s per transfer, so the restart lands in the middle.
					cmd := r.Exec(rig.Client, "curl", "-sS", "--max-time", "60", "-P", "-", "--disable-eprt",
						"--limit-rate", "2M", r.URL(fmt.Sprintf("f%d.bin", i)), "-o", out)
					if b, err := cmd.CombinedOutput(); err != nil {
						errs[i] = fmt.Errorf("session %d: %v: %s", i, err, b)
						return
					}
					if got, err := rig.FileSHA256(out); err != nil || got != sums[i] {
						errs[i] = fmt.Errorf("session %d: file corrupted (%v)", i, err)
					}
				})
			}
			// Wait until every session's PORT was rewritten, then restart.
			deadline := time.Now().Add(15 * time.Second)
			for len(g.events("rewrite")) < sessions {
				if time.Now().After(deadline) {
					t.Fatalf("only %d of %d rewrites before the restart", len(g.events("rewrite")), sessions)
				}
				time.Sleep(50 * time.Millisecond)
			}
			time.Sleep(500 * time.Millisecond)
			if err := syscall.Kill(g.p.Pid(), sig); err != nil {
				t.Fatal(err)
			}
			<-g.p.Done()
			g2 := startFtpalg(t, r, args...)
			wg.Wait()
			for _, err := range errs {
				if err != nil {
					t.Error(err)
				}
			}
			from := "took over control connections from the previous run"
			if tc.labels {
				from = "took over rewritten control connections from their conntrack labels"
				if failed := g.events("writing connection state to conntrack labels; a restarted or standby ftpalg could not take this connection over"); len(failed) != 0 {
					t.Errorf("label writes failed: %v", failed)
				}
			}
			took := g2.events(from)
			if len(took) != 1 || took[0]["connections"] != float64(sessions) {
				t.Errorf("the new process took over %v, want %d connections", took, sessions)
			}
			if n, err := r.InvalidDrops(); err != nil || n != 0 {
				t.Errorf("router dropped %d INVALID packets (%v)", n, err)
			}
			if refused := g2.events("refused"); len(refused) != 0 {
				t.Errorf("the new process refused packets: %v", refused)
			}
			g2.stop()
			if tc.labels {
				return
			}
			left, _ := exec.Command("ls", state).CombinedOutput()
			if strings.TrimSpace(string(left)) != "" {
				t.Logf("state files left after clean stop (sessions still closing): %s", left)
			}
		})
	}
}

// TestStaleStateIgnored leaves the saved state of a connection that no
// longer exists (it ended while ftpalg was down) in the state directory: a
// new ftpalg must not take it over, and must remove the file.
func TestStaleStateIgnored(t *testing.T) {
	r := rig.New(t, rig.ClientNAT, rig.WithPrefix(nsPrefix))
	state := t.TempDir()
	d, err := alg.NewDialog(alg.Config{}).MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	st := conntrack.FlowState{
		Conn:    conntrack.Conn{Client: netip.MustParseAddrPort("192.0.2.10:41000"), Server: netip.MustParseAddrPort("198.51.100.20:21")},
		Session: 7, Dialog: d,
	}
	b, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(state, "7.json")
	if err := os.WriteFile(file, b, 0o600); err != nil {
		t.Fatal(err)
	}
	g := startFtpalg(t, r, "--state-dir", state)
	if took := g.events("took over control connections from the previous run"); len(took) != 0 {
		t.Fatalf("took over a connection conntrack does not know: %v", took)
	}
	if _, err := os.Stat(file); !os.IsNotExist(err) {
		t.Fatalf("stale state file kept (%v)", err)
	}
	g.stop()
}
