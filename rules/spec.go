package rules

import (
	"fmt"
	"strconv"
	"strings"
)

// hook is one of ftpalg's chains and its table.
type hook struct {
	table string // iptables table
	chain string // ftpalg's chain
}

// hooks returns ftpalg's chains in install order, whatever the Role: a
// sweep must find every chain an earlier run may have made. The queue
// comes last so that control packets are only diverted once the pinhole
// chains are hooked in; removal walks the list backwards. The jumps into
// them depend on the Role (jumpsFor).
func hooks() [3]hook {
	return [3]hook{
		{table: "filter", chain: ChainAccept},
		{table: "nat", chain: ChainDNAT},
		{table: "mangle", chain: ChainQueue},
	}
}

// queueSpecs returns the rules of FTPALG-QUEUE for family f, each in the
// canonical form `iptables -S` prints, so listings compare exactly.
//
// The first rule only matches a conntrack label and does nothing: while any
// connlabel rule is loaded, the kernel gives every new conntrack entry a
// label extension (net->ct.labels_used), where ftpalg keeps a rewritten
// connection's state for a restarted or standby ftpalg. Entries created
// without it cannot hold labels (ctnetlink refuses them with ENOSPC). With
// SkipPureACKs the RETURNs of segments without payload follow, per port
// list: with SkipHandshake first the SYN and SYN/ACK one (synSkipSpec),
// then the pure-ACK ones (never rewritten; mapped by the kernel), then with
// SkipHandshake the same two for the client's FIN. Then the NFQUEUE rules for control packets from
// clients (destination port) and from servers (source port).
func queueSpecs(cfg Config, f Family) [][]string {
	var lists []string
	for chunk := range slicesChunk(cfg.controlPorts(), maxMultiport) {
		list := make([]string, len(chunk))
		for i, p := range chunk {
			list[i] = strconv.Itoa(int(p))
		}
		lists = append(lists, strings.Join(list, ","))
	}
	specs := [][]string{labelSpec}
	if cfg.SkipPureACKs {
		hs := cfg.SkipHandshake
		for _, list := range lists {
			if hs {
				specs = append(specs, synSkipSpec(f, list))
			}
			specs = append(specs, skipSpec(f, list, hs, false), kernelSkipSpec(f, list, false))
			if hs {
				specs = append(specs, skipSpec(f, list, true, true), kernelSkipSpec(f, list, true))
			}
		}
	}
	for _, dir := range []string{"--dports", "--sports"} {
		for _, list := range lists {
			spec := []string{
				"-p", "tcp", "-m", "multiport", dir, list,
				"-j", "NFQUEUE",
			}
			spec = append(spec, cfg.queueTarget()...)
			if cfg.Bypass {
				spec = append(spec, "--queue-bypass")
			}
			specs = append(specs, spec)
		}
	}
	return specs
}

// labelSpec is the queue chain's connlabel rule (see queueSpecs): bit 127 is
// REWRITTEN (conntrack.LabelRewritten).
var labelSpec = []string{"-m", "connlabel", "--label", "127"}

// slicesChunk yields consecutive sub-slices of at most n elements.
func slicesChunk(s []uint16, n int) func(func([]uint16) bool) {
	return func(yield func([]uint16) bool) {
		for len(s) > 0 {
			m := min(n, len(s))
			if !yield(s[:m]) {
				return
			}
			s = s[m:]
		}
	}
}

// acceptSpec is the FTPALG-ACCEPT rule of a normalized pinhole. filter
// FORWARD sees the packet after DNAT, so it matches the real endpoint; for a
// NAT'd pinhole it also requires the original destination to be the public
// one, so the rule admits only connections that came through the DNAT.
func (p Pinhole) acceptSpec() []string {
	spec := []string{
		"-s", hostPrefix(p.Peer), "-d", hostPrefix(p.Target.Addr()),
		"-p", "tcp", "-m", "tcp", "--dport", strconv.Itoa(int(p.Target.Port())),
		"-m", "conntrack", "--ctstate", "NEW",
	}
	if p.NAT() {
		// iptables stores --ctorigdst with and without /32 differently, so
		// this must stay the bare address to match what -S prints.
		spec = append(spec,
			"--ctorigdst", p.Public.Addr().String(),
			"--ctorigdstport", strconv.Itoa(int(p.Public.Port())))
	}
	return append(spec, "-m", "comment", "--comment", p.comment(), "-j", "ACCEPT")
}

