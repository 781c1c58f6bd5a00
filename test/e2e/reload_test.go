//go:build linux

package e2e

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/test/rig"
)

// TestFirewallReload reloads the router's whole firewall script with
// iptables-restore, as an admin or a configuration tool does, while ftpalg
// runs: the reload wipes ftpalg's jumps and chains. ftpalg must notice and
// re-install them, so that an active-mode transfer behind NAT (which needs
// its rewrite and pinhole) works again within about a second.
func TestFirewallReload(t *testing.T) {
	r := rig.New(t, rig.ClientNAT, rig.WithPrefix(nsPrefix))
	s, err := r.StartVsftpd(rig.VsftpdOptions{})
	if err != nil {
		t.Fatal(err)
	}
	g := startFtpalg(t, r)
	if _, err := s.CreateFile("1k.bin", 1024); err != nil {
		t.Fatal(err)
	}
	get := func() error {
		_, err := r.CurlGet(rig.PORT, r.URL("1k.bin"), filepath.Join(t.TempDir(), "1k.bin"))
		return err
	}
	if err := get(); err != nil {
		t.Fatalf("before the reload: %v", err)
	}
	reload := r.Exec(rig.Router, "iptables-restore")
	reload.Stdin = strings.NewReader(r.Firewall(rig.IPv4))
	if out, err := reload.CombinedOutput(); err != nil {
		t.Fatalf("iptables-restore: %v\n%s", err, out)
	}
	reloaded := time.Now()
	if out, _ := r.Run(t.Context(), rig.Router, "iptables", "-S", "FORWARD"); strings.Contains(out, "FTPALG") {
		t.Log("ftpalg's jump was back before the first check")
	}
	for {
		err := get()
		if err == nil {
			t.Logf("transfers work again %v after the reload", time.Since(reloaded).Round(time.Millisecond))
			break
		}
		if time.Since(reloaded) > 3*time.Second {
			t.Fatalf("no working transfer 3s after the reload: %v", err)
		}
	}
	// ftpalg logs the repair after it, so the transfer may work first.
	if len(g.waitEvents("rules were removed from the kernel (firewall reload?); re-installed them", 1)) == 0 {
		t.Error("ftpalg did not log that it re-installed its rules")
	}
	if n, err := r.InvalidDrops(); err != nil || n != 0 {
		t.Errorf("router dropped %d INVALID packets (%v)", n, err)
	}
	g.stop()
}
