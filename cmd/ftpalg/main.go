// Command ftpalg is a transparent FTP application-layer gateway for Linux
// routers. See `ftpalg help`.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/ftpalg/ftpalg/daemon"
	"github.com/ftpalg/ftpalg/rules"
	"github.com/ftpalg/ftpalg/status"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// intro opens the usage text and the manual page's DESCRIPTION.
const intro = `ftpalg makes FTP work through NAT and strict firewalls: it rewrites the
addresses in PORT, EPRT, 227 and 229 (and LPRT/228) to the ones the peer can
reach, keeps TCP sequence numbers right, and opens an exact, short-lived
pinhole for each announced data connection.`

// command is one subcommand. The usage text, the dispatch in run and the
// manual page (`ftpalg manpage`) are all made from the table in commands.
type command struct {
	name, args string // "config", "check <file>"
	summary    string // the usage text's line
	about      string // -help's and the manual page's paragraph
	// define registers the command's flags on fs, for the manual page;
	// nil when it has none. The command itself defines the same ones.
	define func(fs *flag.FlagSet)
	run    func(args []string, stdout, stderr io.Writer) error
}

func commands() []command {
	return []command{
		{"run", "[flags]", "run the gateway (root or CAP_NET_ADMIN)", aboutRun,
			func(fs *flag.FlagSet) { new(options).define(fs, true) },
			func(args []string, _, stderr io.Writer) error { return cmdRun(args, stderr) }},
		{"rules", "[flags]", "print ftpalg's chains (iptables-restore) or nftables fragment (--format nft)", aboutRules,
			func(fs *flag.FlagSet) { rulesFlags(fs) }, cmdRules},
		{"status", "[--json]", "show the running gateway: connections, pinholes, counters", aboutStatus,
			func(fs *flag.FlagSet) { statusFlags(fs) }, cmdStatus},
		{"cleanup", "[flags]", "remove what a previous run left: chains, queue rules, nftables tables, pinholes", aboutCleanup,
			func(fs *flag.FlagSet) { new(options).define(fs, true) },
			func(args []string, _, stderr io.Writer) error { return cmdCleanup(args, stderr) }},
		{"config", "check <file>", "validate a configuration file", aboutConfig, nil, cmdConfig},
		{"version", "", "print the version", "Print the version and exit.", nil,
			func(_ []string, stdout, _ io.Writer) error {
				_, err := fmt.Fprintln(stdout, "ftpalg", version)
				return err
			}},
	}
}

// usage is the text `ftpalg help` prints.
func usage() string {
	var b strings.Builder
	b.WriteString(intro + "\n\nUsage:\n")
	for _, c := range commands() {
		fmt.Fprintf(&b, "  ftpalg %-22s %s\n", strings.TrimSpace(c.name+" "+c.args), c.summary)
	}
	b.WriteString("\nRun 'ftpalg <command> -help' for the flags of a command, 'man ftpalg' for everything.\n")
	return b.String()
}

func main() {
	code := run(os.Args[1:], os.Stdout, os.Stderr)
	os.Exit(code)
}

// run is main without the exit, for tests.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage())
		return 2
	}
	var err error
	i := slices.IndexFunc(commands(), func(c command) bool { return c.name == args[0] })
	switch {
	case i >= 0:
		err = commands()[i].run(args[1:], stdout, stderr)
	case args[0] == "manpage": // hidden: the build writes ftpalg.8 with it
		err = cmdManpage(args[1:], stdout, stderr)
	case slices.Contains([]string{"help", "-h", "-help", "--help"}, args[0]):
		fmt.Fprint(stdout, usage())
	default:
		fmt.Fprintf(stderr, "ftpalg: unknown command %q\n\n%s", args[0], usage())
		return 2
	}
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		fmt.Fprintln(stderr, "ftpalg:", err)
		return 2
	}
	fmt.Fprintln(stderr, "ftpalg:", err)
	return 1
}

func newFlagSet(name, summary string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: ftpalg %s [flags]\n\n%s\n\nFlags:\n", name, summary)
		fs.PrintDefaults()
	}
	return fs
}

const aboutRun = "Run the gateway. SIGTERM hands over: ftpalg stops reading the queue and exits, leaving its rules,\n" +
	"tables and pinholes for the next ftpalg, which takes every connection over (control packets are dropped\n" +
	"and retransmitted meanwhile). SIGINT stops for good: every rule, table and pinhole is removed."

