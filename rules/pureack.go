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

// LabelSeen is the conntrack label bit that ftpalg's own rules set with
// `-m connlabel --label 121 --set`, and the daemon in every label write
// too (conntrack.LabelSeen), so that a write does not clear it. Which rule
// sets it depends on Config.SkipHandshake:
//
//   - without it, the pure-ACK rule (skipSpec) sets it on every control
//     connection whose entry has a label extension: SEEN then only says
//     "this entry can hold labels";
//   - with it, only the SYN rule (synSkipSpec) does, on the SYN or SYN/ACK
//     of a connection: SEEN then says "this entry's SYN or SYN/ACK passed
//     ftpalg's rules", so the connection is fresh (no login can have
//     happened unseen), and the pure-ACK rule only tests it.
//
// Either way SEEN is matched positively, never as `! --label`, which is
// true where it must not be: on an entry without the label extension (one
// created before any connlabel rule was loaded, so before ftpalg's first
// start) xt_connlabel returns the inversion, so `! --label 127` alone would
// let the pure ACKs of such a connection pass, and ftpalg, unable to label
// it when it rewrites it, would lose them. `--label 121` (with or without
// --set) fails there, and the segment is queued.
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

// ackMatch is the port and tcp match of the rules for segments without
// payload after the SYN: with fin false, only ACK among FIN, SYN, RST and
// ACK (SYN, FIN and RST change the connection's state, which ftpalg
// follows), either port in ports; with fin (Config.SkipHandshake), FIN and
// ACK, sent by the client only (destination port in ports), since the
// daemon then learns of the close from conntrack.
//
// A server's FIN is queued: it follows its 221 by microseconds, and let
// past the queue it overtook the 221 while that was in ftpalg, so the
// client saw the FIN first and the server sent the 221 again (measured in
// test/bench: 0.7 extra payload segments per session, and an RST from the
// client that had closed when the copy came). A client closes after it
// read the 221, long after its QUIT left the queue. RST always reaches
// ftpalg. Written as `iptables -S` prints it.
func ackMatch(ports string, fin bool) []string {
	if fin {
		return []string{"-p", "tcp", "-m", "multiport", "--dports", ports, "-m", "tcp", "--tcp-flags", "FIN,SYN,RST,ACK", "FIN,ACK"}
	}
	return []string{"-p", "tcp", "-m", "multiport", "--ports", ports, "-m", "tcp", "--tcp-flags", "FIN,SYN,RST,ACK", "ACK"}
}

// synSkipSpec is the FTPALG-QUEUE rule (Config.SkipHandshake) that lets a
// SYN or SYN/ACK without payload of a control connection (either port in
// ports, a multiport list) pass without queueing: SYN set, FIN and RST
// clear, ACK either way. A SYN carrying data (TCP Fast Open) fails the bpf
// program and is queued, as are SYN+FIN and SYN+RST. The rule sets
// LabelSeen, so that the daemon, picking the connection up at its first
// payload segment, knows the handshake passed these rules; `--set` works
// on the SYN's entry, not yet confirmed, because init_conntrack gives every
// new entry its label extension while a connlabel rule is loaded. An entry
// without one fails the match and its segment is queued. RETURN hands the
// packet back to the built-in chain, so the administrator's rules still
// judge it.
func synSkipSpec(f Family, ports string) []string {
	return []string{
		"-p", "tcp", "-m", "multiport", "--ports", ports, "-m", "tcp", "--tcp-flags", "FIN,SYN,RST", "SYN",
		"-m", "bpf", "--bytecode", PureACKBytecode(f),
		"-m", "connlabel", "--label", strconv.Itoa(LabelSeen), "--set",
		"-m", "connlabel", "!", "--label", strconv.Itoa(LabelRewritten),
		"-j", "RETURN",
	}
}

// skipSpec is the FTPALG-QUEUE rule, ahead of the NFQUEUE rules, that lets
// a control segment (a port in ports, a multiport list) pass without
// queueing when it carries no payload, passes ackMatch(ports, fin), and
// belongs to a connection whose entry has LabelSeen and that ftpalg never
// rewrote. Without handshake the rule sets LabelSeen itself (on every entry
// that can hold labels); with it (Config.SkipHandshake) it only tests the
// bit, which the SYN rule set, so that SEEN keeps meaning "the handshake
// passed these rules": the pure ACKs of a connection opened before the
// rules were loaded are then always queued, which is correct, only slower.
// RETURN hands the packet back to the built-in chain, so the
// administrator's rules still judge it. The matches run in this order and
// stop at the first that fails, so only segments without payload reach the
// label match.
func skipSpec(f Family, ports string, handshake, fin bool) []string {
	spec := append(ackMatch(ports, fin), "-m", "bpf", "--bytecode", PureACKBytecode(f),
		"-m", "connlabel", "--label", strconv.Itoa(LabelSeen))
	if !handshake {
		spec = append(spec, "--set")
	}
	return append(spec,
		"-m", "connlabel", "!", "--label", strconv.Itoa(LabelRewritten),
		"-j", "RETURN")
}

// kernelSkipSpec is the FTPALG-QUEUE rule after skipSpec that lets the
// segments without payload of kernel-mapped connections (LabelKernel, not
// LabelMulti) that ackMatch(ports, fin) matches pass too. The kernel maps
// their numbers in nf_confirm, after every hook ftpalg queues from.
func kernelSkipSpec(f Family, ports string, fin bool) []string {
	return append(ackMatch(ports, fin),
		"-m", "bpf", "--bytecode", PureACKBytecode(f),
		"-m", "connlabel", "--label", strconv.Itoa(LabelKernel),
		"-m", "connlabel", "!", "--label", strconv.Itoa(LabelMulti),
		"-j", "RETURN")
}