// staticAcceptSpecs are the rules FTPALG-ACCEPT holds whatever pinholes
// are open: the nftables backend's mark rule and the data connection mark
// rule, each when configured.
func staticAcceptSpecs(cfg Config) [][]string {
	var specs [][]string
	if cfg.AcceptMark != 0 {
		specs = append(specs, acceptMarkSpec(cfg.AcceptMark))
	}
	if cfg.DataMark != 0 {
		specs = append(specs, dataMarkSpec(cfg.DataMark))
	}
	return specs
}

// dataMarkSpec accepts the NEW TCP packets of conntrack entries carrying
// the data connection mark (see Config.DataMark): the retransmitted SYNs of
// a data connection whose pinhole already closed. In the form `iptables -S`
// prints.
func dataMarkSpec(mark uint32) []string {
	return markAcceptSpec("connmark", mark, "ftpalg data connections")
}

// markAcceptSpec accepts NEW TCP packets whose packet mark (module "mark")
// or conntrack mark ("connmark") has the bit mark set.
func markAcceptSpec(module string, mark uint32, comment string) []string {
	m := "0x" + strconv.FormatUint(uint64(mark), 16)
	return []string{
		"-p", "tcp", "-m", module, "--mark", m + "/" + m,
		"-m", "conntrack", "--ctstate", "NEW",
		"-m", "comment", "--comment", comment,
		"-j", "ACCEPT",
	}
}

// dnatSpec is the FTPALG-DNAT rule of a normalized NAT'd pinhole.
func (p Pinhole) dnatSpec() []string {
	return []string{
		"-s", hostPrefix(p.Peer), "-d", hostPrefix(p.Public.Addr()),
		"-p", "tcp", "-m", "tcp", "--dport", strconv.Itoa(int(p.Public.Port())),
		"-m", "conntrack", "--ctstate", "NEW",
		"-m", "comment", "--comment", p.comment(),
		"-j", "DNAT", "--to-destination", p.Target.String(),
	}
}

// comment labels pinhole rules so administrators can tell what opened them.
func (p Pinhole) comment() string {
	return "ftpalg " + p.String()
}

// formatRule renders a rule spec the way iptables -S and iptables-save do,
// quoting arguments that contain spaces or quotes.
func formatRule(spec []string) string {
	var b strings.Builder
	for i, arg := range spec {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(quoteArg(arg))
	}
	return b.String()
}

// quoteArg quotes one argument for iptables-restore input.
func quoteArg(s string) string {
	if s != "" && !strings.ContainsAny(s, " \t\"\\'") {
		return s
	}
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		if r == '"' || r == '\\' {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	b.WriteByte('"')
	return b.String()
}

// splitRule splits one line of `iptables -S` output into arguments, undoing
// the quoting iptables applies to comments. It is used to delete rules found
// by listing, such as jumps into our chains added by someone else.
func splitRule(line string) ([]string, error) {
	var (
		args    []string
		cur     strings.Builder
		inArg   bool
		inQuote bool
	)
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case inQuote && c == '\\' && i+1 < len(line):
			i++
			cur.WriteByte(line[i])
		case c == '"':
			inQuote = !inQuote
			inArg = true
		case !inQuote && (c == ' ' || c == '\t'):
			if inArg {
				args = append(args, cur.String())
				cur.Reset()
				inArg = false
			}
		default:
			cur.WriteByte(c)
			inArg = true
		}
	}
	if inQuote {
		return nil, fmt.Errorf("unterminated quote in rule %q", line)
	}
	if inArg {
		args = append(args, cur.String())
	}
	return args, nil
}

// jumpTarget returns the chain a listed rule (`-A CHAIN ... -j TARGET`) jumps
// or goes to, and the rule spec without the leading `-A CHAIN`.
func jumpTarget(args []string) (chain, target string, spec []string, ok bool) {
	if len(args) < 2 || args[0] != "-A" {
		return "", "", nil, false
	}
	for i := 2; i+1 < len(args); i++ {
		if args[i] == "--comment" {
			i++ // a comment may itself read "-j X"
			continue
		}
		if args[i] == "-j" || args[i] == "-g" || args[i] == "--jump" || args[i] == "--goto" {
			return args[1], args[i+1], args[2:], true
		}
	}
	return "", "", nil, false
}

// chainNames returns the chains that `iptables -t TABLE -S` declares, built-in
// (-P) and user-defined (-N), in order. Comment lines are skipped wherever
// they appear: iptables-nft puts a warning first when the table also holds
// base chains of an nftables ruleset.
func chainNames(listing string) []string {
	var out []string
	for line := range strings.Lines(listing) {
		f := strings.Fields(line)
		if len(f) >= 2 && (f[0] == "-P" || f[0] == "-N") {
			out = append(out, f[1])
		}
	}
	return out
}
