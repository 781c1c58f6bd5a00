package rules

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"sync"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// Names inside ftpalg's nftables tables. None is an nft keyword, so `nft
// list table ip ftpalg` prints a ruleset that nft can read back.
const (
	nftSetRouted   = "routed_pinholes" // pinholes without NAT
	nftSetNAT      = "nat_pinholes"    // NAT'd pinholes, after DNAT
	nftMapTargets  = "nat_targets"     // DNATs of NAT'd pinholes
	nftChainMark   = "pinhole_mark"    // filter forward: marks pinhole packets
	nftChainMarkIn = "pinhole_mark_in" // filter input: the same for local endpoints
	nftChainDNAT   = "pinhole_dnat"    // nat prerouting: DNATs pinhole packets
	ipsDstNAT      = 0x20              // IPS_DST_NAT in ct status
	ctDirOriginal  = 0                 // IP_CT_DIR_ORIGINAL
	nftSetIDRouted = 1
	nftSetIDNAT    = 2
	nftSetIDMap    = 3
)

// Chain priorities. The mark chain runs after mangle (-150, where
// FTPALG-QUEUE sits) and before iptables' filter FORWARD (0), which reads
// the mark. The DNAT chain runs just before iptables' nat PREROUTING
// (-100), so like the FTPALG-DNAT jump inserted first, pinholes translate
// ahead of the administrator's own DNATs.
var (
	nftPrioMark = nftables.ChainPriorityRef(*nftables.ChainPriorityFilter - 5)
	nftPrioDNAT = nftables.ChainPriorityRef(*nftables.ChainPriorityNATDest - 1)
)

// regBase is the first 32-bit register, NFT_REG32_00. Lookup keys are
// concatenations loaded into consecutive 32-bit registers from here.
const regBase = 8

// nftFamily is what differs between the ip and ip6 tables.
type nftFamily struct {
	table                *nftables.Table
	routed, nat, targets *nftables.Set
	natFamily            uint32 // NFPROTO_IPV4 or NFPROTO_IPV6
	words                uint32 // 32-bit words in an address: 1 or 4
	saddrOff, daddrOff   uint32 // offsets in the network header
}

func newNFTFamily(f Family) nftFamily {
	addr := nftables.TypeIPAddr
	nf := nftFamily{
		table:     &nftables.Table{Name: NFTTableName, Family: nftables.TableFamilyIPv4},
		natFamily: unix.NFPROTO_IPV4,
		words:     1,
		saddrOff:  12,
		daddrOff:  16,
	}
	if f == IPv6 {
		addr = nftables.TypeIP6Addr
		nf.table = &nftables.Table{Name: NFTTableName, Family: nftables.TableFamilyIPv6}
		nf.natFamily, nf.words, nf.saddrOff, nf.daddrOff = unix.NFPROTO_IPV6, 4, 8, 24
	}
	port := nftables.TypeInetService
	// At most four fields, within ConcatSetType's limit of five, so
	// these cannot fail.
	routedKey, _ := nftables.ConcatSetType(addr, addr, port)
	natKey, _ := nftables.ConcatSetType(addr, addr, port, port)
	targetKey, _ := nftables.ConcatSetType(addr, addr, port)
	targetVal, _ := nftables.ConcatSetType(addr, port)
	// Fixed IDs: AddSet would otherwise draw them from a package-level
	// counter. They only name the sets within one transaction.
	nf.routed = &nftables.Set{
		Table: nf.table, ID: nftSetIDRouted, Name: nftSetRouted, KeyType: routedKey,
		HasTimeout: true, Concatenation: true, KeyByteOrder: binaryutil.BigEndian,
	}
	nf.nat = &nftables.Set{
		Table: nf.table, ID: nftSetIDNAT, Name: nftSetNAT, KeyType: natKey,
		HasTimeout: true, Concatenation: true, KeyByteOrder: binaryutil.BigEndian,
	}
	nf.targets = &nftables.Set{
		Table: nf.table, ID: nftSetIDMap, Name: nftMapTargets, KeyType: targetKey, DataType: targetVal,
		IsMap: true, HasTimeout: true, Concatenation: true, KeyByteOrder: binaryutil.BigEndian,
	}
	return nf
}

// sets returns the family's sets and map.
func (nf nftFamily) sets() []*nftables.Set {
	return []*nftables.Set{nf.routed, nf.nat, nf.targets}
}

// reg returns the 32-bit register word w words after regBase.
func reg(w uint32) uint32 { return regBase + w }

