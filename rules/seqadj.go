package rules

import "fmt"

// ftpalg's seqadj table, "inet ftpalg_seqadj" ([SeqAdjTable]), exists so
// that the kernel itself can map the sequence numbers of a control
// connection whose payload ftpalg rewrote to a different length.
//
// The kernel's own sequence adjustment (nf_ct_seq_adjust(), applied after
// the last hook to seq, ack and every SACK block of every later packet,
// pure ACKs included, and known to tcp_in_window(), so strict conntrack
// stays valid) needs the seqadj extension on the conntrack entry. An
// extension can only be added before the entry is confirmed, and only
// nf_nat_setup_info() adds seqadj to an ordinary entry: when NAT changes
// its tuple and the entry already has a helper extension. ftpalg is no
// kernel helper. So the table applies a `ct expectation` object to the
// first packet of every new TCP connection to a control port, at priority
// mangle (-150): after conntrack (-200), before NAT's dstnat (-100).
// nft_ct_expect_obj_eval() adds an empty helper extension (no helper), then
// stops at `expecting >= size` because the object's size is 0: it never
// creates an expectation. NAT then adds seqadj, and from then on ftpalg's
// CTA_SEQ_ADJ_ORIG/REPLY updates through ctnetlink take effect (the entry's
// status gains IPS_SEQ_ADJUST); on an entry without the extension they are
// silently ignored.
//
// The nft tool refuses `size 0` (its smallest size is 1, which creates one
// real expectation per connection, and a second connection between the
// same two hosts then clashes with it: its SYN is dropped and retransmitted
// a second later), so the objects are created through netlink. For the same
// reason the table's listing cannot be read back by nft: a ruleset saved
// with `nft list ruleset` does not restore with `nft -f` while this table
// is in it (nft 1.0.6: "Error: missing options"). Should a kernel ever
// ignore the size, the object would still only expect a UDP flow to the
// discard port (9), for a second.
//
// The table does NOT
//   - accept, drop or change any packet: its chains have policy accept and
//     their only statement is `ct expectation set` (which drops a first
//     packet only when the kernel cannot allocate the helper extension,
//     as for any connection a helper is assigned to);
//   - adjust anything by itself: it only makes the kernel accept the
//     adjustments ftpalg writes through ctnetlink;
//   - help connections whose tuple no NAT changes (routed without NAT):
//     nf_nat_setup_info() adds seqadj only when it rewrites the tuple, so
//     ftpalg must keep its own mapping for those, and for connections
//     opened before Install (their entries are confirmed);
//   - give more than the kernel helper has: one correction point per
//     direction;
//   - survive `nft flush ruleset` (for example the Debian nftables
//     service's reload): [SeqAdjTable.Installed] then reports false and
//     Install restores it, for connections opened after that.
const (
	// SeqAdjTableName is the name of ftpalg's seqadj table, in family inet.
	SeqAdjTableName = "ftpalg_seqadj"
	// SeqAdjChainPrerouting holds the rules for connections arriving on
	// an interface: forwarded, or to this machine.
	SeqAdjChainPrerouting = "seqadj_prerouting"
	// SeqAdjChainOutput holds the same rules for connections this machine
	// opens; prerouting never sees their packets.
	SeqAdjChainOutput = "seqadj_output"
	// SeqAdjSetPorts is the set of control ports the rules match.
	SeqAdjSetPorts = "control_ports"
	// SeqAdjExpectIPv4 and SeqAdjExpectIPv6 are the ct expectation
	// objects (size 0) the rules apply, one per family.
	SeqAdjExpectIPv4 = "seqadj_ipv4"
	SeqAdjExpectIPv6 = "seqadj_ipv6"
	// SeqAdjPriority is both chains' priority: after conntrack (-200),
	// before dstnat (-100). nft lists it as "mangle".
	SeqAdjPriority = -150
)

// Parameters of the ct expectation objects. Only their size matters: 0, so
// no expectation is ever created. The rest only bounds what a kernel that
// ignored the size would expect: a UDP flow to the discard port, for a
// moment (the attribute is in milliseconds, but nft_ct_expect_obj_eval()
// multiplies it by HZ, so 1 means one second).
const (
	seqAdjExpectDPort   = 9 // UDP discard
	seqAdjExpectTimeout = 1
	seqAdjExpectSize    = 0
)

// seqAdjExpectName is the name of f's ct expectation object.
func seqAdjExpectName(f Family) string {
	if f == IPv6 {
		return SeqAdjExpectIPv6
	}
	return SeqAdjExpectIPv4
}

// seqAdjErr names the table and the operation in err.
func seqAdjErr(op string, err error) error {
	return fmt.Errorf("%s nftables table inet %s: %w", op, SeqAdjTableName, err)
}
