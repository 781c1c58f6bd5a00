package rules

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"
)

// NFTable is the netlink pinhole backend: each pinhole is an element in an
// nftables set (and, for NAT, a map) that static rules consult, so opening
// or closing one is a single netlink transaction of microseconds instead of
// an exec of iptables, and every element carries a kernel timeout, so
// pinholes of a crashed daemon expire by themselves.
//
// ftpalg owns the tables "ip ftpalg" and "ip6 ftpalg" ([NFTTableName]):
//
//	set routed_pinholes  peer . target addr . target port
//	set nat_pinholes     peer . target addr . target port . public port
//	map nat_targets      peer . public addr . public port : target addr . target port
//	chain pinhole_mark   filter hook forward priority filter - 5
//	chain pinhole_mark_in  the same rules on hook input, for local endpoints
//	    ct state new  meta mark set meta mark & ~AcceptMark
//	    ct state new  ct status dnat unset  saddr . daddr . tcp dport @routed_pinholes
//	                  meta mark set meta mark | AcceptMark  ct mark set ct mark | DataMark
//	    ct state new  ct status dnat set  saddr . daddr . tcp dport . ct original proto-dst @nat_pinholes
//	                  meta mark set meta mark | AcceptMark  ct mark set ct mark | DataMark
//	chain pinhole_dnat   nat hook prerouting priority dstnat - 1
//	    dnat to saddr . daddr . tcp dport map @nat_targets
//
// The allow decision cannot be an nftables accept: every base chain on a
// hook decides on its own, and the administrator's iptables FORWARD policy
// DROP still drops what an nftables chain accepted. So the forward chain
// only marks the packet, and the one static iptables rule in FTPALG-ACCEPT
// that [Chains] installs (or [Fragment] renders) when Config.AcceptMark is
// set accepts NEW TCP packets carrying the mark. The mark bit is cleared on
// every NEW packet first, so no other rule's mark can open a pinhole. The
// forward chain sees every NEW packet, retransmitted SYNs included.
//
// DNAT needs no help from iptables: NAT is done by the first nat chain on
// the hook that binds a mapping, and pinhole_dnat runs just before
// iptables' nat PREROUTING (priority dstnat). A routed pinhole only admits
// connections nothing DNATed, so it never opens a path that a port forward
// would have rewritten. A NAT'd pinhole admits connections that a DNAT
// rewrote from the public port to the target; the public address is not
// part of the forward match, because the netlink library (google/nftables
// v0.3.0) cannot express `ct original ip daddr` (NFT_CT_DST_IP needs a
// direction it does not send), and the generic ct daddr it can express
// makes nft 1.0.6 abort when it lists the rule. Only the administrator's
// own port forward to the same target and port, from the same peer, while
// the pinhole is open, could borrow it.
//
// With Config.DataMark set, the rules that mark a pinhole's packets also
// set that bit in the connection's ct mark (see [NFTable.MarksDataConnections]).
//
// Like [Table], NFTable counts references per pinhole and is safe for
// concurrent use. Install must run (after [Chains.Install], which creates
// the iptables rule) before Open.
type NFTable struct {
	cfg     Config
	log     *slog.Logger
	timeout time.Duration // the daemon's pinhole timeout
	k       nftKernel

	mu   sync.Mutex
	open map[Pinhole]*nftOpen // by normalized pinhole
	// update says the kernel restarts an element's timeout when the
	// element is added again with a different timeout (Linux 6.10 and
	// later; Install probes for it). Close and refresh are then additions
	// of the same elements. Without it, Close deletes them and refresh
	// deletes and adds them in one transaction. Either commits in
	// microseconds on nftConn's persistent socket; what is slow after a
	// deletion is closing a netlink socket (see nftSock).
	update bool
}

// nftOpen is one open pinhole.
type nftOpen struct {
	refs int
	// timeout replaces the table's pinhole timeout for this pinhole
	// (OpenFor); 0 means the table's.
	timeout time.Duration
	// short says the elements carry the shorter of the two kernel
	// timeouts; each refresh switches, so the kernel sees a new timeout.
	short bool
}

// MarksDataConnections says the pinhole rules set Config.DataMark in the ct
// mark of every connection they admit, at its first packet, so the daemon
// need not set it through ctnetlink when the connection starts (it must
// for [Table], whose iptables rules do not).
func (t *NFTable) MarksDataConnections() bool { return t.cfg.DataMark != 0 }

