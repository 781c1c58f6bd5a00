package deploy

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// host.rules (with iptables-restore) and host6.rules (with
// ip6tables-restore) load, and ftpalg run --role host --install-rules=false
// starts on top of each and leaves it as it was when it stops.
func TestHostFirewallLoads(t *testing.T) {
	requireRoot(t, "iptables-restore in a network namespace")
	bin := ftpalgBinary(t)
	for _, tc := range []struct {
		file, tool, only string
	}{
		{"host.rules", "iptables", "--ipv6=false"},
		{"host6.rules", "ip6tables", "--ipv4=false"},
	} {
		t.Run(tc.file, func(t *testing.T) {
			ns := netns(t, "h"+tc.tool[:3])
			b, err := os.ReadFile(tc.file)
			if err != nil {
				t.Fatal(err)
			}
			inNS(t, ns, nil, tc.tool+"-restore", "--test", tc.file)
			inNS(t, ns, b, tc.tool+"-restore")
			before := stripCounters(inNS(t, ns, nil, tc.tool+"-save"))
			if n := strings.Count(before, "-j FTPALG-"); n != 4 {
				t.Fatalf("want 4 jumps to ftpalg's chains after loading, got %d:\n%s", n, before)
			}
			d := startDaemon(t, exec.Command("ip", "netns", "exec", ns, bin, "run", "--role", "host", tc.only, "--install-rules=false"))
			d.waitLog(t, "ftpalg running")
			d.stop(t)
			if after := stripCounters(inNS(t, ns, nil, tc.tool+"-save")); after != before {
				t.Errorf("ftpalg --install-rules=false changed the firewall:\nbefore:\n%s\nafter:\n%s", before, after)
			}
		})
	}
}

// nftables.conf, with ftpalg.nft at the path it includes, passes nft -c
// and loads; ftpalg run --role host starts on it, adds its own tables and
// iptables chains, and on SIGINT (stop for good) leaves exactly the admin's ruleset.
func TestNFTablesConfLoads(t *testing.T) {
	requireRoot(t, "nft in a network namespace")
	bin := ftpalgBinary(t)
	ns := netns(t, "n")
	conf, err := os.ReadFile("nftables.conf")
	if err != nil {
		t.Fatal(err)
	}
	frag, err := filepath.Abs("ftpalg.nft")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "nftables.conf")
	text := strings.ReplaceAll(string(conf), `"/etc/nftables.d/ftpalg.nft"`, `"`+frag+`"`)
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	inNS(t, ns, nil, "nft", "-c", "-f", path)
	inNS(t, ns, nil, "nft", "-f", path)
	before := inNS(t, ns, nil, "nft", "list", "ruleset")
	if !strings.Contains(before, "meta mark & 0x20000000 == 0x20000000 accept") {
		t.Fatalf("ftpalg's rule not in the loaded ruleset:\n%s", before)
	}
	d := startDaemon(t, exec.Command("ip", "netns", "exec", ns, bin, "run", "--role", "host"))
	d.waitLog(t, "ftpalg running")
	running := inNS(t, ns, nil, "nft", "list", "ruleset")
	for _, want := range []string{"table ip ftpalg", "table ip6 ftpalg", "chain pinhole_mark_in", "FTPALG-QUEUE"} {
		if !strings.Contains(running, want) {
			t.Errorf("running ruleset lacks %q:\n%s", want, running)
		}
	}
	d.stop(t)
	if after := inNS(t, ns, nil, "nft", "list", "ruleset"); !strings.Contains(after, "table inet filter") ||
		strings.Contains(after, "FTPALG") || strings.Contains(after, "table ip ftpalg") || strings.Contains(after, "table ip6 ftpalg") {
		t.Errorf("after SIGINT the ruleset is not the admin's alone:\n%s", after)
	}
}

// The untested nft queue table that `ftpalg rules --format nft` prints as
// comments is valid nft syntax: this kernel rejects only its queue
// statements (no CONFIG_NFT_QUEUE).
func TestNFTQueueCommentParses(t *testing.T) {
	requireRoot(t, "nft -c in a network namespace")
	ns := netns(t, "q")
	b, err := os.ReadFile("ftpalg.nft")
	if err != nil {
		t.Fatal(err)
	}
	var table []string
	on := false
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "# table inet ftpalg_queue") {
			on = true
		}
		if on {
			table = append(table, strings.TrimPrefix(l, "# "))
		}
	}
	path := filepath.Join(t.TempDir(), "queue.nft")
	if err := os.WriteFile(path, []byte(strings.Join(table, "\n")), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("ip", "netns", "exec", ns, "nft", "-c", "-f", path).CombinedOutput()
	if err == nil {
		t.Logf("this kernel has nft queue: the table checks cleanly")
		return
	}
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, "Error:") && !strings.Contains(l, "Could not process rule: No such file or directory") {
			t.Errorf("nft -c: %s\n%s", l, out)
		}
	}
	if !strings.Contains(string(out), "queue num 21") {
		t.Errorf("nft -c did not get to the queue statements:\n%s", out)
	}
}
