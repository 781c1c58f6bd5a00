package deploy

import (
	"os/exec"
	"strings"
	"testing"
)

// debVersion runs debian/version, which make deb names the package by.
func debVersion(t *testing.T, describe, commits string) string {
	t.Helper()
	out, err := exec.Command("sh", "debian/version", describe, commits).CombinedOutput()
	if err != nil {
		t.Fatalf("debian/version %s: %v\n%s", describe, err, out)
	}
	return strings.TrimSpace(string(out))
}

// git describe output becomes a valid Debian version that dpkg orders the
// way the commits follow each other.
func TestDebianVersion(t *testing.T) {
	cases := []struct{ describe, want string }{ // in ascending order
		{"2609710", "0.0~git50.g2609710"}, // no tag yet: a bare hash
		{"2609710-dirty", "0.0~git50.g2609710+dirty"},
		{"v1.2.3-rc1", "1.2.3~rc1"},
		{"v1.2.3-rc1-2-gabc1234", "1.2.3~rc1+git2.gabc1234"},
		{"v1.2.3", "1.2.3"},
		{"v1.2.3-4-gabc1234", "1.2.3+git4.gabc1234"},
		{"v1.2.3-4-gabc1234-dirty", "1.2.3+git4.gabc1234+dirty"},
		{"v1.2.4", "1.2.4"},
	}
	dpkg, _ := exec.LookPath("dpkg")
	prev := ""
	for _, c := range cases {
		got := debVersion(t, c.describe, "50")
		if got != c.want {
			t.Errorf("%s: %q, want %q", c.describe, got, c.want)
		}
		if dpkg == "" {
			continue
		}
		if out, err := exec.Command(dpkg, "--validate-version", got).CombinedOutput(); err != nil {
			t.Errorf("%s: dpkg rejects %q: %s", c.describe, got, out)
		}
		if prev != "" && exec.Command(dpkg, "--compare-versions", prev, "lt", got).Run() != nil {
			t.Errorf("dpkg does not order %s before %s", prev, got)
		}
		prev = got
	}
}

// The maintainer scripts parse (sh is dash on Debian) and never touch this system's
// systemd when dpkg installs into another root.
func TestMaintainerScripts(t *testing.T) {
	for _, s := range []string{"postinst", "prerm", "postrm", "version"} {
		if out, err := exec.Command("sh", "-n", "debian/"+s).CombinedOutput(); err != nil {
			t.Errorf("%s: %v\n%s", s, err, out)
		}
		if s == "version" {
			continue
		}
		if out, err := exec.Command("grep", "-c", `DPKG_ROOT`, "debian/"+s).Output(); err != nil || strings.TrimSpace(string(out)) == "0" {
			t.Errorf("%s does not check DPKG_ROOT", s)
		}
	}
}