// NFTTableName is the name of ftpalg's nftables tables, one in family ip
// and one in ip6.
const NFTTableName = "ftpalg"

// DefaultAcceptMark is the packet mark bit ftpalg uses by default to carry
// the nftables pinhole decision to iptables. It avoids the bits well-known
// software claims: kube-proxy (0x4000, 0x8000), Cilium (0x0f00), Tailscale
// (0xff0000) and WireGuard tools' usual fwmarks. Calico's default mask
// (0xffff0000) includes it; set Config.AcceptMark to a free bit there.
const DefaultAcceptMark uint32 = 0x20000000

// NFTTimeoutMargin is added to the pinhole timeout to get the kernel timeout
// of an element, so the kernel never expires a pinhole before the daemon's
// own timer closes it, and a crashed daemon's pinholes outlive their timeout
// by at most this much. Refreshing a pinhole alternates its kernel timeout
// between the pinhole timeout plus NFTTimeoutMargin and one second less, so
// that the kernel sees a changed timeout and restarts it.
const NFTTimeoutMargin = 2 * time.Second

// nftRefreshStep is the difference between the two kernel timeouts a
// refreshed pinhole alternates between. It is less than NFTTimeoutMargin.
const nftRefreshStep = time.Second

// nftExpireNow is the timeout Close gives the elements of a pinhole when the
// kernel can update timeouts: they stop matching within a jiffy (at most
// 4 ms at HZ=250, 10 ms at HZ=100) and the set's garbage collector removes
// them later. Deleting them instead stops them at once, and takes
// microseconds on nftSock too, but measured in the daemon it made the
// opens that follow wait for the kernel to free the deleted elements: the
// pinhole p99 of the session workload went from 44 µs to 7-14 ms, its
// maximum to 26 ms. The jiffy is the price: a data connection's pinhole
// admits no second connection once that jiffy has passed.
const nftExpireNow = time.Millisecond

// ErrNFTables reports a failed nftables (netlink) operation.
var ErrNFTables = errors.New("nftables")

// NewNFTable returns the netlink pinhole backend for the families cfg
// enables. cfg.AcceptMark must be set, and the same Config must be given to
// Chains (or Fragment) so that FTPALG-ACCEPT accepts the mark. timeout is
// the daemon's pinhole timeout; elements live NFTTimeoutMargin longer.
func NewNFTable(cfg Config, timeout time.Duration, log *slog.Logger) (*NFTable, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.AcceptMark == 0 {
		return nil, fmt.Errorf("%w: nftables pinholes need an accept mark", ErrInvalidConfig)
	}
	if timeout <= 0 {
		return nil, fmt.Errorf("%w: pinhole timeout %v", ErrInvalidConfig, timeout)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	k, err := newNFTKernel(cfg.AcceptMark, cfg.DataMark, cfg.Role)
	if err != nil {
		return nil, err
	}
	return &NFTable{
		cfg:     cfg,
		log:     log,
		timeout: timeout,
		k:       k,
		open:    make(map[Pinhole]*nftOpen),
	}, nil
}

// ttl is the kernel timeout of a pinhole's elements.
func (t *NFTable) ttl(o *nftOpen) time.Duration {
	timeout := t.timeout
	if o.timeout > 0 {
		timeout = o.timeout
	}
	if o.short {
		return timeout + NFTTimeoutMargin - nftRefreshStep
	}
	return timeout + NFTTimeoutMargin
}

// Install creates ftpalg's nftables tables for the enabled families, or
// repairs them: sets and maps keep their elements, chains are rebuilt, and
// every pinhole this NFTable holds open is added again with a fresh timeout,
// so a table deleted by `nft flush ruleset` comes back whole. Each family is
// one transaction. Install also probes whether the kernel can restart an
// element's timeout, which makes Close fast.
func (t *NFTable) Install() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	update := true
	for _, f := range t.cfg.Families() {
		var elems []nftTimed
		for p, o := range t.open {
			if p.Family() == f {
				elems = append(elems, nftTimed{p.nftElems(), t.ttl(o)})
			}
		}
		if err := t.k.install(f, elems); err != nil {
			return fmt.Errorf("installing %s nftables table %s: %w", f, NFTTableName, err)
		}
		ok, err := t.k.probeUpdate(f)
		if err != nil {
			return fmt.Errorf("probing %s nftables timeout updates: %w", f, err)
		}
		update = update && ok
		t.log.Info("installed nftables table", "family", f, "table", NFTTableName,
			"accept_mark", fmt.Sprintf("%#x", t.cfg.AcceptMark), "reopened", len(elems), "timeout_updates", ok)
	}
	if !update {
		t.log.Info("kernel cannot restart nftables element timeouts (needs Linux 6.10): closing a pinhole deletes its elements, refreshing one deletes and adds them")
	}
	t.update = update
	return nil
}

