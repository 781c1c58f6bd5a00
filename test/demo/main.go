// Command demo shows ftpalg at work: it builds two network-namespace rigs
// (a client behind MASQUERADE, and a server behind a port forward with no
// passive address configured), runs vsftpd and ftpalg in them, makes
// active and passive transfers with curl and lftp, prints a table of the
// results and then what ftpalg did: the addresses it rewrote and the
// pinholes it opened and closed. Everything is torn down at the end, also
// on Ctrl-C.
//
// Run it as root with `make demo`, or
//
//	FTPALG_BIN=bin/ftpalg go run ./test/demo
//
// Without FTPALG_BIN it builds ftpalg first.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/ftpalg/ftpalg/test/rig"
)

// fileSize is the size of the file every transfer downloads.
const fileSize = 5 << 20

func main() {
	prefix := flag.String("prefix", "demo", "network namespace name prefix (1-6 lowercase letters or digits, ending in a letter)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Stdout, *prefix); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		stop()
		os.Exit(1)
	}
}

// row is one transfer of the demo.
type row struct {
	topo   rig.Topology
	mode   rig.Mode
	client rig.ClientKind
	err    error
	bytes  int64
	took   time.Duration
}

// scenario is one rig with what it demonstrates.
type scenario struct {
	topo rig.Topology
	what string
}

var scenarios = []scenario{
	{rig.ClientNAT, "client 192.0.2.10 behind MASQUERADE (198.51.100.1), server 198.51.100.20: active mode needs PORT/EPRT rewritten"},
	{rig.ServerForward, "server 192.0.2.20 behind a port forward of 198.51.100.1:21, no passive address configured: passive mode needs the 227 rewritten"},
}

func run(ctx context.Context, w io.Writer, prefix string) error {
	if os.Geteuid() != 0 {
		return errors.New("requires root: the demo creates network namespaces, veth pairs and firewall rules")
	}
	bin, cleanup, err := ftpalgBinary(ctx)
	if err != nil {
		return err
	}
	defer cleanup()
	start := time.Now()
	var rows []row
	logs := map[rig.Topology]string{}
	for _, sc := range scenarios {
		if ctx.Err() != nil {
			break
		}
		fmt.Fprintf(w, "%v: %s\n", sc.topo, sc.what)
		rs, log, err := runScenario(ctx, sc.topo, prefix, bin)
		rows = append(rows, rs...)
		logs[sc.topo] = log
		if err != nil && ctx.Err() == nil {
			return fmt.Errorf("%v: %w", sc.topo, err)
		}
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("interrupted; everything was torn down: %w", err)
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "TOPOLOGY\tMODE\tCLIENT\tRESULT\tBYTES\tTIME")
	failed := 0
	for _, r := range rows {
		res := "ok"
		if r.err != nil {
			res, failed = "FAILED: "+firstLine(r.err.Error()), failed+1
		}
		fmt.Fprintf(tw, "%v\t%v\t%v\t%s\t%d\t%v\n", r.topo, r.mode, r.client, res, r.bytes, r.took.Round(time.Millisecond))
	}
	tw.Flush()
	for _, sc := range scenarios {
		fmt.Fprintf(w, "\nWhat ftpalg did in %v:\n%s", sc.topo, logs[sc.topo])
	}
	fmt.Fprintf(w, "\n%d transfers, %d failed, in %v; all namespaces removed.\n", len(rows), failed, time.Since(start).Round(100*time.Millisecond))
	if failed > 0 {
		return fmt.Errorf("%d transfers failed", failed)
	}
	return nil
}

