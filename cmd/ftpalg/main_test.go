package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/internal/testenv"
)

func TestUsage(t *testing.T) {
	tests := []struct {
		args []string
		code int
		out  string // in stdout or stderr
	}{
		{nil, 2, "Usage:"},
		{[]string{"bogus"}, 2, `unknown command "bogus"`},
		{[]string{"help"}, 0, "ftpalg run [flags]"},
		{[]string{"version"}, 0, "ftpalg "},
		{[]string{"run", "--log-format", "xml"}, 2, "--log-format"},
		{[]string{"run", "--log-level", "loud"}, 2, "--log-level"},
		{[]string{"run", "--control-ports", "21,x"}, 2, "bad port"},
		{[]string{"run", "--data-ports", "9-1"}, 2, "--data-ports"},
		{[]string{"run", "--public-ip", "nope"}, 2, "--public-ip"},
		{[]string{"run", "--pinhole-timeout", "0s"}, 2, "pinhole timeout"},
		{[]string{"run", "--queue-num", "70000"}, 2, "--queue-num"},
		{[]string{"run", "-help"}, 0, "--install-rules"},
		{[]string{"run", "--tls", "maybe"}, 2, "--tls"},
		{[]string{"run", "--pinholes", "ipset"}, 2, "--pinholes"},
		{[]string{"rules", "--ipv6=false"}, 0, "-j NFQUEUE --queue-num 21\n"}, // fail closed by default
		{[]string{"run", "--accept-mark", "0x3"}, 2, "single bit"},
		{[]string{"rules", "--ipv6=false"}, 0, "-A FTPALG-ACCEPT -p tcp -m mark --mark 0x20000000/0x20000000"},
		{[]string{"rules", "--ipv6=false", "--pinholes", "iptables"}, 0, ":FTPALG-ACCEPT - [0:0]"},
		{[]string{"run", "--max-pinholes", "0"}, 2, "at least 1"},
		{[]string{"rules", "--ipv6=false", "--queue-bypass"}, 0, "-A FTPALG-QUEUE -p tcp -m multiport --dports 21 -j NFQUEUE --queue-num 21 --queue-bypass"},
	}
	for _, tt := range tests {
		var stdout, stderr bytes.Buffer
		code := run(tt.args, &stdout, &stderr)
		all := stdout.String() + stderr.String()
		if code != tt.code || !strings.Contains(strings.ReplaceAll(all, "\n  -", "\n  --"), tt.out) && !strings.Contains(all, tt.out) {
			t.Errorf("ftpalg %v: exit %d, want %d, output lacks %q:\n%s", tt.args, code, tt.code, tt.out, all)
		}
	}
}

// The rules fragment must be accepted by iptables-restore as is.
func TestRulesFragmentLoads(t *testing.T) {
	testenv.RequireRoot(t, "iptables-restore --test")
	var stdout bytes.Buffer
	if code := run([]string{"rules", "--ipv6=false", "--control-ports", "21,2121"}, &stdout, &stdout); code != 0 {
		t.Fatal(stdout.String())
	}
	cmd := exec.Command("iptables-restore", "--test", "--noflush")
	cmd.Stdin = &stdout
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("iptables-restore --test: %v\n%s", err, out)
	}
}

// namespace makes a fresh network namespace for the test.
func namespace(t *testing.T) string {
	t.Helper()
	testenv.RequireRoot(t, "network namespaces, NFQUEUE and iptables")
	ns := fmt.Sprintf("fe%dm%d", os.Getpid(), time.Now().UnixNano()%100000)
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	return ns
}

func buildBinary(t *testing.T) string {
	t.Helper()
	if bin := os.Getenv("FTPALG_BIN"); bin != "" {
		return bin
	}
	bin := filepath.Join(t.TempDir(), "ftpalg")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// lockedBuffer is the daemon's output, written by exec's copier while the
// test reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

type daemonProc struct {
	cmd *exec.Cmd
	out *lockedBuffer
	ch  chan error
}

func startDaemon(t *testing.T, ns, bin string, args ...string) *daemonProc {
	t.Helper()
	out := &lockedBuffer{}
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns, bin, "run"}, args...)...)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	d := &daemonProc{cmd: cmd, out: out, ch: make(chan error, 1)}
	go func() { d.ch <- cmd.Wait() }()
	t.Cleanup(func() { cmd.Process.Kill(); <-d.ch })
	return d
}

// waitFor waits until the daemon logs s or exits.
func (d *daemonProc) waitFor(t *testing.T, s string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if strings.Contains(d.out.String(), s) {
			return
		}
	}
	t.Fatalf("daemon did not log %q:\n%s", s, d.out.String())
}

