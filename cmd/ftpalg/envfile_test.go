package main

import (
	"flag"
	"os"
	"regexp"
	"slices"
	"testing"
)

// TestEnvFileListsEveryFlag keeps deploy/ftpalg.default, the file admins
// edit, honest: it names every flag of `ftpalg run` and no other.
func TestEnvFileListsEveryFlag(t *testing.T) {
	b, err := os.ReadFile("../../deploy/ftpalg.default")
	if err != nil {
		t.Fatal(err)
	}
	var o options
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	o.define(fs, true)
	var want []string
	fs.VisitAll(func(f *flag.Flag) { want = append(want, f.Name) })

	var listed []string
	for _, m := range regexp.MustCompile(`--([a-z0-9-]+)`).FindAllSubmatch(b, -1) {
		if n := string(m[1]); !slices.Contains(listed, n) {
			listed = append(listed, n)
		}
	}
	for _, n := range want {
		if !slices.Contains(listed, n) {
			t.Errorf("deploy/ftpalg.default does not list --%s", n)
		}
	}
	for _, n := range listed {
		if !slices.Contains(want, n) {
			t.Errorf("deploy/ftpalg.default lists --%s, which ftpalg run does not have", n)
		}
	}
}