// Check reports whether the tables of all enabled families exist. When it
// returns false, Install restores them.
func (t *NFTable) Check() (bool, error) {
	for _, f := range t.cfg.Families() {
		ok, err := t.k.exists(f)
		if err != nil {
			return false, fmt.Errorf("looking up %s nftables table %s: %w", f, NFTTableName, err)
		}
		if !ok {
			t.log.Debug("nftables table missing", "family", f, "table", NFTTableName)
			return false, nil
		}
	}
	return true, nil
}

// Remove deletes the tables of the enabled families, with every pinhole in
// them, and forgets all open pinholes. Missing tables are not an error.
func (t *NFTable) Remove() error {
	return t.remove(t.cfg.Families())
}

// Sweep deletes what an earlier run left behind: the tables of both
// families whatever the current configuration enables. Its elements would
// expire by themselves; the tables would not.
func (t *NFTable) Sweep() error {
	return t.remove([]Family{IPv4, IPv6})
}

// SweepDisabled deletes the tables of the families cfg does not enable.
// The enabled families' tables stay for Install, which keeps their
// elements: pinholes a predecessor opened keep admitting their data
// connections and expire by their kernel timeouts.
func (t *NFTable) SweepDisabled() error {
	var fs []Family
	for _, f := range []Family{IPv4, IPv6} {
		if !t.cfg.enabled(f) {
			fs = append(fs, f)
		}
	}
	return t.remove(fs)
}

func (t *NFTable) remove(fs []Family) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	var errs []error
	for _, f := range fs {
		removed, err := t.k.remove(f)
		if err != nil {
			errs = append(errs, fmt.Errorf("removing %s nftables table %s: %w", f, NFTTableName, err))
			continue
		}
		if removed {
			t.log.Info("removed nftables table", "family", f, "table", NFTTableName)
		}
	}
	if len(errs) == 0 {
		clear(t.open)
	}
	return errors.Join(errs...)
}

// Open adds p's elements in one transaction and returns once the kernel has
// them, so the caller can release the packet that announces the data
// connection. Opening a pinhole that is already open adds a reference and
// restarts its kernel timeout.
func (t *NFTable) Open(p Pinhole) error { return t.OpenFor(p, 0) }