const aboutCleanup = "Remove whatever a previous run left in the kernel: after SIGTERM with no successor, a crash or an\n" +
	"error exit, ftpalg's queue rules still catch control traffic, which is dropped while no ftpalg runs.\n" +
	"Takes the flags of run (or its --config) to know the setup; exits 0 when nothing is there. Never run\n" +
	"it while ftpalg runs."

// runConfig parses the flags of run (which cleanup shares) and --config
// into the daemon's configuration.
func runConfig(name, about string, args []string, stderr io.Writer) (daemon.Config, error) {
	var o options
	fs := newFlagSet(name, about, stderr)
	o.define(fs, true)
	if err := fs.Parse(args); err != nil {
		return daemon.Config{}, err
	}
	if err := o.applyConfig(fs); err != nil {
		return daemon.Config{}, err
	}
	log, err := o.logger(stderr)
	if err != nil {
		return daemon.Config{}, err
	}
	return o.daemonConfig(log)
}

func cmdRun(args []string, stderr io.Writer) error {
	cfg, err := runConfig("run", aboutRun, args, stderr)
	if err != nil {
		return err
	}
	ctx, stop := daemon.SignalContext(context.Background())
	defer stop()
	return daemon.Run(ctx, cfg)
}

func cmdCleanup(args []string, stderr io.Writer) error {
	cfg, err := runConfig("cleanup", aboutCleanup, args, stderr)
	if err != nil {
		return err
	}
	return daemon.Cleanup(cfg)
}

const aboutRules = "Print what a firewall script must contain for ftpalg.\n" +
	"--format iptables: ftpalg's chains and jumps as iptables-restore fragments, for scripts that include\n" +
	"them and run 'ftpalg run --install-rules=false'; load each with 'iptables-restore --noflush'.\n" +
	"--format nft: the rule an nftables-native firewall (policy drop) includes in its own input/forward\n" +
	"chains so ftpalg's pinholes are accepted there."

// rulesFlags defines the flags of `ftpalg rules` on fs.
func rulesFlags(fs *flag.FlagSet) (o *options, format *string) {
	o = new(options)
	o.define(fs, false)
	format = fs.String("format", "iptables", "`format`: iptables (iptables-restore fragments) or nft (a file to include in your nftables chains)")
	return o, format
}

func cmdRules(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("rules", aboutRules, stderr)
	o, format := rulesFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := o.applyConfig(fs); err != nil {
		return err
	}
	rc, err := o.rulesConfig()
	if err != nil {
		return err
	}
	switch *format {
	case "iptables":
		for _, fam := range rc.Families() {
			frag, err := rules.Fragment(rc, fam)
			if err != nil {
				return fmt.Errorf("%w: %w", errUsage, err)
			}
			fmt.Fprint(stdout, frag)
		}
	case "nft":
		frag, err := rules.NFTFragment(rc)
		if err != nil {
			return fmt.Errorf("%w: %w", errUsage, err)
		}
		fmt.Fprint(stdout, frag)
	default:
		return fmt.Errorf("%w: --format %q: want iptables or nft", errUsage, *format)
	}
	return nil
}

const aboutStatus = "Show the running gateway: tracked control connections, open pinholes, counters."

func statusFlags(fs *flag.FlagSet) (asJSON *bool, socket *string) {
	asJSON = fs.Bool("json", false, "print the snapshot as JSON, for scripts")
	socket = fs.String("socket", daemon.RuntimePath(status.DefaultSocket), "the daemon's status `socket` (its --status-socket)")
	return asJSON, socket
}

func cmdStatus(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("status", aboutStatus, stderr)
	asJSON, socket := statusFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := status.Fetch(ctx, *socket)
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(s)
	}
	return status.Render(stdout, s)
}

const aboutConfig = "Check a configuration file the way 'ftpalg run --config' reads it: every key known, every value\n" +
	"valid, the combination accepted. Prints '<file>: ok' or each mistake with its line number."

func cmdConfig(args []string, stdout, stderr io.Writer) error {
	if len(args) != 2 || args[0] != "check" {
		fmt.Fprintln(stderr, "Usage: ftpalg config check <file>")
		return fmt.Errorf("%w: want 'config check <file>'", errUsage)
	}
	var o options
	fs := newFlagSet("run", "", io.Discard)
	o.define(fs, true)
	o.configPath = args[1]
	if err := o.applyConfig(fs); err != nil {
		return err
	}
	if _, err := o.daemonConfig(slog.New(slog.NewTextHandler(io.Discard, nil))); err != nil {
		return fmt.Errorf("%s: %w", args[1], err)
	}
	fmt.Fprintf(stdout, "%s: ok\n", args[1])
	return nil
}
