//go:build linux

package e2e

import (
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/ftpalg/ftpalg/internal/testenv"
)

// TestDebPackage builds the package with `make deb`, checks it with
// lintian, installs it with dpkg into a throw-away root (its own dpkg
// database, maintainer scripts run with DPKG_ROOT set, as
// --force-script-chrootless does), runs the installed unit's command line
// in the rig, purges it and requires the root to hold exactly what it
// held before.
func TestDebPackage(t *testing.T) {
	testenv.RequireRoot(t, "network namespaces")
	for _, tool := range []string{"dpkg", "dpkg-deb"} {
		testenv.RequireTool(t, tool)
	}
	out, err := exec.Command("make", "-C", "../..", "--no-print-directory", "deb").CombinedOutput()
	m := regexp.MustCompile(`(?m)^deb: (dist/\S+\.deb)$`).FindSubmatch(out)
	if err != nil || m == nil {
		t.Fatalf("make deb: %v\n%s", err, out)
	}
	deb, err := filepath.Abs(filepath.Join("../..", string(m[1])))
	if err != nil {
		t.Fatal(err)
	}

	t.Run("contents", func(t *testing.T) { checkDebContents(t, deb) })
	t.Run("lintian", func(t *testing.T) {
		testenv.RequireTool(t, "lintian")
		// The package's own overrides (deploy/debian/lintian-overrides)
		// explain what is left; anything else fails.
		out, err := exec.Command("lintian", "--pedantic", "--fail-on", "error,warning,info,pedantic", deb).CombinedOutput()
		out = regexp.MustCompile(`(?m)^running with root privileges is not recommended!\n`).ReplaceAll(out, nil)
		if err != nil || len(out) > 0 {
			t.Errorf("lintian: %v\n%s", err, out)
		}
	})

	// An empty dpkg database, and the directories every system has that
	// the admin and the daemon write into below.
	root := t.TempDir()
	wants := filepath.Join(root, "etc/systemd/system/multi-user.target.wants")
	for _, d := range []string{"var/lib/dpkg/info", "var/lib/dpkg/updates", "var/lib/dpkg/triggers", "run", wants[len(root)+1:]} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{"var/lib/dpkg/status", "var/lib/dpkg/available"} {
		if err := os.WriteFile(filepath.Join(root, f), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	before := tree(t, root)
	// --force-depends: the throw-away root has no iptables package; the
	// rig's router uses the host's iptables.
	dpkg := func(args ...string) string {
		t.Helper()
		cmd := exec.Command("dpkg", append([]string{"--root=" + root, "--force-script-chrootless", "--force-depends"}, args...)...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("dpkg %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	dpkg("-i", deb)
	if st := dpkg("--status", "ftpalg"); !strings.Contains(st, "Status: install ok installed") {
		t.Fatalf("not installed:\n%s", st)
	}
	if _, err := os.Stat(filepath.Join(root, "usr/share/man/man8/ftpalg.8.gz")); err != nil {
		t.Errorf("no man page: %v", err)
	}

	// The admin edits a conffile and enables the service; ftpalg, run
	// outside systemd, leaves its state directory and socket in /run.
	toml := filepath.Join(root, "etc/ftpalg/ftpalg.toml")
	if err := os.WriteFile(toml, []byte("pinhole_timeout = \"20s\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/lib/systemd/system/ftpalg.service", filepath.Join(wants, "ftpalg.service")); err != nil {
		t.Fatal(err)
	}
	run := filepath.Join(root, "run/ftpalg")
	runInstalledUnit(t, root, "lib/systemd/system/ftpalg.service",
		"--state-dir", filepath.Join(run, "state"), "--status-socket", filepath.Join(run, "status.sock"))
	if _, err := os.Stat(filepath.Join(run, "state")); err != nil {
		t.Errorf("the daemon made no state directory to purge: %v", err)
	}

	dpkg("--purge", "ftpalg")
	after := tree(t, root)
	var left, gone []string
	for _, p := range after {
		if !slices.Contains(before, p) && !dpkgBookkeeping(p) {
			left = append(left, p)
		}
	}
	for _, p := range before {
		if !slices.Contains(after, p) {
			gone = append(gone, p)
		}
	}
	if len(left) > 0 || len(gone) > 0 {
		t.Errorf("purge left %q and removed %q", left, gone)
	}
}

// dpkgBookkeeping is what dpkg itself keeps in its database directory
// beside the status file (backups, lock files), never the package's.
func dpkgBookkeeping(p string) bool {
	rest, ok := strings.CutPrefix(p, "var/lib/dpkg/")
	return ok && (rest == "info/format" || !strings.HasPrefix(rest, "info/") && !strings.Contains(rest, "ftpalg"))
}

// tree lists every path under root, relative, sorted.
func tree(t *testing.T, root string) []string {
	t.Helper()
	var paths []string
	err := filepath.WalkDir(root, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if rel, _ := filepath.Rel(root, p); rel != "." {
			paths = append(paths, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return paths
}

// checkDebContents requires the files the issue names, the conffiles, and
// every example file of deploy/ (what Makefile's EXAMPLES must pick up: a
// new firewall script or HA file there fails this test until it ships).
func checkDebContents(t *testing.T, deb string) {
	out, err := exec.Command("dpkg-deb", "-c", deb).CombinedOutput()
	if err != nil {
		t.Fatalf("dpkg-deb -c: %v\n%s", err, out)
	}
	var files []string
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(l)
		files = append(files, strings.TrimPrefix(f[len(f)-1], "./"))
	}
	want := []string{"usr/sbin/ftpalg", "lib/systemd/system/ftpalg.service", "etc/default/ftpalg",
		"etc/ftpalg/ftpalg.toml", "usr/share/man/man8/ftpalg.8.gz", "usr/share/doc/ftpalg/copyright"}
	err = filepath.WalkDir("../../deploy", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel("../../deploy", p)
		switch {
		case d.IsDir() && (d.Name() == "testdata" || rel == "debian"):
			return filepath.SkipDir
		case d.IsDir(), strings.HasSuffix(rel, ".go"), slices.Contains([]string{"ftpalg.service", "ftpalg.default", "ftpalg.toml"}, rel):
			return nil
		}
		want = append(want, "usr/share/doc/ftpalg/examples/"+rel)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range want {
		if !slices.Contains(files, w) {
			t.Errorf("package lacks %s", w)
		}
	}
	ctl, err := exec.Command("dpkg-deb", "-f", deb, "Version", "Architecture").CombinedOutput()
	if err != nil {
		t.Fatal(err)
	}
	arch, _ := exec.Command("dpkg", "--print-architecture").Output()
	if !strings.Contains(string(ctl), "Architecture: "+strings.TrimSpace(string(arch))) {
		t.Errorf("control: %s", ctl)
	}
	conf, err := exec.Command("dpkg-deb", "--ctrl-tarfile", deb).Output()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(conf), "/etc/default/ftpalg\n/etc/ftpalg/ftpalg.toml\n") {
		t.Errorf("conffiles do not list /etc/default/ftpalg and /etc/ftpalg/ftpalg.toml")
	}
}