// OpenFor is Open with a pinhole timeout of its own instead of the
// table's (0: the table's), for a pinhole synced from the other router of
// a pair, which carries only what was left of the sender's timeout. Given
// to a pinhole already open, it becomes that pinhole's timeout.
func (t *NFTable) OpenFor(p Pinhole, timeout time.Duration) error {
	n, err := p.normalize()
	if err != nil {
		return fmt.Errorf("opening pinhole: %w", err)
	}
	if !t.cfg.enabled(n.Family()) {
		return fmt.Errorf("opening pinhole %s: %w: %s", n, ErrFamilyDisabled, n.Family())
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	start := time.Now()
	if o := t.open[n]; o != nil {
		// A repeated announcement restarts the kernel timeout. If that
		// fails the pinhole is still open, with its old timeout, so the
		// reference is taken all the same, as Table does.
		o.timeout = timeout
		if err := t.refresh(n, o); err != nil {
			t.log.Warn("restarting pinhole timeout", "pinhole", n, "err", err)
		}
		o.refs++
		t.log.Debug("pinhole already open", "pinhole", n, "refs", o.refs)
		return nil
	}
	o := &nftOpen{refs: 1, timeout: timeout}
	if err := t.k.add(n.nftElems(), t.ttl(o)); err != nil {
		return fmt.Errorf("opening pinhole %s: %w", n, err)
	}
	t.open[n] = o
	t.log.Debug("opened pinhole", "pinhole", n, "took", time.Since(start))
	return nil
}

// refresh restarts the kernel timeout of an open pinhole.
func (t *NFTable) refresh(n Pinhole, o *nftOpen) error {
	if !t.update {
		return t.k.replace(n.nftElems(), t.ttl(o))
	}
	next := &nftOpen{short: !o.short, timeout: o.timeout}
	if err := t.k.add(n.nftElems(), t.ttl(next)); err != nil {
		return err
	}
	o.short = next.short
	return nil
}

// Close drops one reference to p and ends its elements with the last one:
// they stop matching before Close returns, or within a jiffy after it when
// the kernel can restart timeouts (see nftExpireNow). Closing a pinhole that
// is not open, or whose elements already expired or were flushed, succeeds.
// If it fails, p stays open and Close can be retried.
func (t *NFTable) Close(p Pinhole) error {
	n, err := p.normalize()
	if err != nil {
		return fmt.Errorf("closing pinhole: %w", err)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	o := t.open[n]
	switch {
	case o == nil:
		return nil
	case o.refs > 1:
		o.refs--
		return nil
	}
	start := time.Now()
	end := t.k.del
	if t.update {
		end = t.k.expire
	}
	if err := end(n.nftElems()); err != nil {
		return fmt.Errorf("closing pinhole %s: %w", n, err)
	}
	delete(t.open, n)
	t.log.Debug("closed pinhole", "pinhole", n, "took", time.Since(start))
	return nil
}

// CloseAll empties the pinhole sets of the enabled families and forgets all
// open pinholes. Missing tables stay missing.
func (t *NFTable) CloseAll() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	var errs []error
	for _, f := range t.cfg.Families() {
		if err := t.k.flush(f); err != nil {
			errs = append(errs, fmt.Errorf("flushing %s nftables pinholes: %w", f, err))
		}
	}
	if len(errs) == 0 {
		clear(t.open)
	}
	return errors.Join(errs...)
}

// Len returns the number of distinct open pinholes.
func (t *NFTable) Len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.open)
}

// nftKernel is the kernel side of NFTable: one nftables table per family.
// The Linux implementation talks netlink through google/nftables, except
// for the per-pinhole operations, which encode their own messages (see
// nftSock).
type nftKernel interface {
	// install creates or repairs f's table and adds elems in one
	// transaction.
	install(f Family, elems []nftTimed) error
	// probeUpdate reports whether adding an existing element with a new
	// timeout restarts its timeout.
	probeUpdate(f Family) (bool, error)
	// exists reports whether f's table exists.
	exists(f Family) (bool, error)
	// remove deletes f's table, reporting whether there was one.
	remove(f Family) (bool, error)
	// add adds one pinhole's elements in one transaction.
	add(e nftElems, ttl time.Duration) error
	// replace deletes and adds one pinhole's elements in one transaction,
	// restarting their timeout on any kernel; it adds them if they are
	// gone.
	replace(e nftElems, ttl time.Duration) error
	// expire sets the timeout of one pinhole's elements to nftExpireNow
	// (adding them with it if they are gone).
	expire(e nftElems) error
	// del deletes one pinhole's elements; elements already gone are not
	// an error.
	del(e nftElems) error
	// flush empties f's set and map; a missing table is not an error.
	flush(f Family) error
	// leftovers lists the pinholes f's sets hold (routed_pinholes and
	// nat_targets), with the time their elements have left.
	leftovers(f Family) ([]Leftover, error)
}

// nftTimed is a pinhole's elements with their timeout.
type nftTimed struct {
	e   nftElems
	ttl time.Duration
}

// nftElems are one pinhole's set and map elements in the kernel's byte
// layout: concatenated fields, each padded to a 4-byte register.
type nftElems struct {
	family Family
	// accept is the key of routed_pinholes (peer, target address and
	// port) or, with NAT, of nat_pinholes (the same and the public port).
	accept []byte
	// natKey (peer, public address and port) maps to natVal (target
	// address and port) in nat_targets. Both are nil without NAT.
	natKey, natVal []byte
}

// nftElems renders a normalized pinhole as set elements.
func (p Pinhole) nftElems() nftElems {
	e := nftElems{family: p.Family()}
	e.accept = appendAddrPort(appendAddr(nil, p.Peer), p.Target)
	if p.NAT() {
		e.accept = appendPort(e.accept, p.Public.Port())
		e.natKey = appendAddrPort(appendAddr(nil, p.Peer), p.Public)
		e.natVal = appendAddrPort(nil, p.Target)
	}
	return e
}

