package rules

// Harness for the root-only integration tests. Each test re-executes the test
// binary inside a network namespace it creates, so iptables only ever touches
// that namespace; a few helper modes of the same binary act as TCP server and
// client in the traffic test.

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/internal/testenv"
)

const (
	// envChild is set in a test process re-executed inside a namespace.
	envChild = "FTPALG_RULES_TEST_CHILD"
	// envHelper selects a helper mode ("listen", "dial" or "nft-crash")
	// instead of tests.
	envHelper = "FTPALG_RULES_TEST_HELPER"
	// envHelperArgs carries the helper's space-separated arguments.
	envHelperArgs = "FTPALG_RULES_TEST_ARGS"
	// envClientNS names the client namespace for the traffic test's child.
	envClientNS = "FTPALG_RULES_TEST_CLIENT_NS"

	// banner is what the listen helper sends, so a dial proves it reached
	// the real server and not something answering on the router.
	banner = "ftpalg-rules-test-server"
)

func TestMain(m *testing.M) {
	if mode := os.Getenv(envHelper); mode != "" {
		os.Exit(runHelper(mode, strings.Fields(os.Getenv(envHelperArgs))))
	}
	os.Exit(m.Run())
}

// runHelper runs a helper mode and returns the process exit code.
func runHelper(mode string, args []string) int {
	switch mode {
	case "listen":
		// Listen on every address given, print "ready", serve until killed.
		for _, a := range args {
			ln, err := net.Listen("tcp", a)
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 2
			}
			go func() {
				for {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					_, _ = io.WriteString(c, banner+"\n")
					_ = c.Close()
				}
			}()
		}
		fmt.Println("ready")
		select {}
	case "dial":
		// dial SRC DST: exit 0 if DST answers with the banner.
		if len(args) != 2 {
			fmt.Fprintln(os.Stderr, "usage: dial SRC DST")
			return 2
		}
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(args[0])}, Timeout: time.Second}
		c, err := d.Dial("tcp", args[1])
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil || strings.TrimSpace(line) != banner {
			fmt.Fprintf(os.Stderr, "read %q: %v\n", line, err)
			return 1
		}
		return 0
	case "nft-crash":
		return runCrashHelper()
	default:
		fmt.Fprintf(os.Stderr, "unknown helper %q\n", mode)
		return 2
	}
}

// inChild reports whether this process is the re-executed test body.
func inChild() bool {
	return os.Getenv(envChild) != ""
}

// requireRoot skips tests that need to create namespaces and run iptables.
func requireRoot(t *testing.T) {
	t.Helper()
	testenv.RequireRoot(t, "creates network namespaces and runs iptables in them")
	for _, bin := range []string{"ip", "iptables", "ip6tables", "iptables-restore", "ip6tables-restore"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Fatalf("integration test needs %s: %v", bin, err)
		}
	}
}

// run runs a command and fails the test with its output on error.
func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// newNetns creates a network namespace named with this package's prefix,
// the PID and tag, and deletes it when the test ends.
func newNetns(t *testing.T, tag string) string {
	t.Helper()
	name := fmt.Sprintf("fb%d%s", os.Getpid(), tag)
	run(t, "ip", "netns", "add", name)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("deleting netns %s: %v\n%s", name, err, out)
		}
	})
	return name
}

// execIn returns a command running this test binary inside ns.
func execIn(ctx context.Context, t *testing.T, ns string, env []string, args ...string) *exec.Cmd {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	// ip netns exec execs the binary, so cmd.Process is the test binary.
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns, exe}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	return cmd
}

// runTestIn re-executes the current top-level test inside ns and fails if it
// fails there. The caller returns right after; the body runs in the child,
// where inChild is true.
func runTestIn(t *testing.T, ns string, env ...string) {
	t.Helper()
	if strings.Contains(t.Name(), "/") {
		t.Fatalf("runTestIn only supports top-level tests, not %s", t.Name())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := execIn(ctx, t, ns, append(env, envChild+"=1"),
		"-test.run=^"+regexp.QuoteMeta(t.Name())+"$", "-test.v", "-test.count=1", "-test.timeout=3m")
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("test in netns %s timed out\n%s", ns, out)
	}
	if err != nil {
		t.Fatalf("test in netns %s failed: %v\n%s", ns, err, out)
	}
	if !bytes.Contains(out, []byte("--- PASS: "+t.Name())) {
		t.Fatalf("test in netns %s did not pass:\n%s", ns, out)
	}
	t.Logf("output from netns %s:\n%s", ns, out)
}

// inFreshNetns runs the calling test in a new, empty network namespace. It
// returns true in the child, which must then run the test body, and false in
// the parent, which must return.
func inFreshNetns(t *testing.T, tag string) bool {
	t.Helper()
	if inChild() {
		return true
	}
	requireRoot(t)
	runTestIn(t, newNetns(t, tag))
	return false
}

// ipt runs iptables (or ip6tables) in the current namespace and returns the
// output lines.
func ipt(t *testing.T, f Family, args ...string) []string {
	t.Helper()
	out := run(t, f.command(), args...)
	// iptables warns on stderr, for every listing with a connlabel rule,
	// that it has no /etc/xtables/connlabel.conf (label names); ftpalg's
	// rule uses a bit number and needs none.
	var lines []string
	for _, l := range strings.Split(strings.TrimRight(out, "\n"), "\n") {
		if !strings.HasPrefix(l, "Warning: cannot open /etc/xtables/connlabel.conf") {
			lines = append(lines, l)
		}
	}
	return lines
}

// save returns iptables-save (or ip6tables-save) output.
func save(t *testing.T, f Family) string {
	t.Helper()
	return run(t, f.command()+"-save")
}