func (d *daemonProc) exit(t *testing.T) int {
	t.Helper()
	select {
	case err := <-d.ch:
		d.ch <- err
		if err == nil {
			return 0
		}
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode()
		}
		t.Fatal(err)
	case <-time.After(10 * time.Second):
		t.Fatalf("daemon did not exit:\n%s", d.out.String())
	}
	return -1
}

func saved(t *testing.T, ns string) string {
	t.Helper()
	var all string
	for _, save := range []string{"iptables-save", "ip6tables-save", "nft list tables"} {
		out, err := exec.Command("ip", append([]string{"netns", "exec", ns}, strings.Fields(save)...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v %s", save, err, out)
		}
		if strings.HasPrefix(save, "nft") {
			out = []byte(strings.ToUpper(string(out))) // "table ip6 ftpalg" counts as ours too
		}
		all += string(out)
	}
	return all
}

func TestStartAndStop(t *testing.T) {
	ns := namespace(t)
	bin := buildBinary(t)

	// Without CAP_NET_ADMIN: one clear line, exit status 1.
	out, err := exec.Command("ip", "netns", "exec", ns, "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
		"--inh-caps=-all", "--bounding-set=-all", bin, "run").CombinedOutput()
	if code := exitCode(err); code != 1 || !strings.Contains(string(out), "needs root or CAP_NET_ADMIN") || strings.Count(string(out), "\n") != 1 {
		t.Fatalf("unprivileged run: exit %d, output %q", code, out)
	}

	// A clean start, then SIGTERM: a handover leaves every rule and table
	// in place for a successor.
	d := startDaemon(t, ns, bin)
	d.waitFor(t, "ftpalg running")
	before := rulesOnly(saved(t, ns))
	if strings.Count(before, "FTPALG") < 6 {
		t.Fatalf("chains not installed:\n%s", before)
	}
	// A second instance cannot bind the same queue: clear error, exit 1,
	// and the first one keeps its rules.
	second := startDaemon(t, ns, bin, "--install-rules=false")
	if code := second.exit(t); code != 1 || !strings.Contains(second.out.String(), "NFQUEUE 21") {
		t.Fatalf("second instance: exit %d:\n%s", code, second.out.String())
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	if code := d.exit(t); code != 0 {
		t.Fatalf("exit %d after SIGTERM:\n%s", code, d.out.String())
	}
	if s := rulesOnly(saved(t, ns)); s != before {
		t.Fatalf("SIGTERM (handover) changed the rules:\nbefore:\n%s\nafter:\n%s", before, s)
	}
	// ftpalg cleanup removes them, and finds nothing the second time.
	for i := range 2 {
		out, err := exec.Command("ip", "netns", "exec", ns, bin, "cleanup").CombinedOutput()
		if err != nil {
			t.Fatalf("cleanup #%d: %v:\n%s", i+1, err, out)
		}
		if s := saved(t, ns); strings.Contains(s, "FTPALG") {
			t.Fatalf("rules left after cleanup #%d:\n%s", i+1, s)
		}
	}

	// SIGKILL leaves the chains; the next start adopts them (no
	// duplicates) and SIGINT, a stop for good, removes everything.
	d = startDaemon(t, ns, bin)
	d.waitFor(t, "ftpalg running")
	d.cmd.Process.Kill()
	d.exit(t)
	if s := saved(t, ns); !strings.Contains(s, "FTPALG") {
		t.Fatal("expected leftovers after SIGKILL")
	}
	d = startDaemon(t, ns, bin)
	d.waitFor(t, "ftpalg running")
	if s := saved(t, ns); strings.Count(s, "-j FTPALG-QUEUE") != 6 || strings.Count(s, "-j NFQUEUE") != 4 {
		t.Fatalf("leftovers not adopted (want one jump per family from each of FORWARD, INPUT and OUTPUT, two queue rules per family):\n%s", s)
	}
	d.cmd.Process.Signal(syscall.SIGINT)
	if code := d.exit(t); code != 0 {
		t.Fatalf("exit %d after SIGINT:\n%s", code, d.out.String())
	}
	if s := saved(t, ns); strings.Contains(s, "FTPALG") {
		t.Fatalf("rules left after SIGINT:\n%s", s)
	}
}

// rulesOnly drops what iptables-save adds besides the rules: comment
// lines (timestamps) and chain counters.
func rulesOnly(s string) string {
	var out []string
	for _, line := range strings.Split(s, "\n") {
		if strings.HasPrefix(line, "#") {
			continue
		}
		if i := strings.LastIndex(line, " ["); strings.HasPrefix(line, ":") && i > 0 {
			line = line[:i]
		}
		out = append(out, line)
	}
	return strings.Join(out, "\n")
}

func exitCode(err error) int {
	if err == nil {
		return 0
	}
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	return -1
}
