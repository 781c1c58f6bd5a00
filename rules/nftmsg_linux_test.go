package rules

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/ftpalg/ftpalg/internal/nlmsg"
)

// finePct formats a percentile of ds to a tenth of a microsecond.
func finePct(ds []time.Duration, p int) string {
	s := slices.Clone(ds)
	slices.Sort(s)
	i := (p*len(s)+99)/100 - 1
	return fmt.Sprintf("%.1fµs", float64(s[max(i, 0)])/float64(time.Microsecond))
}

// TestMeasureNFTableLatencyIdle measures NFTable's own Open and Close, without
// logging and at a tenth of a microsecond, in two patterns: back to back,
// and each call after the process was idle for 2 ms, as the daemon mostly
// is when a packet announcing a data connection arrives (a netlink socket
// that waits in Go's network poller is slowest then). It also measures the
// refresh of an open pinhole and, for kernels before 6.10, the
// delete-based close and refresh. Like TestMeasureNFTableLatency it reports
// figures and asserts nothing.
func TestMeasureNFTableLatencyIdle(t *testing.T) {
	if os.Getenv("FTPALG_MEASURE") == "" {
		t.Skip("a measurement, not a check: run with FTPALG_MEASURE=1 (make bench-pinholes)")
	}
	if !inFreshFNNetns(t, "li") {
		return
	}
	n, err := NewNFTable(nftConfig(), time.Minute, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Install(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := n.Remove(); err != nil {
			t.Errorf("Remove: %v", err)
		}
	})
	update := n.update
	kinds := []struct {
		name string
		make func(i int) Pinhole
	}{
		{"IPv4 NAT", func(i int) Pinhole {
			p := v4NAT
			p.Public = netip.AddrPortFrom(p.Public.Addr(), uint16(20000+i))
			return p
		}},
		{"IPv4 routed", func(i int) Pinhole {
			p := v4Plain
			p.Public = netip.AddrPortFrom(p.Public.Addr(), uint16(20000+i))
			p.Target = p.Public
			return p
		}},
		{"IPv6 NAT", func(i int) Pinhole {
			p := v6NAT
			p.Public = netip.AddrPortFrom(p.Public.Addr(), uint16(20000+i))
			return p
		}},
	}
	type op struct {
		what string
		fn   func(Pinhole) error
	}
	var report strings.Builder
	fmt.Fprintf(&report, "\n%-12s %-10s %-16s %10s %10s %10s %10s\n", "pinholes", "pace", "operation", "p50", "p90", "p99", "max")
	measure := func(kind string, pace time.Duration, count int, mk func(int) Pinhole, ops []op) {
		ds := make([][]time.Duration, len(ops))
		for j, o := range ops {
			for i := range count {
				if pace > 0 {
					time.Sleep(pace)
				}
				start := time.Now()
				err := o.fn(mk(i))
				ds[j] = append(ds[j], time.Since(start))
				if err != nil {
					t.Fatalf("%s %s: %v", kind, o.what, err)
				}
			}
		}
		paceName := "back2back"
		if pace > 0 {
			paceName = "idle " + pace.String()
		}
		for j, o := range ops {
			fmt.Fprintf(&report, "%-12s %-10s %-16s %10s %10s %10s %10s\n", kind, paceName, o.what,
				finePct(ds[j], 50), finePct(ds[j], 90), finePct(ds[j], 99), finePct(ds[j], 100))
		}
	}
	std := []op{{"open", n.Open}, {"refresh", n.Open}, {"close (2 refs)", n.Close}, {"close", n.Close}}
	for _, pace := range []time.Duration{0, 2 * time.Millisecond} {
		count := 1000
		if pace > 0 {
			count = 300
		}
		for _, k := range kinds {
			measure(k.name, pace, count, k.make, std)
		}
	}
	// Kernels before 6.10 refresh by delete and add, and close by delete.
	n.update = false
	old := []op{{"open", n.Open}, {"refresh (<6.10)", n.Open}, {"close (2 refs)", n.Close}, {"close (<6.10)", n.Close}}
	measure(kinds[0].name, 2*time.Millisecond, 100, kinds[0].make, old)
	n.update = update
	t.Logf("NFTable alone, no logging, timeout updates %v:%s", update, report.String())
}

