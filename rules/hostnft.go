package rules

import (
	"fmt"
	"strconv"
	"strings"
)

// NFTFragment renders what an nftables-native firewall (an /etc/nftables.conf
// with `policy drop`, firewalld, OpenWrt's fw4) must contain for ftpalg's
// pinholes to work: one rule, to be included in the administrator's own
// filter chains on hook input (RoleHost), forward (RoleRouter) or both.
//
// Why a rule in their chain: nftables runs every base chain on a hook in
// priority order, and an accept only ends the chain it is in; a drop in
// any of them drops the packet. So neither ftpalg's own chain nor an
// iptables ACCEPT (iptables-nft's filter INPUT is just another base chain)
// can override their `policy drop`. ftpalg's table marks the first packet
// of each admitted data connection (chain pinhole_mark / pinhole_mark_in,
// priority filter - 5, after clearing the bit on every new packet so that
// nothing else can forge it), and the administrator's chain, at priority
// filter or later, accepts what carries the mark.
//
// The queue rules stay iptables rules on kernels without nftables' queue
// expression (CONFIG_NFT_QUEUE), which ftpalg installs itself; the fragment
// ends with an nft queue table for kernels that have it, commented out and
// marked untested.
func NFTFragment(cfg Config) (string, error) {
	if err := cfg.Validate(); err != nil {
		return "", fmt.Errorf("rendering nftables fragment: %w", err)
	}
	if cfg.AcceptMark == 0 {
		return "", fmt.Errorf("rendering nftables fragment: %w: an nftables-native firewall needs --pinholes=nftables (the accept mark)", ErrInvalidConfig)
	}
	var hooks []string
	if cfg.Role.Forward() {
		hooks = append(hooks, "forward")
	}
	if cfg.Role.Local() {
		hooks = append(hooks, "input")
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# ftpalg pinholes for an nftables-native firewall (role %s).\n", cfg.Role)
	fmt.Fprintf(&b, "# Include this file inside your filter chain on hook %s\n", strings.Join(hooks, " and your chain on hook "))
	b.WriteString("# (priority filter or later), after `ct state invalid drop` and before any rule\n")
	b.WriteString("# that drops or rejects new connections:\n")
	fmt.Fprintf(&b, "#     chain %s {\n", hooks[0])
	fmt.Fprintf(&b, "#         type filter hook %s priority filter; policy drop;\n", hooks[0])
	b.WriteString("#         ct state invalid drop\n")
	b.WriteString("#         ct state established,related accept\n")
	b.WriteString("#         include \"/etc/nftables.d/ftpalg.nft\"\n")
	b.WriteString("#         ...\n")
	b.WriteString("# ftpalg's own table marks the first packet of each data connection it admits;\n")
	b.WriteString("# an accept anywhere else cannot override your chain's drop. Once a data\n")
	b.WriteString("# connection has started, ftpalg marks its conntrack entry, so that its\n")
	b.WriteString("# retransmitted SYNs still pass after the one-shot pinhole closed.\n")
	for _, r := range nftAcceptRules(cfg) {
		b.WriteString(r + "\n")
	}
	b.WriteString(nftQueueComment(cfg))
	return b.String(), nil
}

// nftAcceptRules are the rules NFTFragment asks for, in nft syntax: the
// pinholes' packet mark, and the data connections' conntrack mark (see
// Config.DataMark), the nft form of staticAcceptSpecs.
func nftAcceptRules(cfg Config) []string {
	rules := []string{nftMarkRule("meta", cfg.AcceptMark, "ftpalg pinholes")}
	if cfg.DataMark != 0 {
		rules = append(rules, nftMarkRule("ct", cfg.DataMark, "ftpalg data connections"))
	}
	return rules
}

// nftMarkRule accepts new TCP connections whose packet ("meta") or
// conntrack ("ct") mark has the bit mark set.
func nftMarkRule(key string, mark uint32, comment string) string {
	m := "0x" + strconv.FormatUint(uint64(mark), 16)
	return fmt.Sprintf("meta l4proto tcp ct state new %s mark & %s == %s accept comment %q", key, m, m, comment)
}

// nftQueueComment is the queue table for kernels with CONFIG_NFT_QUEUE,
// as comment lines: it cannot be loaded on the kernel ftpalg is tested on,
// so it is untested.
func nftQueueComment(cfg Config) string {
	ports := cfg.controlPorts()
	list := make([]string, len(ports))
	for i, p := range ports {
		list[i] = strconv.Itoa(int(p))
	}
	set := "{ " + strings.Join(list, ", ") + " }"
	verdict := fmt.Sprintf("queue num %d", cfg.QueueNum)
	if cfg.Bypass {
		verdict += " bypass"
	}
	var b strings.Builder
	b.WriteString("#\n# UNTESTED: on kernels with nftables' queue expression (CONFIG_NFT_QUEUE; the\n")
	b.WriteString("# kernel ftpalg is tested on lacks it) the queue rules can be nftables too: run\n")
	b.WriteString("# `ftpalg run --install-rules=false` and load this table instead of ftpalg's\n")
	b.WriteString("# iptables chains (priority mangle: after conntrack and DNAT, before SNAT).\n")
	b.WriteString("# table inet ftpalg_queue {\n")
	chain := func(name, hook, skip string) {
		fmt.Fprintf(&b, "#     chain %s {\n", name)
		fmt.Fprintf(&b, "#         type filter hook %s priority mangle; policy accept;\n", hook)
		// A no-op match, as in the iptables queue chain: while a label
		// rule is loaded, new conntrack entries can hold labels.
		b.WriteString("#         ct label 127\n")
		for _, dir := range []string{"dport", "sport"} {
			fmt.Fprintf(&b, "#         %stcp %s %s %s\n", skip, dir, set, verdict)
		}
		b.WriteString("#     }\n")
	}
	if cfg.Role.Forward() {
		chain("forward", "forward", "")
	}
	if cfg.Role.Local() {
		chain("input", "input", "iif != \"lo\" ")
		chain("output", "output", "oif != \"lo\" ")
	}
	b.WriteString("# }\n")
	return b.String()
}