// nftConn implements nftKernel. Installing, listing and removing tables go
// through google/nftables, which opens a netlink socket for every
// operation: it costs a few microseconds, and a failed or interrupted
// transaction can never leave unread replies that a later one would
// misread. Adding, refreshing, expiring and deleting a pinhole's elements
// are on the packet path and go through fast, which encodes the same
// messages itself and keeps its socket (see nftSock for how it keeps the
// same guarantee).
type nftConn struct {
	mark     uint32
	dataMark uint32 // Config.DataMark: set in the ct mark of what a pinhole admits
	role     Role   // which mark chains exist: forward, input or both
	fams     map[Family]nftFamily
	fast     *nftSock
	look     *nftLookup
}

// nftLookup is a lasting google/nftables connection for exists, which the
// repair loop calls every second: closing a netlink socket can hold
// nf_tables' commit lock for an RCU grace period (see nftSock), which would
// stall a concurrent Open. It is dropped after an error.
type nftLookup struct {
	mu sync.Mutex
	cc *nftables.Conn
}

func (l *nftLookup) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.cc != nil {
		l.cc.CloseLasting()
		l.cc = nil
	}
}

func newNFTKernel(mark, dataMark uint32, role Role) (nftKernel, error) {
	c := &nftConn{
		mark:     mark,
		dataMark: dataMark,
		role:     role,
		fams:     map[Family]nftFamily{IPv4: newNFTFamily(IPv4), IPv6: newNFTFamily(IPv6)},
		fast:     newNFTSock(),
		look:     &nftLookup{},
	}
	// NFTable has no Close; the sockets go with the last reference.
	runtime.AddCleanup(c, (*nftSock).close, c.fast)
	runtime.AddCleanup(c, (*nftLookup).close, c.look)
	return c, nil
}

// batch runs fill on a fresh connection and commits what it queued as one
// transaction.
func (c *nftConn) batch(fill func(cc *nftables.Conn) error) error {
	cc, err := nftables.New()
	if err != nil {
		return fmt.Errorf("%w: opening netlink: %w", ErrNFTables, err)
	}
	if err := fill(cc); err != nil {
		return fmt.Errorf("%w: %w", ErrNFTables, err)
	}
	if err := cc.Flush(); err != nil {
		return fmt.Errorf("%w: %w", ErrNFTables, err)
	}
	return nil
}

// missing reports whether err says the table, set or element does not exist.
func missing(err error) bool {
	return errors.Is(err, unix.ENOENT)
}