// googleBatch returns the messages google/nftables sends for what fill
// queues, without sending them anywhere.
func googleBatch(t *testing.T, fill func(cc *nftables.Conn) error) []netlink.Message {
	t.Helper()
	var sent []netlink.Message
	cc, err := nftables.New(nftables.WithTestDial(func(req []netlink.Message) ([]netlink.Message, error) {
		sent = append(sent, req...) // also called with none on each receive
		return nil, nil
	}))
	if err != nil {
		t.Fatal(err)
	}
	if err := fill(cc); err != nil {
		t.Fatal(err)
	}
	if err := cc.Flush(); err != nil {
		t.Fatalf("google/nftables Flush to the test dialer: %v", err)
	}
	return sent
}

// splitNetlink splits a batch into its messages.
func splitNetlink(t *testing.T, b []byte) [][]byte {
	t.Helper()
	var msgs [][]byte
	for len(b) > 0 {
		if len(b) < nlmsg.HeaderLen {
			t.Fatalf("%d trailing bytes", len(b))
		}
		n := int(binary.NativeEndian.Uint32(b))
		if n < nlmsg.HeaderLen || n > len(b) || n%4 != 0 {
			t.Fatalf("message length %d in %d bytes", n, len(b))
		}
		msgs = append(msgs, b[:n])
		b = b[n:]
	}
	return msgs
}

// TestNFTBatchMatchesGoogle checks the fast path's encoding byte for byte
// against google/nftables v0.3.0, which nftConn used for the same
// operations before, as the oracle: adding routed and NAT pinholes of both
// families (NAT ones with their map element and value) with each timeout
// NFTable uses, deleting them, and replace's delete-and-add. Every byte of
// every message is compared, batch begin and end included, except two
// header fields that google/nftables' netlink library fills in as it
// sends, and whose value only has to be consistent within one socket:
// nlmsg_seq (it counts from 1 per connection; appendNFTBatch numbers from
// the seq it is given, checked separately) and nlmsg_pid (the library
// writes its socket's port ID, or nltest's 1; the fast path writes 0,
// which the kernel accepts as well and ignores in requests).
func TestNFTBatchMatchesGoogle(t *testing.T) {
	k, err := newNFTKernel(DefaultAcceptMark, 0, RoleBoth)
	if err != nil {
		t.Fatal(err)
	}
	c := k.(*nftConn)
	pinholes := []struct {
		name string
		p    Pinhole
	}{
		{"routed v4", v4Plain},
		{"routed v6", v6Plain},
		{"NAT v4", v4NAT},
		{"NAT v6", v6NAT},
	}
	const timeout = time.Minute
	ttls := []time.Duration{
		timeout + NFTTimeoutMargin,
		timeout + NFTTimeoutMargin - nftRefreshStep,
		nftExpireNow,
		400 * 24 * time.Hour, // more than 32 bits of milliseconds
	}
	type variant struct {
		name   string
		ours   []nftElemOp
		google func(cc *nftables.Conn) error
	}
	for _, ph := range pinholes {
		n, err := ph.p.normalize()
		if err != nil {
			t.Fatal(err)
		}
		e := n.nftElems()
		googleDel := func(cc *nftables.Conn) error {
			for _, el := range c.elems(e) {
				if err := cc.SetDeleteElements(el.set, []nftables.SetElement{{Key: el.key}}); err != nil {
					return err
				}
			}
			return nil
		}
		variants := []variant{{"delete", c.delOps(c.elems(e)...), googleDel}}
		for _, ttl := range ttls {
			variants = append(variants,
				variant{fmt.Sprintf("add ttl=%v", ttl), c.addOps(e, ttl),
					func(cc *nftables.Conn) error { return c.queueAdd(cc, e, ttl) }},
				variant{fmt.Sprintf("replace ttl=%v", ttl), append(c.delOps(c.elems(e)...), c.addOps(e, ttl)...),
					func(cc *nftables.Conn) error {
						if err := googleDel(cc); err != nil {
							return err
						}
						return c.queueAdd(cc, e, ttl)
					}})
		}
		for _, v := range variants {
			for _, seq := range []uint32{1, 0xfffffffe} {
				t.Run(fmt.Sprintf("%s/%s/seq=%#x", ph.name, v.name, seq), func(t *testing.T) {
					b, err := appendNFTBatch(nil, seq, v.ours)
					if err != nil {
						t.Fatal(err)
					}
					ours := splitNetlink(t, b)
					theirs := googleBatch(t, v.google)
					if len(ours) != len(theirs) || len(ours) != len(v.ours)+2 {
						t.Fatalf("%d messages, google/nftables sends %d, want %d", len(ours), len(theirs), len(v.ours)+2)
					}
					for i := range ours {
						if got, want := binary.NativeEndian.Uint32(ours[i][8:]), seq+uint32(i); got != want {
							t.Errorf("message %d: seq %#x, want %#x", i, got, want)
						}
						got := bytes.Clone(ours[i])
						m := theirs[i]
						m.Header.Sequence, m.Header.PID = 0, 0
						want, err := m.MarshalBinary()
						if err != nil {
							t.Fatal(err)
						}
						clear(got[8:16]) // seq and pid, see above
						if !bytes.Equal(got, want) {
							t.Errorf("message %d differs from google/nftables':\n got %x\nwant %x", i, got, want)
						}
					}
				})
			}
		}
	}
}

