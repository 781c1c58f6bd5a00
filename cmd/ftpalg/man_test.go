package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/ftpalg/ftpalg/config"
	"github.com/ftpalg/ftpalg/internal/testenv"
)

// helpFlags returns the flags `ftpalg <name> -help` lists: what the command
// really parses, however its flags were defined.
func helpFlags(t *testing.T, name string) []string {
	t.Helper()
	var out bytes.Buffer
	run([]string{name, "-help"}, &out, &out)
	var flags []string
	for _, m := range regexp.MustCompile(`(?m)^  -([a-z0-9-]+)`).FindAllStringSubmatch(out.String(), -1) {
		flags = append(flags, m[1])
	}
	return flags
}

// TestManPageMatchesCommands keeps ftpalg.8 honest: each command of the
// usage text has its section, with exactly the flags the command parses,
// and every configuration key is listed.
func TestManPageMatchesCommands(t *testing.T) {
	page := manPage("2026-12-06")
	var o bytes.Buffer
	run([]string{"help"}, &o, &o)
	help := o.String()
	if len(page.Commands) != len(commands()) {
		t.Fatalf("%d commands on the page, %d defined", len(page.Commands), len(commands()))
	}
	for _, c := range page.Commands {
		if !strings.Contains(help, "  ftpalg "+strings.TrimSpace(c.Name+" "+c.Args)+" ") {
			t.Errorf("usage text lacks %q:\n%s", c.Name, help)
		}
		var onPage []string
		for _, f := range c.Flags {
			onPage = append(onPage, f.Name)
		}
		if parsed := helpFlags(t, c.Name); !slices.Equal(onPage, parsed) {
			t.Errorf("ftpalg %s parses %q, the man page lists %q", c.Name, parsed, onPage)
		}
	}
	roff := string(manpageRoff(t))
	for k, fl := range config.Keys() {
		if !strings.Contains(roff, ".B \""+strings.ReplaceAll(k, "-", `\-`)+"\"\nsets \\-\\-"+strings.ReplaceAll(fl, "-", `\-`)) {
			t.Errorf("man page lacks configuration key %s", k)
		}
	}
}

// manpageRoff is what `ftpalg manpage` prints.
func manpageRoff(t *testing.T) []byte {
	t.Helper()
	var out, errs bytes.Buffer
	if code := run([]string{"manpage", "--date", "2026-12-06"}, &out, &errs); code != 0 {
		t.Fatalf("ftpalg manpage: exit %d: %s", code, errs.String())
	}
	return out.Bytes()
}

// `man -l` shows the page as an admin sees it, without one groff warning.
func TestManPageRenders(t *testing.T) {
	for _, tool := range []string{"man", "groff"} {
		testenv.RequireTool(t, tool)
	}
	file := filepath.Join(t.TempDir(), "ftpalg.8")
	if err := os.WriteFile(file, manpageRoff(t), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("groff", "-man", "-Tutf8", "-ww", "-z", file).CombinedOutput(); err != nil || len(out) > 0 {
		t.Fatalf("groff warnings: %v\n%s", err, out)
	}
	cmd := exec.Command("man", "-l", file)
	cmd.Env = append(os.Environ(), "MANWIDTH=80", "MAN_KEEP_FORMATTING=", "PAGER=cat", "MANPAGER=cat", "LC_ALL=C.UTF-8")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("man -l: %v\n%s", err, out)
	}
	text := regexp.MustCompile(".\b").ReplaceAllString(string(out), "") // overstrike bold
	for _, want := range []string{"FTPALG(8)", "ftpalg run [flags]", "--control-ports ports", "pinhole_timeout", "/etc/default/ftpalg", "EXIT STATUS"} {
		if !strings.Contains(text, want) {
			t.Errorf("rendered page lacks %q:\n%s", want, text)
		}
	}
}