// Leftover is a pinhole the kernel holds that this process did not open (a
// predecessor's, kept across a handover or a crash), with the time its
// elements have left.
type Leftover struct {
	Pinhole Pinhole
	Left    time.Duration
}

// fieldReader reads the fields of a concatenated set key or map value as
// nftElems writes them.
type fieldReader struct {
	b      []byte
	family Family
	bad    bool
}

func (r *fieldReader) addr() netip.Addr {
	n := 4
	if r.family == IPv6 {
		n = 16
	}
	if len(r.b) < n {
		r.bad = true
		return netip.Addr{}
	}
	a, _ := netip.AddrFromSlice(r.b[:n])
	r.b = r.b[n:]
	return a
}

func (r *fieldReader) port() uint16 {
	if len(r.b) < 4 {
		r.bad = true
		return 0
	}
	p := binary.BigEndian.Uint16(r.b)
	r.b = r.b[4:]
	return p
}

// pinholeFromRouted reads a routed_pinholes key (peer . target); false for
// anything else, such as the probe element Install leaves (port 0).
func pinholeFromRouted(f Family, key []byte) (Pinhole, bool) {
	r := fieldReader{b: key, family: f}
	peer, ta, tp := r.addr(), r.addr(), r.port()
	p := Pinhole{Peer: peer, Public: netip.AddrPortFrom(ta, tp), Target: netip.AddrPortFrom(ta, tp)}
	return p, !r.bad && len(r.b) == 0 && p.valid()
}

// pinholeFromNAT reads a nat_targets element (peer . public : target).
func pinholeFromNAT(f Family, key, val []byte) (Pinhole, bool) {
	r := fieldReader{b: key, family: f}
	peer, pa, pp := r.addr(), r.addr(), r.port()
	v := fieldReader{b: val, family: f}
	ta, tp := v.addr(), v.port()
	p := Pinhole{Peer: peer, Public: netip.AddrPortFrom(pa, pp), Target: netip.AddrPortFrom(ta, tp)}
	return p, !r.bad && !v.bad && len(r.b) == 0 && len(v.b) == 0 && p.valid()
}

// valid reports whether p can be a pinhole ftpalg opened: every address
// set, no port 0.
func (p Pinhole) valid() bool {
	return p.Peer.IsValid() && !p.Peer.IsUnspecified() && !p.Public.Addr().IsUnspecified() &&
		!p.Target.Addr().IsUnspecified() && p.Public.Port() != 0 && p.Target.Port() != 0
}

// Leftovers returns the pinholes of the enabled families that the kernel
// holds and this table did not open: what a predecessor left (a handover
// keeps its tables and their elements; so does a crash). The daemon takes
// them over, so that each still admits one data connection only and its
// public port stays reserved until it expires. Call it after Install.
func (t *NFTable) Leftovers() ([]Leftover, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []Leftover
	for _, f := range t.cfg.Families() {
		ls, err := t.k.leftovers(f)
		if err != nil {
			return out, fmt.Errorf("listing %s pinholes left in nftables table %s: %w", f, NFTTableName, err)
		}
		for _, l := range ls {
			if t.open[l.Pinhole] == nil && l.Left > 0 {
				out = append(out, l)
			}
		}
	}
	return out, nil
}

// appendAddr appends a as 4 or 16 bytes in network order.
func appendAddr(b []byte, a netip.Addr) []byte {
	return append(b, a.AsSlice()...)
}

// appendAddrPort appends the address and then the port.
func appendAddrPort(b []byte, ap netip.AddrPort) []byte {
	return appendPort(appendAddr(b, ap.Addr()), ap.Port())
}

// appendPort appends a port in network order, padded with two zero bytes
// as the kernel's registers hold it.
func appendPort(b []byte, port uint16) []byte {
	b = binary.BigEndian.AppendUint16(b, port)
	return append(b, 0, 0)
}

// acceptMarkSpec is the static FTPALG-ACCEPT rule that accepts the NEW TCP
// packets the nftables chain marked as belonging to a pinhole, in the form
// `iptables -S` prints.
func acceptMarkSpec(mark uint32) []string {
	return markAcceptSpec("mark", mark, "ftpalg nftables pinholes")
}
