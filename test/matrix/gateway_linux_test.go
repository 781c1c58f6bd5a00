package matrix

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"syscall"
	"time"

	"github.com/ftpalg/ftpalg/rules"
	"github.com/ftpalg/ftpalg/test/rig"
)

// pinholeTimeout is ftpalg's --pinhole-timeout in the matrix: short, so
// the check that no pinhole outlives it is quick.
const pinholeTimeout = 2 * time.Second

var errGateway = errors.New("ftpalg check failed")

// adminRules returns what the admin adds to the nftables-native ruleset
// for the ALG under test. The kernel helper needs nothing: its
// expectations pass the ruleset's own `ct state established,related
// accept`. ftpalg's pinholes must be part of that ruleset (an accept in
// ftpalg's own table would not override the admin's policy drop): the
// rule `ftpalg rules --format nft` prints, in both the input and the
// forward chain.
func adminRules(helper bool) (rig.AdminRules, error) {
	if helper {
		return rig.AdminRules{}, nil
	}
	rule, err := nftFragmentRule()
	if err != nil {
		return rig.AdminRules{}, err
	}
	return rig.AdminRules{NFTInput: rule, NFTForward: rule}, nil
}

// nftFragmentRule returns the rule lines (not the comments) of what
// `ftpalg rules --format nft` prints with the defaults.
func nftFragmentRule() (string, error) {
	cfg := rules.DefaultConfig()
	cfg.AcceptMark = rules.DefaultAcceptMark
	frag, err := rules.NFTFragment(cfg)
	if err != nil {
		return "", fmt.Errorf("%w: %w", errGateway, err)
	}
	var out []string
	for l := range strings.Lines(frag) {
		if !strings.HasPrefix(l, "#") {
			out = append(out, strings.TrimSpace(l))
		}
	}
	return strings.Join(out, "\n"), nil
}

// gateway is ftpalg running in a rig's router namespace.
type gateway struct {
	r *rig.Rig
	p *rig.Proc
}

// startFtpalg runs ftpalg in the router and waits until it serves.
func startFtpalg(r *rig.Rig, bin string) (*gateway, error) {
	p, err := r.Start(rig.Router, bin, "run", "--log-format", "json", "--log-level", "info",
		"--pinhole-timeout", pinholeTimeout.String())
	if err != nil {
		return nil, err
	}
	deadline := time.After(10 * time.Second)
	for !strings.Contains(p.Output(), `"msg":"ftpalg running"`) {
		select {
		case <-p.Done():
			return nil, fmt.Errorf("%w: ftpalg exited at start: %v: %s", errGateway, p.Err(), p.Output())
		case <-deadline:
			p.Stop()
			return nil, fmt.Errorf("%w: ftpalg did not start: %s", errGateway, p.Output())
		case <-time.After(10 * time.Millisecond):
		}
	}
	return &gateway{r: r, p: p}, nil
}

// event is one of ftpalg's JSON log records.
type event map[string]any

func (e event) session() string { return fmt.Sprint(e["session"]) }

// events returns the log records with message msg.
func (g *gateway) events(msg string) []event {
	var out []event
	for line := range strings.Lines(g.p.Output()) {
		var rec event
		if json.Unmarshal([]byte(line), &rec) == nil && rec["msg"] == msg {
			out = append(out, rec)
		}
	}
	return out
}

// maxPerSession returns the largest number of msg records in one session.
func (g *gateway) maxPerSession(msg string) int {
	n := map[string]int{}
	best := 0
	for _, e := range g.events(msg) {
		s := e.session()
		n[s]++
		best = max(best, n[s])
	}
	return best
}

// pinholeChains are ftpalg's pinhole chains; each must be empty once the
// pinhole timeout has passed.
var pinholeChains = []struct{ tool, table, chain string }{
	{"iptables", "filter", "FTPALG-ACCEPT"},
	{"iptables", "nat", "FTPALG-DNAT"},
	{"ip6tables", "filter", "FTPALG-ACCEPT"},
}

// waitNoPinholes polls ftpalg's pinhole chains until they hold no rule,
// for at most the pinhole timeout plus a margin for the expiry tick.
func (g *gateway) waitNoPinholes(ctx context.Context) error {
	deadline := time.Now().Add(pinholeTimeout + 3*time.Second)
	for {
		var left []string
		for _, c := range pinholeChains {
			out, err := g.r.Run(ctx, rig.Router, c.tool, "-t", c.table, "-S", c.chain)
			if err != nil {
				return fmt.Errorf("listing %s %s %s: %w", c.tool, c.table, c.chain, err)
			}
			for line := range strings.Lines(out) {
				// The static rules (the nftables pinholes' packet mark,
				// the data connections' conntrack mark) are not pinholes.
				if strings.HasPrefix(line, "-A ") && !strings.Contains(line, "ftpalg nftables pinholes") &&
					!strings.Contains(line, "ftpalg data connections") {
					left = append(left, c.tool+" -t "+c.table+" "+strings.TrimSpace(line))
				}
			}
		}
		elems, err := g.r.PinholeElements(ctx)
		if err != nil {
			return err
		}
		for _, e := range elems {
			left = append(left, "nft ftpalg element "+e)
		}
		if len(left) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w: pinholes left after the %v timeout: %s", errGateway, pinholeTimeout, strings.Join(left, "; "))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// stop sends SIGINT (stop for good) and requires exit status 0 and no rule or chain of
// ftpalg's left in either family.
func (g *gateway) stop(ctx context.Context) error {
	if err := syscall.Kill(g.p.Pid(), syscall.SIGINT); err != nil {
		return fmt.Errorf("signalling ftpalg: %w", err)
	}
	select {
	case <-g.p.Done():
	case <-time.After(10 * time.Second):
		g.p.Stop()
		return fmt.Errorf("%w: ftpalg still running 10s after SIGINT", errGateway)
	}
	if err := g.p.Err(); err != nil {
		return fmt.Errorf("%w: ftpalg exited with %v after SIGINT: %s", errGateway, err, tail(g.p.Output(), 400))
	}
	for _, save := range [][]string{{"iptables-save"}, {"ip6tables-save"}, {"nft", "list", "tables"}} {
		out, err := g.r.Run(ctx, rig.Router, save[0], save[1:]...)
		if err != nil {
			return err
		}
		if strings.Contains(strings.ToUpper(out), "FTPALG") {
			return fmt.Errorf("%w: %s after exit still shows ftpalg's rules", errGateway, save)
		}
	}
	return nil
}

// tail returns the last n bytes of s.
func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "..." + s[len(s)-n:]
}