func (c *nftConn) install(f Family, elems []nftTimed) error {
	nf := c.fams[f]
	err := c.batch(func(cc *nftables.Conn) error {
		// Without NLM_F_EXCL, adding a table, set or chain that exists
		// keeps it (and the set's elements); only the rules are rebuilt.
		cc.AddTable(nf.table)
		for _, s := range nf.sets() {
			if err := cc.AddSet(s, nil); err != nil {
				return fmt.Errorf("adding set %s: %w", s.Name, err)
			}
		}
		accept := nftables.ChainPolicyAccept
		for _, m := range c.markChains() {
			mark := cc.AddChain(&nftables.Chain{
				Name: m.name, Table: nf.table, Type: nftables.ChainTypeFilter,
				Hooknum: m.hook, Priority: nftPrioMark, Policy: &accept,
			})
			cc.FlushChain(mark)
			cc.AddRule(&nftables.Rule{Table: nf.table, Chain: mark, Exprs: c.clearMarkExprs()})
			cc.AddRule(&nftables.Rule{Table: nf.table, Chain: mark, Exprs: c.markRoutedExprs(nf)})
			cc.AddRule(&nftables.Rule{Table: nf.table, Chain: mark, Exprs: c.markNATExprs(nf)})
		}
		dnat := cc.AddChain(&nftables.Chain{
			Name: nftChainDNAT, Table: nf.table, Type: nftables.ChainTypeNAT,
			Hooknum: nftables.ChainHookPrerouting, Priority: nftPrioDNAT, Policy: &accept,
		})
		cc.FlushChain(dnat)
		cc.AddRule(&nftables.Rule{Table: nf.table, Chain: dnat, Exprs: dnatExprs(nf)})
		for _, el := range elems {
			if err := c.queueAdd(cc, el.e, el.ttl); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	// The first Open after Install should not pay for the socket.
	c.fast.warm()
	return nil
}

// nftMarkChain is one of the chains that mark pinhole packets.
type nftMarkChain struct {
	name string
	hook *nftables.ChainHook
}

// markChains are the mark chains c's Role needs: filter forward for
// forwarded data connections, filter input for those to a local endpoint.
// Both hold the same rules; a pinhole's target is local or not, so only
// one of them can ever match its packets.
func (c *nftConn) markChains() []nftMarkChain {
	var ms []nftMarkChain
	if c.role.Forward() {
		ms = append(ms, nftMarkChain{nftChainMark, nftables.ChainHookForward})
	}
	if c.role.Local() {
		ms = append(ms, nftMarkChain{nftChainMarkIn, nftables.ChainHookInput})
	}
	return ms
}

// probeUpdate adds an element to routed_pinholes with a long timeout, adds
// it again with nftExpireNow and reads it back: if the kernel restarted its
// timeout it is gone or about to go. The element (peer and target ::, port
// 0, or their IPv4 counterparts) can match no forwarded packet, and it
// expires by itself either way.
func (c *nftConn) probeUpdate(f Family) (bool, error) {
	nf := c.fams[f]
	zero := netip.IPv4Unspecified()
	if f == IPv6 {
		zero = netip.IPv6Unspecified()
	}
	key := appendAddrPort(appendAddr(nil, zero), netip.AddrPortFrom(zero, 0))
	for _, ttl := range []time.Duration{time.Hour, nftExpireNow} {
		err := c.batch(func(cc *nftables.Conn) error {
			return cc.SetAddElements(nf.routed, []nftables.SetElement{{Key: key, Timeout: ttl}})
		})
		if err != nil {
			return false, fmt.Errorf("adding probe element: %w", err)
		}
	}
	cc, err := nftables.New()
	if err != nil {
		return false, fmt.Errorf("%w: opening netlink: %w", ErrNFTables, err)
	}
	elems, err := cc.GetSetElements(nf.routed)
	if err != nil {
		return false, fmt.Errorf("%w: listing %s: %w", ErrNFTables, nf.routed.Name, err)
	}
	for _, el := range elems {
		if bytes.Equal(el.Key, key) && el.Expires > time.Minute {
			// An old kernel: delete the probe rather than leave
			// an hour-long element behind.
			if err := c.del(nftElems{family: f, accept: key}); err != nil {
				return false, fmt.Errorf("deleting probe element: %w", err)
			}
			return false, nil
		}
	}
	return true, nil
}

func (c *nftConn) leftovers(f Family) ([]Leftover, error) {
	nf := c.fams[f]
	cc, err := nftables.New()
	if err != nil {
		return nil, fmt.Errorf("%w: opening netlink: %w", ErrNFTables, err)
	}
	var out []Leftover
	routed, err := cc.GetSetElements(nf.routed)
	if err != nil && !missing(err) {
		return nil, fmt.Errorf("%w: listing %s: %w", ErrNFTables, nftSetRouted, err)
	}
	for _, el := range routed {
		if p, ok := pinholeFromRouted(f, el.Key); ok {
			out = append(out, Leftover{Pinhole: p, Left: el.Expires})
		}
	}
	targets, err := cc.GetSetElements(nf.targets)
	if err != nil && !missing(err) {
		return nil, fmt.Errorf("%w: listing %s: %w", ErrNFTables, nftMapTargets, err)
	}
	for _, el := range targets {
		if p, ok := pinholeFromNAT(f, el.Key, el.Val); ok {
			out = append(out, Leftover{Pinhole: p, Left: el.Expires})
		}
	}
	return out, nil
}

func (c *nftConn) exists(f Family) (bool, error) {
	l := c.look
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.cc == nil {
		cc, err := nftables.New(nftables.AsLasting())
		if err != nil {
			return false, fmt.Errorf("%w: opening netlink: %w", ErrNFTables, err)
		}
		l.cc = cc
	}
	_, err := l.cc.ListTableOfFamily(NFTTableName, c.fams[f].table.Family)
	switch {
	case missing(err):
		return false, nil
	case err != nil:
		// Unread replies may be left: start over next time.
		l.cc.CloseLasting()
		l.cc = nil
		return false, fmt.Errorf("%w: %w", ErrNFTables, err)
	}
	return true, nil
}

func (c *nftConn) remove(f Family) (bool, error) {
	err := c.batch(func(cc *nftables.Conn) error {
		cc.DelTable(c.fams[f].table)
		return nil
	})
	switch {
	case missing(err):
		return false, nil
	case err != nil:
		return false, err
	}
	return true, nil
}

func (c *nftConn) add(e nftElems, ttl time.Duration) error {
	return c.fast.txn(c.addOps(e, ttl))
}

// replace deletes and adds the elements in one transaction, which restarts
// their timeout on kernels that keep the expiry of an element added again;
// packets see the element throughout. If it is gone, it is simply added.
func (c *nftConn) replace(e nftElems, ttl time.Duration) error {
	err := c.fast.txn(append(c.delOps(c.elems(e)...), c.addOps(e, ttl)...))
	if missing(err) {
		return c.add(e, ttl)
	}
	return err
}

func (c *nftConn) expire(e nftElems) error {
	return c.add(e, nftExpireNow)
}

// nftElem is one element key in one set.
type nftElem struct {
	set *nftables.Set
	key []byte
}

// elems lists the set and map keys of a pinhole.
func (c *nftConn) elems(e nftElems) []nftElem {
	nf := c.fams[e.family]
	if e.natKey == nil {
		return []nftElem{{nf.routed, e.accept}}
	}
	return []nftElem{{nf.targets, e.natKey}, {nf.nat, e.accept}}
}

// setRef is how element messages address s.
func setRef(s *nftables.Set) nftSetRef {
	return nftSetRef{family: uint8(s.Table.Family), table: s.Table.Name, name: s.Name, id: s.ID}
}

// addOps are the messages adding one pinhole's elements, in queueAdd's
// order: the map element before the set element.
func (c *nftConn) addOps(e nftElems, ttl time.Duration) []nftElemOp {
	nf := c.fams[e.family]
	if e.natKey == nil {
		return []nftElemOp{{set: setRef(nf.routed), key: e.accept, ttl: ttl}}
	}
	return []nftElemOp{
		{set: setRef(nf.targets), key: e.natKey, val: e.natVal, ttl: ttl},
		{set: setRef(nf.nat), key: e.accept, ttl: ttl},
	}
}

// delOps are the messages deleting elements.
func (c *nftConn) delOps(els ...nftElem) []nftElemOp {
	ops := make([]nftElemOp, 0, len(els))
	for _, el := range els {
		ops = append(ops, nftElemOp{del: true, set: setRef(el.set), key: el.key})
	}
	return ops
}

// queueAdd queues the elements of one pinhole for Install's transaction.
// addOps must list the same elements.
func (c *nftConn) queueAdd(cc *nftables.Conn, e nftElems, ttl time.Duration) error {
	nf := c.fams[e.family]
	set := nf.routed
	if e.natKey != nil {
		set = nf.nat
		if err := cc.SetAddElements(nf.targets, []nftables.SetElement{{Key: e.natKey, Val: e.natVal, Timeout: ttl}}); err != nil {
			return fmt.Errorf("adding to map %s: %w", nf.targets.Name, err)
		}
	}
	if err := cc.SetAddElements(set, []nftables.SetElement{{Key: e.accept, Timeout: ttl}}); err != nil {
		return fmt.Errorf("adding to set %s: %w", set.Name, err)
	}
	return nil
}

func (c *nftConn) del(e nftElems) error {
	elems := c.elems(e)
	err := c.fast.txn(c.delOps(elems...))
	if !missing(err) {
		return err
	}
	// Something had expired (or the table is gone), which aborted the
	// whole transaction: delete one by one, ignoring what is missing.
	var errs []error
	for _, el := range elems {
		if err := c.fast.txn(c.delOps(el)); err != nil && !missing(err) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (c *nftConn) flush(f Family) error {
	nf := c.fams[f]
	err := c.batch(func(cc *nftables.Conn) error {
		for _, s := range nf.sets() {
			cc.FlushSet(s)
		}
		return nil
	})
	if missing(err) {
		return nil
	}
	return err
}

// ctStateNew matches packets whose conntrack state is NEW.
func ctStateNew() []expr.Any {
	return []expr.Any{
		&expr.Ct{Key: expr.CtKeySTATE, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitNEW),
			Xor:  binaryutil.NativeEndian.PutUint32(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(0)},
	}
}

// setMarkBit sets (on) or clears the accept mark bit in the packet mark,
// leaving the other bits alone.
func (c *nftConn) setMarkBit(on bool) []expr.Any {
	return setBits(&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1}, c.mark, on)
}

// setBits loads a 32-bit key into register 1 (load), sets (on) or clears
// bits in it, leaving the others alone, and stores it back (store).
func setBits(load, store expr.Any, bits uint32, on bool) []expr.Any {
	xor := uint32(0)
	if on {
		xor = bits
	}
	return []expr.Any{
		load,
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(^bits),
			Xor:  binaryutil.NativeEndian.PutUint32(xor)},
		store,
	}
}

// clearMarkExprs: ct state new meta mark set meta mark & ~mark. Without it,
// a mark another rule set would open every pinhole-shaped connection.
func (c *nftConn) clearMarkExprs() []expr.Any {
	return append(ctStateNew(), c.setMarkBit(false)...)
}

// isTCP matches TCP packets, so the transport header holds a TCP port.
func isTCP() []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
	}
}

// loadAddr loads an address from the network header into register word w.
func (nf nftFamily) loadAddr(off, w uint32) expr.Any {
	return &expr.Payload{DestRegister: reg(w), Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: 4 * nf.words}
}

// loadDport loads the TCP destination port into register word w.
func loadDport(w uint32) expr.Any {
	return &expr.Payload{DestRegister: reg(w), Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2}
}

// ctDNAT matches connections a DNAT rewrote (dnat) or not (!dnat).
func ctDNAT(dnat bool) []expr.Any {
	op := expr.CmpOpEq
	if dnat {
		op = expr.CmpOpNeq
	}
	return []expr.Any{
		&expr.Ct{Key: expr.CtKeySTATUS, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(ipsDstNAT),
			Xor:  binaryutil.NativeEndian.PutUint32(0)},
		&expr.Cmp{Op: op, Register: 1, Data: binaryutil.NativeEndian.PutUint32(0)},
	}
}

// markRoutedExprs: meta l4proto tcp ct state new ct status & dnat == 0
// saddr . daddr . tcp dport @routed_pinholes meta mark set meta mark | mark
// [ct mark set ct mark | dataMark].
func (c *nftConn) markRoutedExprs(nf nftFamily) []expr.Any {
	a := nf.words
	es := append(append(isTCP(), ctStateNew()...), ctDNAT(false)...)
	es = append(es,
		nf.loadAddr(nf.saddrOff, 0),
		nf.loadAddr(nf.daddrOff, a),
		loadDport(2*a),
		&expr.Lookup{SourceRegister: reg(0), SetName: nf.routed.Name, SetID: nf.routed.ID},
	)
	return append(append(es, c.setMarkBit(true)...), c.setDataMark()...)
}

// markNATExprs: meta l4proto tcp ct state new ct status & dnat != 0
// saddr . daddr . tcp dport . ct original proto-dst @nat_pinholes
// meta mark set meta mark | mark [ct mark set ct mark | dataMark]. filter
// forward sees the packet after
// DNAT: daddr and dport are the target's, the original destination port is
// the public one.
func (c *nftConn) markNATExprs(nf nftFamily) []expr.Any {
	a := nf.words
	es := append(append(isTCP(), ctStateNew()...), ctDNAT(true)...)
	es = append(es,
		nf.loadAddr(nf.saddrOff, 0),
		nf.loadAddr(nf.daddrOff, a),
		loadDport(2*a),
		&expr.Ct{Key: expr.CtKeyPROTODST, Direction: ctDirOriginal, Register: reg(2*a + 1)},
		&expr.Lookup{SourceRegister: reg(0), SetName: nf.nat.Name, SetID: nf.nat.ID},
	)
	return append(append(es, c.setMarkBit(true)...), c.setDataMark()...)
}

// setDataMark: ct mark set ct mark | dataMark, in the rule that lets a
// pinhole's connection through, so the connection's entry carries the data
// mark from its first SYN on and the static DataMark rule admits its
// retransmitted SYNs once the pinhole is closed. The daemon used to set it
// through ctnetlink when the NEW event arrived: one round trip per data
// connection on the event reader (3.4% of ftpalg's CPU in a perf profile
// of the 1000-file session, with Pinholes.Used), and none now. Nothing
// without dataMark.
func (c *nftConn) setDataMark() []expr.Any {
	if c.dataMark == 0 {
		return nil
	}
	return setBits(&expr.Ct{Key: expr.CtKeyMARK, Register: 1},
		&expr.Ct{Key: expr.CtKeyMARK, SourceRegister: true, Register: 1}, c.dataMark, true)
}

// dnatExprs: meta l4proto tcp dnat to saddr . daddr . tcp dport map
// @nat_targets. A nat chain only sees the first packet of a connection.
func dnatExprs(nf nftFamily) []expr.Any {
	a := nf.words
	return append(isTCP(),
		nf.loadAddr(nf.saddrOff, 0),
		nf.loadAddr(nf.daddrOff, a),
		loadDport(2*a),
		&expr.Lookup{SourceRegister: reg(0), DestRegister: reg(0), IsDestRegSet: true,
			SetName: nf.targets.Name, SetID: nf.targets.ID},
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: nf.natFamily,
			RegAddrMin: reg(0), RegAddrMax: reg(0), RegProtoMin: reg(a), RegProtoMax: reg(a), Specified: true},
	)
}
