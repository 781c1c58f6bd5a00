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
//
// The restart must land in the middle of every transfer: it comes once every
// data connection is up, and the test checks that all sessions are still
// running when the new process takes their connections over. The
// server paces each transfer (vsftpd's anon_max_rate, counted from the data
// connection's start); curl's --limit-rate, used before, counts from the
// start of curl's whole transfer, before the control connection is even
// made: the time spent connecting and logging in is credited, and a
// session whose PORT went out 4 s after curl started read its 8 MiB at
// full speed (measured with curl 7.88.1: a body of 8 MiB at --limit-rate 2M
// took 1.9 s after a 2 s wait for its first byte, 0.04 s after 4 s). Under
// load in CI all 20 sessions had ended before the new process ran, and it
// saw no packet.
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
			// Each transfer lasts at least size/rate (6 s) from its data
			// connection on, whatever the load: the restart (once every
			// data connection is up, then the new process's start until it
			// takes the connections over) falls inside it.
			const sessions, size, rate = 20, 3 << 20, 512 << 10
			s, err := r.StartVsftpd(rig.VsftpdOptions{Extra: []string{fmt.Sprintf("anon_max_rate=%d", rate)}})
			if err != nil {
				t.Fatal(err)
			}
			state := filepath.Join(t.TempDir(), "state")
			args := []string{"--state-dir", state}
			if tc.labels {
				args = []string{"--state-dir="} // empty disables the default one
			}
			g := startFtpalg(t, r, args...)
			sums := make([]string, sessions)
			for i := range sessions {
				if sums[i], err = s.CreateFile(fmt.Sprintf("f%d.bin", i), size); err != nil {
					t.Fatal(err)
				}
			}
			dir := t.TempDir()
			errs := make([]error, sessions)
			var wg sync.WaitGroup
			endedAt := make([]time.Time, sessions) // by success or failure
			for i := range sessions {
				wg.Go(func() {
					defer func() { endedAt[i] = time.Now() }()
					out := filepath.Join(dir, fmt.Sprintf("f%d.bin", i))
					cmd := r.Exec(rig.Client, "curl", "-sS", "--max-time", "60", "-P", "-", "--disable-eprt",
						r.URL(fmt.Sprintf("f%d.bin", i)), "-o", out)
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
			// Then until every data connection is up (its pinhole closed
			// as used), so that the restart lands in the transfers, not
			// between a PORT and its RETR: a fixed 0.5 s was not enough
			// with both cores busy, and a SIGTERM exit of 4 s then outlived
			// the 5 s pinholes (curl: "(19) ... RETR", 9 of 20 sessions).
			if err := eventually(15*time.Second, func() error {
				used := 0
				for _, ev := range g.events("pinhole closed") {
					if ev["why"] == "used" {
						used++
					}
				}
				if used < sessions {
					return fmt.Errorf("%d of %d data connections up before the restart", used, sessions)
				}
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			signalled := time.Now()
			if err := syscall.Kill(g.p.Pid(), sig); err != nil {
				t.Fatal(err)
			}
			<-g.p.Done()
			g2 := startFtpalg(t, r, args...)
			serving := time.Since(signalled)
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
			if len(took) != 1 {
				t.Fatalf("the new process logged %v, want one %q line", took, from)
			}
			// The premise: every session was still running when the new
			// process took the connections over (its first log lines,
			// before it binds the queue; its "running" line comes after
			// the iptables chains, which took up to 6 s under load).
			// Nothing passes while no process is bound, so what was left
			// of each session went through the new process.
			tookAt, err := time.Parse(time.RFC3339Nano, fmt.Sprint(took[0]["time"]))
			if err != nil {
				t.Fatal(err)
			}
			first, over := endedAt[0], 0
			for _, at := range endedAt {
				if at.Before(first) {
					first = at
				}
				if at.Before(tookAt) {
					over++
				}
			}
			t.Logf("the new process took the connections over %v after the signal and served %v after it; the first session ended %v after it",
				tookAt.Sub(signalled).Round(time.Millisecond), serving.Round(time.Millisecond), first.Sub(signalled).Round(time.Millisecond))
			if over != 0 {
				t.Errorf("%d of %d sessions ended before the new process took them over (%v after the signal): the restart did not "+
					"land mid-transfer, so this run proves nothing for them; the machine is slower than the %v transfers allow",
					over, sessions, tookAt.Sub(signalled).Round(time.Millisecond), time.Duration(size/rate)*time.Second)
			}
			if took[0]["connections"] != float64(sessions) {
				t.Errorf("the new process took over %v connections, want %d", took[0]["connections"], sessions)
			}
			if n, err := r.InvalidDrops(); err != nil || n != 0 {
				t.Errorf("router dropped %d INVALID packets (%v)", n, err)
			}
			if refused := g2.events("refused"); len(refused) != 0 {
				t.Errorf("the new process refused packets: %v", refused)
			}
			g2.stop()
			if tc.labels {
				// Every connection the new process saw was taken over
				// from its labels by the dump at start, none picked up
				// plain: all of them, as all were still transferring.
				stopping := g2.events("ftpalg stopping")
				if len(stopping) != 1 || stopping[0]["connections_resumed"] != float64(sessions) ||
					stopping[0]["connections_seen"] != float64(sessions) {
					t.Errorf("the new process: %v (at start: %v), want all %d connections seen and resumed", stopping, took, sessions)
				}
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
