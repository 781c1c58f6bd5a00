package testenv

import (
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// envChild makes TestRequireRootChild run its body in a child process.
const envChild = "FTPALG_TESTENV_CHILD"

// TestRequireRootChild is the body the child runs. In this process (root,
// as CI runs it) RequireRoot must simply return.
func TestRequireRootChild(t *testing.T) {
	if os.Getenv(envChild) == "" {
		if os.Geteuid() == 0 {
			RequireRoot(t, "a check")
		}
		return
	}
	RequireRoot(t, "the child's reason")
	t.Log("ran as root")
}

// TestRequireRoot runs RequireRoot in a non-root child with and without
// CI=true: it must skip with the reason outside CI and fail inside.
func TestRequireRoot(t *testing.T) {
	exe := nonRootExecutable(t)
	run := func(ci string) (string, error) {
		cmd := exec.Command(exe, "-test.run=^TestRequireRootChild$", "-test.v", "-test.count=1")
		cmd.Env = append(os.Environ(), envChild+"=1", "CI="+ci)
		if os.Geteuid() == 0 {
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		}
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	out, err := run("")
	if err != nil || !strings.Contains(out, "--- SKIP") || !strings.Contains(out, "requires root: the child's reason") {
		t.Errorf("outside CI, want a skip with the reason; got %v:\n%s", err, out)
	}
	out, err = run("true")
	if err == nil || !strings.Contains(out, "--- FAIL") || !strings.Contains(out, "CI=true") {
		t.Errorf("in CI, want a failure; got %v:\n%s", err, out)
	}
}

// nonRootExecutable returns a copy of the test binary that uid 65534 can
// execute: go test builds it in a directory only root may enter.
func nonRootExecutable(t *testing.T) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() != 0 {
		return self
	}
	dir, err := os.MkdirTemp("", "ftpalg-testenv")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	src, err := os.Open(self)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	exe := filepath.Join(dir, "testenv.test")
	dst, err := os.OpenFile(exe, os.O_CREATE|os.O_WRONLY, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
	return exe
}
