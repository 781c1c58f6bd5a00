package main

import (
	"flag"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/ftpalg/ftpalg/config"
	"github.com/ftpalg/ftpalg/daemon"
	"github.com/ftpalg/ftpalg/internal/manpage"
	"github.com/ftpalg/ftpalg/status"
)

// cmdManpage prints ftpalg.8. It is hidden from the usage text: the build
// (make man, make install, make deb) runs it so the installed page always
// describes the flags of the binary beside it.
func cmdManpage(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("manpage", "Print the manual page ftpalg(8) in roff.", stderr)
	date := fs.String("date", "", "the page's `date` (YYYY-MM-DD), for reproducible builds the last commit's")
	if err := fs.Parse(args); err != nil {
		return err
	}
	_, err := stdout.Write(manpage.Render(manPage(*date)))
	return err
}

// manPage is ftpalg(8): the commands and flags from commands(), the
// configuration keys from config.Keys, and the text that no definition
// holds (files, signals, exit status).
func manPage(date string) manpage.Page {
	p := manpage.Page{
		Name: "ftpalg", Section: "8", Date: date, Source: "ftpalg " + version, Manual: "System Administration",
		Summary: "transparent FTP application-layer gateway for Linux routers",
		Description: []string{intro, "Run 'ftpalg run' on a router (or let ftpalg.service run it): it sends the FTP control connections through NFQUEUE, " + "rewrites the addresses in them where NAT makes them wrong, keeps the TCP sequence numbers consistent and opens one exact pinhole per announced data connection. Flags for the service go in /etc/default/ftpalg, settings in /etc/ftpalg/ftpalg.toml.",
			"A boolean flag is turned off with =false: --install-rules=false."},
	}
	var runFlags []manpage.Flag
	for _, c := range commands() {
		mc := manpage.Command{Name: c.name, Args: c.args, Summary: c.about}
		if c.define != nil {
			fs := flag.NewFlagSet(c.name, flag.ContinueOnError)
			c.define(fs)
			mc.Flags = manpage.FlagsOf(fs)
			for i := range mc.Flags {
				mc.Flags[i].Default = namespaceFree(mc.Flags[i].Default)
			}
		}
		if c.name == "run" {
			runFlags = mc.Flags
		}
		p.Commands = append(p.Commands, mc)
	}

	keys := config.Keys()
	cfg := manpage.Section{Title: "Configuration file", Paragraphs: []string{
		"--config FILE reads a flat TOML file whose keys mirror the flags of 'ftpalg run'; a flag given on the command line wins over the file. " +
			"Unknown keys and invalid values are errors with their line number; 'ftpalg config check FILE' reports them without starting. The keys:"}}
	for _, f := range runFlags {
		for k, fl := range keys {
			if fl == f.Name {
				cfg.Items = append(cfg.Items, manpage.Item{Tag: k, Text: "sets --" + fl, Literal: true})
			}
		}
	}
	slices.SortStableFunc(cfg.Items, func(a, b manpage.Item) int { return strings.Compare(a.Tag, b.Tag) })

	p.Sections = []manpage.Section{cfg,
		{Title: "Files", Items: []manpage.Item{
			{Tag: "/etc/default/ftpalg", Text: "FTPALG_FLAGS, the flags ftpalg.service passes to 'ftpalg run'.", Literal: true},
			{Tag: "/etc/ftpalg/ftpalg.toml", Text: "the configuration file the default FTPALG_FLAGS names.", Literal: true},
			{Tag: status.DefaultSocket, Text: "the status socket 'ftpalg status' reads (--status-socket).", Literal: true},
			{Tag: defaultStateDir, Text: "sequence offsets of rewritten connections, kept across a restart (--state-dir); keep it on tmpfs.", Literal: true},
			{Tag: "/usr/share/doc/ftpalg/examples", Text: "example firewall scripts that include 'ftpalg rules', and the deployment notes.", Literal: true},
		}},
		{Title: "Signals", Items: []manpage.Item{
			{Tag: "SIGTERM", Text: "hand over: stop reading the queue, save the connections' state, and exit 0, leaving the queue rules, chains, nftables tables and open pinholes in place. Until the next ftpalg binds the queue, control packets are dropped (TCP retransmits them; with --queue-bypass they pass unexamined); the next ftpalg adopts what it finds and continues every connection. systemctl restart sends it (RestartKillSignal)."},
			{Tag: "SIGINT", Text: "stop for good: unbind the queue, close every pinhole, remove the chains and tables ftpalg installed, and exit 0. systemctl stop sends it (KillSignal)."},
			{Tag: "SIGKILL, a crash", Text: "like SIGTERM without the last save; the next start adopts the rules, 'ftpalg cleanup' removes them."},
		}},
		{Title: "Exit status", Items: []manpage.Item{
			{Tag: "0", Text: "success, or a clean stop on a signal."},
			{Tag: "1", Text: "an error: no CAP_NET_ADMIN, the queue is taken, a netlink or iptables failure. One line on standard error says which."},
			{Tag: "2", Text: "a usage error: an unknown command or flag, or an invalid value."},
		}},
		{Title: "Examples", Lines: []string{
			"ftpalg run --outside-if eth0 --control-ports 21,2121",
			"ftpalg rules --ipv6=false > /etc/iptables/ftpalg.rules",
			"ftpalg status --json",
			"ftpalg cleanup --config /etc/ftpalg/ftpalg.toml",
		}},
		{Title: "See also", Paragraphs: []string{"iptables(8), iptables-restore(8), nft(8), conntrack(8), systemctl(1)"}},
	}
	return p
}

// namespaceFree undoes daemon.RuntimePath in a default: the page is built
// wherever the package is (a container has its own network namespace) but
// describes the router, where ftpalg runs in the initial one. The note is
// there either way, so the page does not depend on where it was built.
func namespaceFree(def string) string {
	for _, base := range []string{defaultStateDir, status.DefaultSocket} {
		if def == daemon.RuntimePath(base) {
			return fmt.Sprintf("%s; outside the initial network namespace its name gets the namespace's id", base)
		}
	}
	return def
}
