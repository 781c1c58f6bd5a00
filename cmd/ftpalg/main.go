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
	"os/signal"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/ftpalg/ftpalg/daemon"
	"github.com/ftpalg/ftpalg/rules"
	"github.com/ftpalg/ftpalg/status"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

const usage = `ftpalg makes FTP work through NAT and strict firewalls: it rewrites the
addresses in PORT, EPRT, 227 and 229 (and LPRT/228) to the ones the peer can
reach, keeps TCP sequence numbers right, and opens an exact, short-lived
pinhole for each announced data connection.

Usage:
  ftpalg run [flags]            run the gateway (root or CAP_NET_ADMIN)
  ftpalg rules [flags]          print ftpalg's chains (iptables-restore) or nftables fragment (--format nft)
  ftpalg status [--json]        show the running gateway: connections, pinholes, counters
  ftpalg config check <file>    validate a configuration file
  ftpalg version                print the version

Run 'ftpalg <command> -help' for the flags of a command.
`

func main() {
	code := run(os.Args[1:], os.Stdout, os.Stderr)
	os.Exit(code)
}

// run is main without the exit, for tests.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	var err error
	switch args[0] {
	case "run":
		err = cmdRun(args[1:], stderr)
	case "rules":
		err = cmdRules(args[1:], stdout, stderr)
	case "status":
		err = cmdStatus(args[1:], stdout, stderr)
	case "config":
		err = cmdConfig(args[1:], stdout, stderr)
	case "version":
		fmt.Fprintln(stdout, "ftpalg", version)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
	default:
		fmt.Fprintf(stderr, "ftpalg: unknown command %q\n\n%s", args[0], usage)
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

func cmdRun(args []string, stderr io.Writer) error {
	var o options
	fs := newFlagSet("run", "Run the gateway until SIGTERM or SIGINT, then remove every rule it installed.", stderr)
	o.define(fs, true)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := o.applyConfig(fs); err != nil {
		return err
	}
	log, err := o.logger(stderr)
	if err != nil {
		return err
	}
	cfg, err := o.daemonConfig(log)
	if err != nil {
		return err
	}
	// A router daemon holds many small, long-lived connection records and
	// makes little garbage: collecting at 50% growth instead of 100% keeps
	// its resident memory close to what it holds (see the README's memory
	// figure). GOGC in the environment still wins.
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(50)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	return daemon.Run(ctx, cfg)
}

func cmdRules(args []string, stdout, stderr io.Writer) error {
	var o options
	fs := newFlagSet("rules", "Print what a firewall script must contain for ftpalg.\n"+
		"--format iptables: ftpalg's chains and jumps as iptables-restore fragments, for scripts that include\n"+
		"them and run 'ftpalg run --install-rules=false'; load each with 'iptables-restore --noflush'.\n"+
		"--format nft: the rule an nftables-native firewall (policy drop) includes in its own input/forward\n"+
		"chains so ftpalg's pinholes are accepted there.", stderr)
	o.define(fs, false)
	format := fs.String("format", "iptables", "`format`: iptables (iptables-restore fragments) or nft (a file to include in your nftables chains)")
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

func cmdStatus(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("status", "Show the running gateway: tracked control connections, open pinholes, counters.", stderr)
	asJSON := fs.Bool("json", false, "print the snapshot as JSON, for scripts")
	socket := fs.String("socket", daemon.RuntimePath(status.DefaultSocket), "the daemon's status `socket` (its --status-socket)")
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
