package deploy

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/internal/testenv"
	"golang.org/x/sys/unix"
)

// mdweEnv makes the test binary a wrapper: it turns on the kernel's
// memory-deny-write-execute for itself (inherited across execve, as
// systemd's MemoryDenyWriteExecute= is) and executes its arguments.
const mdweEnv = "FTPALG_DEPLOY_MDWE_EXEC"

func TestMain(m *testing.M) {
	if os.Getenv(mdweEnv) == "1" {
		args := os.Args[1:]
		if len(args) == 0 {
			fmt.Fprintln(os.Stderr, "mdwe wrapper: no command")
			os.Exit(127)
		}
		if err := unix.Prctl(unix.PR_SET_MDWE, unix.PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0); err != nil {
			fmt.Fprintln(os.Stderr, "mdwe wrapper: prctl(PR_SET_MDWE):", err)
			os.Exit(127)
		}
		path, err := exec.LookPath(args[0])
		if err != nil {
			fmt.Fprintln(os.Stderr, "mdwe wrapper:", err)
			os.Exit(127)
		}
		env := []string{}
		for _, e := range os.Environ() {
			if !strings.HasPrefix(e, mdweEnv+"=") {
				env = append(env, e)
			}
		}
		err = syscall.Exec(path, args, env)
		fmt.Fprintln(os.Stderr, "mdwe wrapper: exec:", err)
		os.Exit(127)
	}
	code := m.Run()
	if built.Load() {
		if bin, err := buildOnce(); err == nil {
			os.RemoveAll(filepath.Dir(bin))
		}
	}
	os.Exit(code)
}

// built says buildOnce built a binary (and the test must remove it).
var built atomic.Bool

func requireRoot(t *testing.T, what string) {
	t.Helper()
	testenv.RequireRoot(t, what)
}

var buildOnce = sync.OnceValues(func() (string, error) {
	if bin := os.Getenv("FTPALG_BIN"); bin != "" {
		return bin, nil
	}
	dir, err := os.MkdirTemp("", "ftpalg-deploy")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "ftpalg")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/ftpalg/ftpalg/cmd/ftpalg").CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		return "", fmt.Errorf("go build: %v\n%s", err, out)
	}
	built.Store(true)
	return bin, nil
})

// ftpalgBinary returns $FTPALG_BIN or a freshly built ftpalg.
func ftpalgBinary(t *testing.T) string {
	t.Helper()
	bin, err := buildOnce()
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// netns makes a fresh network namespace, removed at cleanup.
func netns(t *testing.T, role string) string {
	t.Helper()
	ns := fmt.Sprintf("fs%d%s", os.Getpid(), role)
	exec.Command("ip", "netns", "del", ns).Run() // a leftover of a killed run of this PID
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v %s", ns, err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	return ns
}

func inNS(t *testing.T, ns string, stdin []byte, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns, name}, args...)...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// The example firewalls load into a fresh namespace, and ftpalg run
// --install-rules=false starts on top of them, fills and empties only its
// pinhole chains, and leaves the script's rules (its own jumps included)
// as they were when it stops.
func TestFirewallLoads(t *testing.T) {
	requireRoot(t, "iptables-restore in a network namespace")
	bin := ftpalgBinary(t)
	ns := netns(t, "f")
	for _, tc := range []struct{ restore, file string }{
		{"iptables-restore", "firewall.rules"},
		{"ip6tables-restore", "firewall6.rules"},
	} {
		b, err := os.ReadFile(tc.file)
		if err != nil {
			t.Fatal(err)
		}
		inNS(t, ns, nil, tc.restore, "--test", tc.file)
		inNS(t, ns, b, tc.restore)
	}
	save := func() string {
		return inNS(t, ns, nil, "iptables-save") + inNS(t, ns, nil, "ip6tables-save")
	}
	before := stripCounters(save())
	if n := strings.Count(before, "-j FTPALG-"); n != 12 {
		t.Fatalf("want 12 jumps to ftpalg's chains after loading, got %d:\n%s", n, before)
	}

	d := startDaemon(t, exec.Command("ip", "netns", "exec", ns, bin, "run", "--install-rules=false"))
	d.waitLog(t, "ftpalg running")
	d.stop(t)
	if after := stripCounters(save()); after != before {
		t.Errorf("ftpalg --install-rules=false changed the firewall:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

// stripCounters removes the comment and counter lines of iptables-save so
// two dumps compare by content.
func stripCounters(s string) string {
	var keep []string
	for _, l := range strings.Split(s, "\n") {
		if strings.HasPrefix(l, "#") {
			continue
		}
		if strings.HasPrefix(l, ":") {
			l = strings.Join(strings.Fields(l)[:2], " ")
		}
		keep = append(keep, l)
	}
	return strings.Join(keep, "\n")
}

// lockedBuffer is a process's output, written by exec's copier while the
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

// daemon is an ftpalg process started by a test.
type daemon struct {
	cmd  *exec.Cmd
	out  *lockedBuffer
	done chan struct{}
	err  error // valid after done is closed
}

func startDaemon(t *testing.T, cmd *exec.Cmd) *daemon {
	t.Helper()
	d := &daemon{cmd: cmd, out: &lockedBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = d.out, d.out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.err = cmd.Wait(); close(d.done) }()
	t.Cleanup(func() {
		select {
		case <-d.done:
		default:
			cmd.Process.Kill()
			<-d.done
		}
	})
	return d
}

func (d *daemon) waitLog(t *testing.T, s string) {
	t.Helper()
	deadline := time.After(15 * time.Second)
	for !strings.Contains(d.out.String(), s) {
		select {
		case <-d.done:
			t.Fatalf("ftpalg exited at start (%v):\n%s", d.err, d.out.String())
		case <-deadline:
			t.Fatalf("ftpalg did not log %q:\n%s", s, d.out.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// stop sends SIGINT (stop for good: remove everything) and requires exit
// status 0.
func (d *daemon) stop(t *testing.T) {
	t.Helper()
	if err := d.cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case <-d.done:
		if d.err != nil {
			t.Fatalf("ftpalg exited with %v after SIGINT:\n%s", d.err, d.out.String())
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("ftpalg did not stop within 15s of SIGINT:\n%s", d.out.String())
	}
}
