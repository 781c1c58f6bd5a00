package rules

import (
	"encoding/binary"
	"fmt"
	"log/slog"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// SeqAdjTable is ftpalg's nftables table (inet family, name "ftpalg_seqadj")
// that gives new control connections the kernel's seqadj extension, so that
// sequence adjustments ftpalg writes through ctnetlink take effect (see
// [SeqAdjTableName] for why and for what it does not do):
//
//	table inet ftpalg_seqadj {
//		ct expectation seqadj_ipv4 { protocol udp; dport 9; timeout 1ms; size 0; l3proto ip; }
//		ct expectation seqadj_ipv6 { protocol udp; dport 9; timeout 1ms; size 0; l3proto ip6; }
//		set control_ports { type inet_service; elements = { 21 } }
//		chain seqadj_prerouting {
//			type filter hook prerouting priority mangle; policy accept;
//			meta nfproto ipv4 tcp dport @control_ports ct state new ct expectation set "seqadj_ipv4"
//			meta nfproto ipv6 tcp dport @control_ports ct state new ct expectation set "seqadj_ipv6"
//		}
//		chain seqadj_output { the same, on hook output }
//	}
//
// Only the families the Config enables get an object and rules. The nft
// tool cannot load this listing (it refuses size 0); SeqAdjTable writes it
// through netlink. Its methods open a netlink socket each, in the network
// namespace of the calling thread; they are safe for concurrent use.
type SeqAdjTable struct {
	fams  []Family
	ports []uint16
	log   *slog.Logger
	table *nftables.Table
}

// seqAdjSetID names the port set within Install's transaction.
const seqAdjSetID = 1

// NewSeqAdjTable returns the seqadj table for cfg's control ports and
// enabled families. It touches nothing in the kernel.
func NewSeqAdjTable(cfg Config, log *slog.Logger) (*SeqAdjTable, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &SeqAdjTable{
		fams:  cfg.Families(),
		ports: cfg.controlPorts(),
		log:   log,
		table: &nftables.Table{Name: SeqAdjTableName, Family: nftables.TableFamilyINet},
	}, nil
}

// Install creates the table, or replaces whatever table of that name is
// there, in one nf_tables transaction: the table is added (a no-op if it
// exists, so that deleting it cannot fail), deleted with everything in it,
// and built again. Packets see either the old table or the new one, never
// none, so a daemon restart or a repair keeps every new control connection
// covered. Calling it again is harmless.
func (t *SeqAdjTable) Install() error {
	cc, err := nftables.New()
	if err != nil {
		return seqAdjErr("installing", fmt.Errorf("%w: opening netlink: %w", ErrNFTables, err))
	}
	cc.AddTable(t.table)
	cc.DelTable(t.table)
	cc.AddTable(t.table)
	ports := &nftables.Set{
		Table: t.table, ID: seqAdjSetID, Name: SeqAdjSetPorts,
		KeyType: nftables.TypeInetService, KeyByteOrder: binaryutil.BigEndian,
	}
	elems := make([]nftables.SetElement, 0, len(t.ports))
	for _, p := range t.ports {
		elems = append(elems, nftables.SetElement{Key: binaryutil.BigEndian.PutUint16(p)})
	}
	if err := cc.AddSet(ports, elems); err != nil {
		return seqAdjErr("installing", fmt.Errorf("%w: adding set %s: %w", ErrNFTables, SeqAdjSetPorts, err))
	}
	for _, f := range t.fams {
		cc.AddObj(&nftables.NamedObj{
			Table: t.table, Name: seqAdjExpectName(f), Type: nftables.ObjTypeCtExpect,
			Obj: &expr.CtExpect{
				L3Proto: seqAdjNFProto(f), L4Proto: unix.IPPROTO_UDP,
				DPort: seqAdjExpectDPort, Timeout: seqAdjTimeoutAttr(seqAdjExpectTimeout), Size: seqAdjExpectSize,
			},
		})
	}
	accept := nftables.ChainPolicyAccept
	for _, c := range seqAdjChains() {
		chain := cc.AddChain(&nftables.Chain{
			Name: c.name, Table: t.table, Type: nftables.ChainTypeFilter,
			Hooknum: c.hook, Priority: nftables.ChainPriorityRef(SeqAdjPriority), Policy: &accept,
		})
		for _, f := range t.fams {
			cc.AddRule(&nftables.Rule{Table: t.table, Chain: chain, Exprs: seqAdjRuleExprs(f, ports)})
		}
	}
	if err := cc.Flush(); err != nil {
		return seqAdjErr("installing", fmt.Errorf("%w: %w", ErrNFTables, err))
	}
	fams := make([]string, len(t.fams))
	for i, f := range t.fams {
		fams[i] = f.String()
	}
	t.log.Info("installed nftables table", "table", "inet "+SeqAdjTableName,
		"families", fams, "control_ports", t.ports)
	return nil
}

// Remove deletes the table. A missing table is not an error.
func (t *SeqAdjTable) Remove() error {
	cc, err := nftables.New()
	if err != nil {
		return seqAdjErr("removing", fmt.Errorf("%w: opening netlink: %w", ErrNFTables, err))
	}
	cc.DelTable(t.table)
	switch err := cc.Flush(); {
	case missing(err):
		return nil
	case err != nil:
		return seqAdjErr("removing", fmt.Errorf("%w: %w", ErrNFTables, err))
	}
	t.log.Info("removed nftables table", "table", "inet "+SeqAdjTableName)
	return nil
}

// Installed reports whether the table exists with both chains, each with
// one rule per enabled family, and the enabled families' objects: what
// Install creates, counted rather than compared. When it returns false,
// Install restores the table.
func (t *SeqAdjTable) Installed() (bool, error) {
	cc, err := nftables.New()
	if err != nil {
		return false, seqAdjErr("looking up", fmt.Errorf("%w: opening netlink: %w", ErrNFTables, err))
	}
	ok, err := t.installed(cc)
	if err != nil {
		return false, seqAdjErr("looking up", fmt.Errorf("%w: %w", ErrNFTables, err))
	}
	if !ok {
		t.log.Debug("nftables table missing or incomplete", "table", "inet "+SeqAdjTableName)
	}
	return ok, nil
}

func (t *SeqAdjTable) installed(cc *nftables.Conn) (bool, error) {
	if _, err := cc.ListTableOfFamily(SeqAdjTableName, t.table.Family); err != nil {
		if missing(err) {
			return false, nil
		}
		return false, err
	}
	for _, c := range seqAdjChains() {
		chain, err := cc.ListChain(t.table, c.name)
		if missing(err) {
			return false, nil
		}
		if err != nil {
			return false, fmt.Errorf("listing chain %s: %w", c.name, err)
		}
		if chain.Hooknum == nil || *chain.Hooknum != *c.hook {
			return false, nil
		}
		rules, err := cc.GetRules(t.table, chain)
		if missing(err) {
			return false, nil
		}
		if err != nil {
			return false, fmt.Errorf("listing rules of chain %s: %w", c.name, err)
		}
		if len(rules) != len(t.fams) {
			return false, nil
		}
	}
	objs, err := cc.GetNamedObjects(t.table)
	if err != nil && !missing(err) {
		return false, fmt.Errorf("listing objects: %w", err)
	}
	for _, f := range t.fams {
		if !slices.ContainsFunc(objs, func(o nftables.Obj) bool {
			n, ok := o.(*nftables.NamedObj)
			return ok && n.Type == nftables.ObjTypeCtExpect && n.Name == seqAdjExpectName(f)
		}) {
			return false, nil
		}
	}
	return true, nil
}

// seqAdjChain is one of the table's base chains.
type seqAdjChain struct {
	name string
	hook *nftables.ChainHook
}

// seqAdjChains are the table's base chains: prerouting for connections
// that arrive on an interface, output for those this machine opens.
func seqAdjChains() []seqAdjChain {
	return []seqAdjChain{
		{SeqAdjChainPrerouting, nftables.ChainHookPrerouting},
		{SeqAdjChainOutput, nftables.ChainHookOutput},
	}
}

// seqAdjTimeoutAttr returns what to put in expr.CtExpect.Timeout for the
// kernel to read ms. The kernel reads NFTA_CT_EXPECT_TIMEOUT in host byte
// order (nla_get_u32, as nft writes it), but google/nftables v0.3.0 writes
// the field big-endian: given 1, a little-endian kernel read 16777216 (nft
// listed "timeout 4h39m37s216ms"). Swapping here makes the bytes on the
// wire the host-order ms.
func seqAdjTimeoutAttr(ms uint32) uint32 {
	return binary.BigEndian.Uint32(binaryutil.NativeEndian.PutUint32(ms))
}

// seqAdjNFProto is f's netfilter protocol family, as meta nfproto and the
// ct expectation object's l3proto have it.
func seqAdjNFProto(f Family) uint16 {
	if f == IPv6 {
		return unix.NFPROTO_IPV6
	}
	return unix.NFPROTO_IPV4
}

// seqAdjRuleExprs: meta nfproto f meta l4proto tcp tcp dport @control_ports
// ct state new ct expectation set f's object. ct state new also matches a
// retransmitted SYN, whose entry is confirmed: nft_ct_expect_obj_eval()
// leaves those alone.
func seqAdjRuleExprs(f Family, ports *nftables.Set) []expr.Any {
	es := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{byte(seqAdjNFProto(f))}},
	}
	es = append(es, isTCP()...)
	es = append(es,
		loadDport(0),
		&expr.Lookup{SourceRegister: reg(0), SetName: ports.Name, SetID: ports.ID},
	)
	es = append(es, ctStateNew()...)
	return append(es, &expr.Objref{Type: int(nftables.ObjTypeCtExpect), Name: seqAdjExpectName(f)})
}