// runScenario builds the rig, runs the transfers through ftpalg and
// returns the rows and ftpalg's log, prettified. The rig is closed
// before it returns, whatever happens.
func runScenario(ctx context.Context, topo rig.Topology, prefix, bin string) (rows []row, log string, err error) {
	r, err := rig.Build(ctx, topo, prefix)
	if err != nil {
		return nil, "", err
	}
	defer func() { err = errors.Join(err, r.Close()) }()
	s, err := r.StartServer(rig.Vsftpd, rig.ServerOptions{})
	if err != nil {
		return nil, "", err
	}
	if _, err := s.CreateFile("5m.bin", fileSize); err != nil {
		return nil, "", err
	}
	gw, err := r.Start(rig.Router, bin, "run", "--log-format", "json", "--pinhole-timeout", "5s")
	if err != nil {
		return nil, "", err
	}
	if err := waitRunning(ctx, gw); err != nil {
		return nil, "", err
	}
	for _, c := range []rig.ClientKind{rig.Curl, rig.Lftp} {
		for _, m := range rig.Modes() {
			if ok, _ := c.Supports(m, topo.Family()); !ok || ctx.Err() != nil {
				continue
			}
			out := filepath.Join(r.Dir(), fmt.Sprintf("%v-%v.bin", c, m))
			tctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			res, err := r.RunClient(tctx, c, rig.Job{Op: rig.Get, Mode: m, Remote: []string{"5m.bin"}, Local: out, User: s.User, Password: s.Password})
			cancel()
			rows = append(rows, row{topo: topo, mode: m, client: c, err: err, bytes: res.Bytes, took: res.Duration})
		}
	}
	// Let the last data connection's pinhole close as used, so the log
	// tells the whole story; then SIGINT, a stop for good: ftpalg removes
	// its rules and exits (SIGTERM, a handover, would leave them).
	for deadline := time.Now().Add(8 * time.Second); time.Now().Before(deadline) && ctx.Err() == nil; time.Sleep(50 * time.Millisecond) {
		out := gw.Output()
		if strings.Count(out, `"msg":"pinhole closed"`) >= strings.Count(out, `"msg":"pinhole opened"`) {
			break
		}
	}
	if err := syscall.Kill(gw.Pid(), syscall.SIGINT); err != nil {
		return rows, "", err
	}
	select {
	case <-gw.Done():
	case <-time.After(10 * time.Second):
	}
	if err := gw.Stop(); err != nil {
		return rows, "", err
	}
	return rows, prettyLog(gw.Output()), nil
}

// waitRunning waits for ftpalg's start-up message.
func waitRunning(ctx context.Context, p *rig.Proc) error {
	deadline := time.After(10 * time.Second)
	for !strings.Contains(p.Output(), `"msg":"ftpalg running"`) {
		select {
		case <-p.Done():
			return fmt.Errorf("ftpalg exited at start: %v: %s", p.Err(), p.Output())
		case <-deadline:
			return fmt.Errorf("ftpalg did not start: %s", p.Output())
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil
}

// prettyLog renders ftpalg's rewrite, pinhole and refusal records as
// aligned text.
func prettyLog(out string) string {
	var b strings.Builder
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	n := 0
	for line := range strings.Lines(out) {
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) != nil {
			continue
		}
		str := func(k string) string {
			if v, ok := rec[k]; ok {
				return fmt.Sprint(v)
			}
			return ""
		}
		// slog's JSON handler writes durations as nanoseconds.
		dur := func(k string) string {
			if v, ok := rec[k].(float64); ok {
				return time.Duration(v).Round(10 * time.Microsecond).String()
			}
			return str(k)
		}
		ts := str("time")
		if t, err := time.Parse(time.RFC3339Nano, ts); err == nil {
			ts = t.Format("15:04:05.000")
		}
		var what string
		switch str("msg") {
		case "rewrite":
			what = fmt.Sprintf("rewrote %s  %s -> %s", str("cmd"), str("from"), str("to"))
		case "pinhole opened":
			what = fmt.Sprintf("opened pinhole  %s  (in %s)", str("pinhole"), dur("took"))
		case "pinhole closed":
			what = fmt.Sprintf("closed pinhole  %s  (%s after %s)", str("pinhole"), str("why"), dur("age"))
		case "refused":
			what = fmt.Sprintf("refused %s %s: %s", str("cmd"), str("announced"), str("reason"))
		default:
			continue
		}
		n++
		fmt.Fprintf(tw, "  %s\tsession %s\t%s\n", ts, str("session"), what)
	}
	tw.Flush()
	if n == 0 {
		return "  (nothing: no transfer needed ftpalg)\n"
	}
	return b.String()
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	if len(s) > 100 {
		s = s[:100] + "..."
	}
	return s
}

// ftpalgBinary returns $FTPALG_BIN, or builds ftpalg into a temporary
// directory that cleanup removes.
func ftpalgBinary(ctx context.Context) (bin string, cleanup func(), err error) {
	if bin := os.Getenv("FTPALG_BIN"); bin != "" {
		return bin, func() {}, nil
	}
	dir, err := os.MkdirTemp("", "ftpalg-demo")
	if err != nil {
		return "", nil, err
	}
	bin = filepath.Join(dir, "ftpalg")
	if out, err := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/ftpalg/ftpalg/cmd/ftpalg").CombinedOutput(); err != nil {
		os.RemoveAll(dir)
		return "", nil, fmt.Errorf("building ftpalg: %w: %s", err, out)
	}
	return bin, func() { os.RemoveAll(dir) }, nil
}
