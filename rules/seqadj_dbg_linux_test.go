package rules

import (
	"net/netip"
	"os/exec"
	"testing"
	"time"
)

func TestSqDbg(t *testing.T) {
	r := newSeqAdjRig(t)
	out, _ := exec.Command("ip", "netns", "exec", r.r, "sysctl", "net.ipv6.conf.in0.forwarding", "net.ipv6.conf.in0.accept_dad", "net.ipv6.conf.in0.disable_ipv6").CombinedOutput()
	t.Logf("%s", out)
	td := exec.Command("ip", "netns", "exec", r.r, "tcpdump", "-ni", "in0", "-l", "icmp6 or tcp")
	tdo, _ := td.StdoutPipe()
	td.Start()
	time.Sleep(300 * time.Millisecond)
	r.dial(t, r.c, netip.AddrPortFrom(sqServer[IPv6], 2121))
	time.Sleep(200 * time.Millisecond)
	td.Process.Kill()
	b := make([]byte, 10000)
	n, _ := tdo.Read(b)
	t.Logf("%s", b[:n])
	td.Wait()
}
