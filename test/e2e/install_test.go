//go:build linux

package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/ftpalg/ftpalg/internal/testenv"
	"github.com/ftpalg/ftpalg/test/rig"
)

// TestInstalledUnit installs ftpalg with `make install` into a temporary
// root and runs the unit's command line from it (see runInstalledUnit).
func TestInstalledUnit(t *testing.T) {
	testenv.RequireRoot(t, "network namespaces")
	root := t.TempDir()
	install := exec.Command("make", "-C", "../..", "install", "DESTDIR="+root, "PREFIX=/usr")
	if out, err := install.CombinedOutput(); err != nil {
		t.Fatalf("make install: %v\n%s", err, out)
	}
	runInstalledUnit(t, root, "etc/systemd/system/ftpalg.service")
	if _, err := os.Stat(filepath.Join(root, "usr/share/man/man8/ftpalg.8")); err != nil {
		t.Errorf("make install did not install the man page: %v", err)
	}
}

// runInstalledUnit starts ftpalg in the rig's router with the command line
// the installed systemd unit would run (ExecStart with $FTPALG_FLAGS from
// the installed environment file, paths moved into root), carries a
// rewritten transfer through it and reads the result from `ftpalg status`.
// extra flags are appended to the unit's.
func runInstalledUnit(t *testing.T, root, unitFile string, extra ...string) {
	t.Helper()
	unit, err := os.ReadFile(filepath.Join(root, unitFile))
	if err != nil {
		t.Fatal(err)
	}
	env, err := os.ReadFile(filepath.Join(root, "etc/default/ftpalg"))
	if err != nil {
		t.Fatal(err)
	}
	exe := regexp.MustCompile(`(?m)^ExecStart=(\S+) run \$FTPALG_FLAGS$`).FindSubmatch(unit)
	flags := regexp.MustCompile(`(?m)^FTPALG_FLAGS="([^"]*)"`).FindSubmatch(env)
	if exe == nil || flags == nil {
		t.Fatalf("unexpected unit or environment file:\n%s\n%s", unit, env)
	}
	bin := filepath.Join(root, string(exe[1]))
	args := strings.Fields(strings.ReplaceAll(string(flags[1]), "/etc/", root+"/etc/"))
	args = append(args, extra...)
	if out, err := exec.Command(bin, "config", "check", filepath.Join(root, "etc/ftpalg/ftpalg.toml")).CombinedOutput(); err != nil {
		t.Fatalf("installed config does not check: %v\n%s", err, out)
	}

	r := rig.New(t, rig.ClientNAT, rig.WithPrefix(nsPrefix))
	s, err := r.StartVsftpd(rig.VsftpdOptions{})
	if err != nil {
		t.Fatal(err)
	}
	old := ftpalgBin
	ftpalgBin = bin
	defer func() { ftpalgBin = old }()
	g := startFtpalg(t, r, args...)
	if _, err := s.CreateFile("1m.bin", 1<<20); err != nil {
		t.Fatal(err)
	}
	if _, err := r.CurlGet(rig.PORT, r.URL("1m.bin"), filepath.Join(t.TempDir(), "1m.bin")); err != nil {
		t.Fatalf("transfer through the installed ftpalg: %v", err)
	}
	statusArgs := []string{"status"}
	for i, a := range args {
		if a == "--status-socket" && i+1 < len(args) {
			statusArgs = append(statusArgs, "--socket", args[i+1])
		}
	}
	out, err := r.Run(t.Context(), rig.Router, bin, statusArgs...)
	if err != nil || !strings.Contains(out, "192.0.2.10") {
		t.Fatalf("ftpalg status: %v\n%s", err, out)
	}
	if n := len(g.waitEvents("rewrite", 1)); n != 1 {
		t.Errorf("%d rewrites, want 1", n)
	}
	g.stop()
}
