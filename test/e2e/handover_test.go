//go:build linux

package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/test/rig"
)

// TestHandoverPendingPinhole hands over (SIGTERM, then a new process)
// while a PORT is answered and its RETR not yet sent: the pinhole stays in
// the nftables table, and the new process takes it over from there. Its
// data connection gets through, the pinhole then closes (one connection
// only, as it would have in the old process), and stopping for good leaves
// nothing.
func TestHandoverPendingPinhole(t *testing.T) {
	r := rig.New(t, rig.ClientNAT, rig.WithPrefix(nsPrefix))
	sum := startVsftpd1M(t, r)
	args := []string{"--pinhole-timeout", "30s", "--state-dir="}
	g1 := startFtpalg(t, r, args...)

	f := dialFTP(t, r, net.JoinHostPort(r.ServerAddr().String(), "21"))
	f.login()
	if got := f.cmd("TYPE I"); !strings.HasPrefix(got, "200") {
		t.Fatalf("TYPE I: %q", got)
	}
	l, err := r.Listen(rig.Client, "tcp", net.JoinHostPort(r.ClientAddr().String(), "0"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	port := l.Addr().(*net.TCPAddr).AddrPort().Port()
	a := r.ClientAddr().As4()
	if got := f.cmd(fmt.Sprintf("PORT %d,%d,%d,%d,%d,%d", a[0], a[1], a[2], a[3], port>>8, port&0xff)); !strings.HasPrefix(got, "200") {
		t.Fatalf("PORT: %q", got)
	}
	if ev := g1.waitEvents("pinhole opened", 1); len(ev) != 1 {
		t.Fatalf("pinhole opened: %v", ev)
	}

	if err := syscall.Kill(g1.p.Pid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-g1.p.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("ftpalg did not hand over within 30 s of SIGTERM")
	}
	g2 := startFtpalg(t, r, args...)
	took := g2.waitEvents("took over pending pinholes from the previous run", 1)
	if len(took) != 1 || took[0]["pinholes"] != float64(1) {
		t.Fatalf("the new process took over %v, want 1 pinhole", took)
	}

	if got := f.cmd("RETR 1m.bin"); !strings.HasPrefix(got, "150") {
		t.Fatalf("RETR: %q", got)
	}
	if err := l.(*net.TCPListener).SetDeadline(time.Now().Add(15 * time.Second)); err != nil {
		t.Fatal(err)
	}
	c, err := l.Accept()
	if err != nil {
		t.Fatalf("no data connection through the taken-over pinhole: %v", err)
	}
	h := sha256.New()
	if _, err := io.Copy(h, c); err != nil {
		t.Fatal(err)
	}
	c.Close()
	if got := hex.EncodeToString(h.Sum(nil)); got != sum {
		t.Fatalf("file SHA-256 %s, want %s", got, sum)
	}
	if got := f.reply(); !strings.HasPrefix(got, "226") {
		t.Fatalf("after the transfer: %q", got)
	}
	// The data connection closed the pinhole in the new process.
	closed := g2.waitEvents("pinhole closed", 1)
	if len(closed) != 1 || closed[0]["why"] != "used" {
		t.Fatalf("pinhole closed: %v, want once, for its data connection", closed)
	}
	if n, err := r.InvalidDrops(); err != nil || n != 0 {
		t.Errorf("router dropped %d INVALID packets (%v)", n, err)
	}
	f.cmd("QUIT")
	g2.stop()
}
