//go:build linux

package e2e

import (
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/test/rig"
)

// TestCrashWithPinholesOpen kills ftpalg with SIGKILL while pinholes are
// open. With nobody left to close them, they must still be gone within
// their timeout plus a few seconds (nftables element timeouts), and a new
// start must adopt what the dead process left (no duplicate) and work.
func TestCrashWithPinholesOpen(t *testing.T) {
	r := rig.New(t, rig.ClientNAT, rig.WithPrefix(nsPrefix))
	if _, err := r.StartVsftpd(rig.VsftpdOptions{}); err != nil {
		t.Fatal(err)
	}
	const timeout = 3 * time.Second
	g := startFtpalg(t, r, "--pinhole-timeout", timeout.String())
	server := r.ServerAddr().String() + ":21"
	for i := range 3 {
		f := dialFTP(t, r, server)
		f.login()
		f.cmd("PORT " + commas(r.ClientAddr().String(), uint16(50000+i)))
	}
	if n := len(g.waitEvents("pinhole opened", 3)); n != 3 {
		t.Fatalf("%d pinholes opened, want 3", n)
	}
	elements := func() int {
		out, _ := r.Run(t.Context(), rig.Router, "nft", "list", "table", "ip", "ftpalg")
		return strings.Count(out, "192.0.2.10 . ")
	}
	if n := elements(); n == 0 {
		t.Fatal("no pinhole elements before the crash")
	}
	killed := time.Now()
	syscall.Kill(g.p.Pid(), syscall.SIGKILL)
	<-g.p.Done()
	for elements() > 0 {
		if time.Since(killed) > timeout+5*time.Second {
			t.Fatalf("pinholes still present %v after the crash (timeout %v)", time.Since(killed).Round(time.Second), timeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("the dead process's pinholes expired %v after the crash (timeout %v)", time.Since(killed).Round(100*time.Millisecond), timeout)

	// A new start adopts the leftover chains and tables and serves.
	g2 := startFtpalg(t, r)
	// One jump from each hook of the default role (FORWARD, INPUT,
	// OUTPUT): the dead run's jumps were adopted, not doubled.
	if out, _ := r.Run(t.Context(), rig.Router, "iptables-save"); strings.Count(out, "-j FTPALG-QUEUE") != 3 {
		t.Fatalf("leftovers not adopted:\n%s", out)
	}
	f := dialFTP(t, r, server)
	f.login()
	f.cmd("PORT " + commas(r.ClientAddr().String(), 50100))
	if len(g2.waitEvents("pinhole opened", 1)) != 1 {
		t.Fatal("the new process opened no pinhole")
	}
	g2.stop()
}
