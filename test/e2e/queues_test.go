//go:build linux

package e2e

import (
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/ftpalg/ftpalg/test/rig"
)

// TestQueues runs ftpalg with --queues 2 behind a client NAT: sixteen
// clients, each from an address of its own (NFQUEUE's --queue-balance
// hashes the two addresses, so clients spread over the queues), fetch a
// file over PORT and one over PASV at the same time. Every transfer must
// arrive intact, no packet may be dropped as INVALID, and both shards
// must have served sessions: the shards number sessions apart (odd and
// even IDs with two), so the rewrites' session IDs show which shard acted.
// The chance that sixteen address pairs all hash to one of two queues is
// 2^-15.
func TestQueues(t *testing.T) {
	r := rig.New(t, rig.ClientNAT, rig.WithPrefix(nsPrefix))
	s, err := r.StartVsftpd(rig.VsftpdOptions{})
	if err != nil {
		t.Fatal(err)
	}
	g := startFtpalg(t, r, "--queues", "2", "--state-dir=")
	const clients = 16
	sum, err := s.CreateFile("f.bin", 256<<10)
	if err != nil {
		t.Fatal(err)
	}
	addrs := make([]string, clients)
	for i := range addrs {
		addrs[i] = fmt.Sprintf("192.0.2.%d", 100+i)
		if out, err := r.Run(t.Context(), rig.Client, "ip", "addr", "add", addrs[i]+"/24", "dev", rig.HostIf); err != nil {
			t.Fatalf("adding client address %s: %v: %s", addrs[i], err, out)
		}
	}
	dir := t.TempDir()
	var wg sync.WaitGroup
	errs := make([]error, 2*clients)
	for i := range 2 * clients {
		wg.Go(func() {
			args := []string{"-sS", "--max-time", "30", "--interface", addrs[i/2]}
			if i%2 == 0 {
				args = append(args, "-P", "-", "--disable-eprt")
			} else {
				args = append(args, "--disable-epsv")
			}
			out := filepath.Join(dir, fmt.Sprintf("f%d.bin", i))
			b, err := r.Exec(rig.Client, "curl", append(args, r.URL("f.bin"), "-o", out)...).CombinedOutput()
			if err != nil {
				errs[i] = fmt.Errorf("transfer %d from %s: %v: %s", i, addrs[i/2], err, b)
				return
			}
			if got, err := rig.FileSHA256(out); err != nil || got != sum {
				errs[i] = fmt.Errorf("transfer %d from %s: file corrupted (%v)", i, addrs[i/2], err)
			}
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	// Both PORT (client NAT) and 227 (none here: the server is public)
	// announcements are logged with their session; PORTs are rewritten.
	shards := map[uint64]int{}
	for _, ev := range g.events("rewrite") {
		id, ok := ev["session"].(float64)
		if !ok {
			t.Fatalf("rewrite without a session: %v", ev)
		}
		shards[uint64(id)%2]++
	}
	if shards[0]+shards[1] != clients {
		t.Errorf("%d rewrites, want %d (one PORT per client)", shards[0]+shards[1], clients)
	}
	if shards[0] == 0 || shards[1] == 0 {
		t.Errorf("rewrites by shard %v: want both shards to have served", shards)
	}
	if n, err := r.InvalidDrops(); err != nil || n != 0 {
		t.Errorf("INVALID drops %d (%v), want 0", n, err)
	}
	out, err := r.Run(t.Context(), rig.Router, "cat", "/proc/net/netfilter/nfnetlink_queue")
	if err != nil {
		t.Fatal(err)
	}
	if lines := strings.Count(strings.TrimSpace(out), "\n") + 1; lines != 2 {
		t.Errorf("bound queues:\n%s\nwant 2", out)
	}
	g.stop()
}
