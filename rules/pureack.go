package rules

import "strconv"

// LabelRewritten is the conntrack label bit (as `-m connlabel --label N`
// and nft `ct label N` number it) that the daemon sets on a control
// connection before it releases the first packet whose payload it changed.
// From then on every packet of that connection must reach ftpalg, which
// maps its sequence and acknowledgement numbers; before it, a segment
// without payload carries nothing ftpalg needs to read or change.
const LabelRewritten = 127

// LabelKernel is the conntrack label bit the daemon sets on a control
// connection whose sequence numbers the kernel's seqadj extension maps
// (conntrack.LabelKernel): its pure ACKs need ftpalg no more than those of
// a connection never rewritten, unless LabelMulti says more than one edit
// of a direction was in flight, whose positions the kernel's one correction
// point cannot all map (ftpalg then maps those ACKs itself).
const LabelKernel = 120

// LabelMulti is conntrack.LabelMulti.
const LabelMulti = 122

// LabelSeen is the conntrack label bit the pure-ACK rule itself sets
// (`-m connlabel --label 121 --set`) on every control connection whose
// entry has a label extension. That match is true only for such entries:
// on an entry without the extension (one created before any connlabel rule
// was loaded, so before ftpalg's first start) the kernel can set no bit,
// the match fails, and the segment is queued. Without it, `! --label 127`
// would be true there (xt_connlabel returns the inversion when an entry
// has no labels), and ftpalg, unable to label such a connection when it
// rewrites it, would lose its pure ACKs. The daemon sets the bit in every
// label write too (conntrack.LabelSeen), so a write does not clear it.
const LabelSeen = 121

// A segment without payload (a pure ACK, a window update, a keepalive
// probe without a byte) is recognised exactly by length arithmetic that
// neither the tcp match nor u32 can do: the IP packet's length equals its
// IP header plus its TCP header. iptables' bpf match (xt_bpf) runs a
// classic BPF program on the packet from its network header; the two
// programs below compute that. Neither can match a segment that carries a
// byte: the worst either does is not match (an IPv6 extension header, a
// truncated packet, whose loads past the end return 0), and then the
// segment is queued as before. They are written out as xt_bpf bytecode
// ("count,code jt jf k,...", what `iptables -S` prints) so that the rules
// need no assembler; TestPureACKPrograms assembles the annotated programs
// below with golang.org/x/net/bpf, compares, and runs them on every IP and
// TCP header length with payloads around zero; TestPureACKKernel checks
// that the kernel's xt_bpf agrees on injected packets.
const (
	// IPv4: total length (bytes 2-3) == IHL*4 + data offset*4.
	//
	//	ldxb 4*([0]&0xf)   X = IP header length
	//	ldb  [x+12]        A = TCP data offset << 4
	//	and  #0xf0
	//	rsh  #2            A = TCP header length
	//	add  x             A = both header lengths
	//	tax
	//	ldh  [2]           A = total length
	//	jeq  x, match, no
	//	ret  #65535
	//	ret  #0
	pureACK4 = "10,177 0 0 0,80 0 0 12,84 0 0 240,116 0 0 2,12 0 0 0,7 0 0 0,40 0 0 2,29 0 1 0,6 0 0 65535,6 0 0 0"
	// IPv6: next header (byte 6) == TCP and payload length (bytes 4-5) ==
	// data offset*4 (the TCP header follows the fixed 40-byte header).
	//
	//	ldb  [6]           A = next header
	//	jeq  #6, next, no
	//	ldb  [52]          A = TCP data offset << 4
	//	and  #0xf0
	//	rsh  #2            A = TCP header length
	//	tax
	//	ldh  [4]           A = payload length
	//	jeq  x, match, no
	//	ret  #65535
	//	ret  #0
	pureACK6 = "10,48 0 0 6,21 0 7 6,48 0 0 52,84 0 0 240,116 0 0 2,7 0 0 0,40 0 0 4,29 0 1 0,6 0 0 65535,6 0 0 0"
)

// PureACKBytecode returns the xt_bpf program (`-m bpf --bytecode`) that
// matches exactly the TCP segments without payload of family f.
func PureACKBytecode(f Family) string {
	if f == IPv6 {
		return pureACK6
	}
	return pureACK4
}

// skipSpec is the FTPALG-QUEUE rule, ahead of the NFQUEUE rules, that lets
// a control segment (either port in ports, a multiport list) pass without
// queueing when it carries no payload, has
// only ACK among SYN, FIN, RST and ACK (SYN, FIN and RST change the
// connection's state, which ftpalg follows), and belongs to a connection
// whose entry can hold labels (LabelSeen) and that ftpalg never rewrote.
// RETURN hands the packet back to the built-in chain, so the
// administrator's rules still judge it. The matches run in this order and
// stop at the first that fails, so only pure ACKs reach the label set.
func skipSpec(f Family, ports string) []string {
	code := PureACKBytecode(f)
	return []string{
		"-p", "tcp", "-m", "multiport", "--ports", ports, "-m", "tcp", "--tcp-flags", "FIN,SYN,RST,ACK", "ACK",
		"-m", "bpf", "--bytecode", code,
		"-m", "connlabel", "--label", strconv.Itoa(LabelSeen), "--set",
		"-m", "connlabel", "!", "--label", strconv.Itoa(LabelRewritten),
		"-j", "RETURN",
	}
}

// kernelSkipSpec is the FTPALG-QUEUE rule after skipSpec that lets the pure
// ACKs of kernel-mapped connections (LabelKernel, not LabelMulti) pass too.
// The kernel maps their numbers in nf_confirm, after every hook ftpalg
// queues from.
func kernelSkipSpec(f Family, ports string) []string {
	return []string{
		"-p", "tcp", "-m", "multiport", "--ports", ports, "-m", "tcp", "--tcp-flags", "FIN,SYN,RST,ACK", "ACK",
		"-m", "bpf", "--bytecode", PureACKBytecode(f),
		"-m", "connlabel", "--label", strconv.Itoa(LabelKernel),
		"-m", "connlabel", "!", "--label", strconv.Itoa(LabelMulti),
		"-j", "RETURN",
	}
}