// TestNFTConstants checks the numbers nftmsg.go spells out against
// golang.org/x/sys/unix.
func TestNFTConstants(t *testing.T) {
	for _, c := range []struct {
		name      string
		got, want int
	}{
		{"NLMSG_ERROR", nlmsgError, unix.NLMSG_ERROR},
		{"NLM_F_REQUEST", nlmFRequest, unix.NLM_F_REQUEST},
		{"NLM_F_ACK", nlmFAck, unix.NLM_F_ACK},
		{"NLM_F_CREATE", nlmFCreate, unix.NLM_F_CREATE},
		{"NLA_F_NESTED", nlaFNested, unix.NLA_F_NESTED},
		{"NLMSG_HDRLEN", nlmsg.HeaderLen, unix.NLMSG_HDRLEN},
		{"NFNL_MSG_BATCH_BEGIN", nfnlMsgBatchBegin, unix.NFNL_MSG_BATCH_BEGIN},
		{"NFNL_MSG_BATCH_END", nfnlMsgBatchEnd, unix.NFNL_MSG_BATCH_END},
		{"NFNL_SUBSYS_NFTABLES", nfnlSubsysNFTables, unix.NFNL_SUBSYS_NFTABLES},
		{"NFNETLINK_V0", nfnetlinkV0, unix.NFNETLINK_V0},
		{"NFT_MSG_NEWSETELEM", nftMsgNewSetElem, unix.NFT_MSG_NEWSETELEM},
		{"NFT_MSG_DELSETELEM", nftMsgDelSetElem, unix.NFT_MSG_DELSETELEM},
		{"NFTA_SET_ELEM_LIST_TABLE", nftaSetElemListTable, unix.NFTA_SET_ELEM_LIST_TABLE},
		{"NFTA_SET_ELEM_LIST_SET", nftaSetElemListSet, unix.NFTA_SET_ELEM_LIST_SET},
		{"NFTA_SET_ELEM_LIST_ELEMENTS", nftaSetElemListElements, unix.NFTA_SET_ELEM_LIST_ELEMENTS},
		{"NFTA_SET_ELEM_LIST_SET_ID", nftaSetElemListSetID, unix.NFTA_SET_ELEM_LIST_SET_ID},
		{"NFTA_LIST_ELEM", nftaListElem, unix.NFTA_LIST_ELEM},
		{"NFTA_SET_ELEM_KEY", nftaSetElemKey, unix.NFTA_SET_ELEM_KEY},
		{"NFTA_SET_ELEM_DATA", nftaSetElemData, unix.NFTA_SET_ELEM_DATA},
		{"NFTA_SET_ELEM_TIMEOUT", nftaSetElemTimeout, unix.NFTA_SET_ELEM_TIMEOUT},
		{"NFTA_DATA_VALUE", nftaDataValue, unix.NFTA_DATA_VALUE},
	} {
		if c.got != c.want {
			t.Errorf("%s = %#x, want %#x", c.name, c.got, c.want)
		}
	}
}

