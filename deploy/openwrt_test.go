package deploy

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ftpalg/ftpalg/internal/testenv"
	"github.com/ftpalg/ftpalg/rules"
)

// fw4Table is the part of the ruleset OpenWrt's fw4 renders that matters
// to ftpalg.nft: table inet fw4, its forward chain with policy drop, the
// chain-pre include first, then fw4's own rules.
const fw4Table = `table inet fw4 {
	chain forward {
		type filter hook forward priority filter; policy drop;
		include %q
		ct state vmap { established : accept, related : accept, invalid : drop }
		iifname "br-lan" accept
	}
}
`

// The fw4 snippet accepts exactly ftpalg's default mark bit on new TCP
// connections, and the init script parses.
func TestOpenWrtFiles(t *testing.T) {
	b, err := os.ReadFile("openwrt/ftpalg.nft")
	if err != nil {
		t.Fatal(err)
	}
	mark := fmt.Sprintf("%#x", rules.DefaultAcceptMark)
	if want := "meta l4proto tcp ct state new meta mark & " + mark + " == " + mark; !strings.Contains(string(b), want) {
		t.Errorf("openwrt/ftpalg.nft lacks %q", want)
	}
	if out, err := exec.Command("sh", "-n", "openwrt/ftpalg.init").CombinedOutput(); err != nil {
		t.Errorf("openwrt/ftpalg.init: %v\n%s", err, out)
	}
	init, err := os.ReadFile("openwrt/ftpalg.init")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"#!/bin/sh /etc/rc.common\n", "\nUSE_PROCD=1\n", "\nstart_service() {\n", "procd_set_param command \"$PROG\" run "} {
		if !strings.Contains(string(init), want) {
			t.Errorf("openwrt/ftpalg.init lacks %q", want)
		}
	}
}

// TestOpenWrtNice keeps the init script's priority the unit's: both run the
// queue reader ahead of busy processes, and the bench measures at the
// unit's value.
func TestOpenWrtNice(t *testing.T) {
	value := func(file, prefix string) string {
		t.Helper()
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(strings.TrimSpace(l), prefix); ok {
				return strings.TrimSpace(v)
			}
		}
		t.Fatalf("%s has no %q line", file, prefix)
		return ""
	}
	unit, init := value("ftpalg.service", "Nice="), value("openwrt/ftpalg.init", "procd_set_param nice ")
	if unit != init {
		t.Errorf("ftpalg.service Nice=%s, openwrt/ftpalg.init procd_set_param nice %s", unit, init)
	}
}

// The snippet loads where fw4 includes it and becomes the first rule of
// fw4's forward chain, ahead of its drop.
func TestOpenWrtSnippetLoads(t *testing.T) {
	requireRoot(t, "nft in a network namespace")
	testenv.RequireTool(t, "nft")
	abs, err := filepath.Abs("openwrt/ftpalg.nft")
	if err != nil {
		t.Fatal(err)
	}
	ns := netns(t, "w")
	ruleset := []byte(fmt.Sprintf(fw4Table, abs))
	inNS(t, ns, ruleset, "nft", "-c", "-f", "-")
	inNS(t, ns, ruleset, "nft", "-f", "-")
	out := inNS(t, ns, nil, "nft", "list", "chain", "inet", "fw4", "forward")
	var body []string
	for _, l := range strings.Split(out, "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "type ") && !strings.HasPrefix(l, "table ") &&
			!strings.HasPrefix(l, "chain ") && l != "}" {
			body = append(body, l)
		}
	}
	mark := fmt.Sprintf("%#x", rules.DefaultAcceptMark)
	if len(body) < 3 || !strings.Contains(body[0], "meta mark & "+mark+" == "+mark) || !strings.Contains(body[0], "accept") ||
		!strings.Contains(body[1], "ct mark & "+mark+" == "+mark) || !strings.Contains(body[1], "accept") ||
		!strings.HasPrefix(body[2], "ct state vmap") {
		t.Errorf("ftpalg's two rules are not first in fw4's forward chain:\n%s", out)
	}
}
