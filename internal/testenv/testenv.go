// Package testenv decides whether a test that needs the real kernel can
// run, and makes CI strict about it.
//
// Integration and end-to-end tests need root: they create network
// namespaces, queue packets, load firewall rules. On a developer's laptop
// they skip with a message; in CI (CI=true, which .ci/run sets) a skip
// would let a run that tested nothing look green, so there they fail.
package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// InCI reports whether the tests run in CI, where nothing may be skipped.
func InCI() bool { return os.Getenv("CI") == "true" }

// RequireRoot skips tb when the process is not root, saying why root is
// needed, or fails it in CI.
func RequireRoot(tb testing.TB, why string) {
	tb.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if InCI() {
		tb.Fatalf("requires root (%s), and CI=true: run CI as root", why)
	}
	tb.Skip("requires root: " + why)
}

// RequireTool skips tb when the program name is not installed, or fails
// it in CI, where test/deps.sh must have installed it. It returns the
// program's path.
func RequireTool(tb testing.TB, name string) string {
	tb.Helper()
	path, err := exec.LookPath(name)
	if err == nil {
		return path
	}
	if InCI() {
		tb.Fatalf("%s is not installed, and CI=true: test/deps.sh installs it", name)
	}
	tb.Skipf("%s not installed (make deps)", name)
	return ""
}

// MainWithFtpalg is a TestMain for packages that run the ftpalg binary:
// it sets *bin to $FTPALG_BIN or, as root without it, to a binary built
// for the run and removed after it, then runs the tests and exits.
func MainWithFtpalg(m *testing.M, bin *string) {
	*bin = os.Getenv("FTPALG_BIN")
	if *bin != "" || os.Geteuid() != 0 {
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "ftpalg-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	*bin = filepath.Join(dir, "ftpalg")
	out, err := exec.Command("go", "build", "-o", *bin, "github.com/ftpalg/ftpalg/cmd/ftpalg").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "building ftpalg: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}