// fastFD returns the fast path's socket, -1 when it is closed.
func fastFD(c *nftConn) int {
	c.fast.mu.Lock()
	defer c.fast.mu.Unlock()
	return c.fast.fd
}

// TestNFTSockRecovery checks that the fast path's persistent socket
// survives what the kernel refuses: a transaction that fails returns the
// kernel's errno (ENOENT for a table or element that is gone, which
// nftConn's callers rely on), the socket is replaced, and the next
// transaction works; and that answers to an earlier transaction still
// queued in the socket are told apart by their sequence numbers.
func TestNFTSockRecovery(t *testing.T) {
	if !inFreshFNNetns(t, "rc") {
		return
	}
	const ttl = time.Minute
	n := newInstalledNFTable(t, nftConfig(), ttl)
	c := n.k.(*nftConn)
	elemsOf := func(p Pinhole) nftElems {
		t.Helper()
		np, err := p.normalize()
		if err != nil {
			t.Fatal(err)
		}
		return np.nftElems()
	}
	nat, plain := elemsOf(v4NAT), elemsOf(v4Plain)
	v4NATState := nftState{
		nat:     []string{"198.51.100.20 . 192.0.2.10 . 2121 . 50000"},
		targets: []string{"198.51.100.20 . 198.51.100.1 . 50000 : 192.0.2.10 . 2121"},
	}
	plainElem := "198.51.100.20 . 192.0.2.10 . 2121"

	t.Run("table removed underneath", func(t *testing.T) {
		if err := n.Open(v4NAT); err != nil {
			t.Fatal(err)
		}
		checkNFTElements(t, IPv4, v4NATState)
		if fastFD(c) < 0 {
			t.Fatal("no socket after a successful transaction")
		}
		run(t, "nft", "delete", "table", "ip", NFTTableName)
		err := c.fast.txn(c.delOps(c.elems(nat)...))
		if !errors.Is(err, unix.ENOENT) || !errors.Is(err, ErrNFTables) || !missing(err) {
			t.Fatalf("deleting from a removed table: error %v, want ErrNFTables and ENOENT", err)
		}
		if !strings.Contains(err.Error(), "deleting from "+nftMapTargets) {
			t.Errorf("error %q does not name the map", err)
		}
		if fd := fastFD(c); fd >= 0 {
			t.Errorf("socket %d kept after a failed transaction", fd)
		}
		// del ignores what is missing; adding fails.
		if err := c.del(nat); err != nil {
			t.Errorf("del from a removed table: %v", err)
		}
		if err := n.Open(v4Plain); !errors.Is(err, unix.ENOENT) {
			t.Errorf("Open on a removed table: error %v, want ENOENT", err)
		}
		if err := n.Install(); err != nil {
			t.Fatal(err)
		}
		checkNFTElements(t, IPv4, v4NATState) // Install reopened it
		if err := n.Open(v4Plain); err != nil {
			t.Fatalf("Open after Install: %v", err)
		}
		want := v4NATState
		want.routed = []string{plainElem}
		checkNFTElements(t, IPv4, want)
		for _, p := range []Pinhole{v4NAT, v4Plain} {
			if err := n.Close(p); err != nil {
				t.Fatal(err)
			}
		}
		closeSettles()
		checkNFTElements(t, IPv4, nftState{})
	})

	t.Run("failure before the last message", func(t *testing.T) {
		// Two deletions, the first of an element that is not there:
		// the kernel answers the first with ENOENT and queues an
		// answer to the second, which the next transaction must not
		// take for its own.
		if err := c.add(plain, ttl); err != nil {
			t.Fatal(err)
		}
		ops := append(c.delOps(c.elems(nat)[1]), c.delOps(c.elems(plain)...)...)
		if err := c.fast.txn(ops); !errors.Is(err, unix.ENOENT) {
			t.Fatalf("error %v, want ENOENT", err)
		}
		// The batch was aborted as a whole: the routed element stays.
		checkNFTElements(t, IPv4, nftState{routed: []string{plainElem}})
		if err := c.add(nat, ttl); err != nil {
			t.Fatalf("add after a failed transaction: %v", err)
		}
		want := v4NATState
		want.routed = []string{plainElem}
		checkNFTElements(t, IPv4, want)
		for _, e := range []nftElems{nat, plain} {
			if err := c.del(e); err != nil {
				t.Fatal(err)
			}
		}
		checkNFTElements(t, IPv4, nftState{})
	})

	t.Run("stale answers", func(t *testing.T) {
		// Leave the answers to a transaction in the socket, unread, as
		// one cut short would if the socket were kept. The next
		// transaction must skip them by sequence number, not read their
		// failure or success as its own.
		v6 := elemsOf(v6Plain)
		unread := func(ops []nftElemOp) {
			t.Helper()
			c.fast.mu.Lock()
			defer c.fast.mu.Unlock()
			stale, err := appendNFTBatch(nil, c.fast.seq-100, ops)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := unix.Write(c.fast.fd, stale); err != nil {
				t.Fatal(err)
			}
		}
		if err := c.add(plain, ttl); err != nil { // also opens the socket
			t.Fatal(err)
		}
		// A failed deletion (nothing of nat is there) leaves two
		// ENOENTs and, for the addition aborted with it, an ack.
		unread(append(c.delOps(c.elems(nat)...), c.addOps(v6, ttl)...))
		if err := c.fast.txn(c.delOps(c.elems(plain)...)); err != nil {
			t.Fatalf("deletion with stale errors queued: %v", err)
		}
		checkNFTElements(t, IPv4, nftState{})
		checkNFTElements(t, IPv6, nftState{})
		// A successful addition leaves acks.
		unread(c.addOps(nat, ttl))
		if err := c.fast.txn(c.delOps(c.elems(plain)...)); !errors.Is(err, unix.ENOENT) {
			t.Fatalf("deleting a deleted element with stale acks queued: error %v, want ENOENT", err)
		}
		checkNFTElements(t, IPv4, v4NATState)
		if err := c.del(nat); err != nil {
			t.Fatal(err)
		}
		checkNFTElements(t, IPv4, nftState{})
	})

	t.Run("concurrent", func(t *testing.T) {
		// nftConn's callers hold NFTable's lock; the socket has its
		// own all the same.
		var wg sync.WaitGroup
		errs := make(chan error, 8)
		for g := range 8 {
			var es []nftElems
			for i := range 25 {
				p := v4NAT
				if g%2 == 1 {
					p = v6NAT
				}
				p.Public = netip.AddrPortFrom(p.Public.Addr(), uint16(30000+g*100+i))
				es = append(es, elemsOf(p))
			}
			wg.Go(func() {
				for _, e := range es {
					if err := c.add(e, ttl); err != nil {
						errs <- err
						return
					}
					if err := c.expire(e); err != nil {
						errs <- err
						return
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		closeSettles()
		for _, f := range families {
			checkNFTElements(t, f, nftState{})
		}
	})
}
