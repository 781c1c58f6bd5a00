// Package testenv decides whether a test that needs the real kernel can
// run, and makes CI strict about it.
//
// Integration and end-to-end tests need root: they create network
// namespaces, queue packets, load firewall rules. On a developer's laptop
// they skip with a message; in CI (CI=true, which .ci/run sets) a skip
// would let a run that tested nothing look green, so there they fail.
package testenv

import (
	"os"
	"os/exec"
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
