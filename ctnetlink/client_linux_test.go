package ctnetlink

import (
	"context"
	"errors"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ti-mo/conntrack"
)

// cliEntry reads the connection's entry with the conntrack CLI
// (libnetfilter_conntrack), an implementation independent of this package.
func (r *rig) cliEntry(tb testing.TB, client netip.AddrPort) Entry {
	tb.Helper()
	fam := "ipv4"
	if client.Addr().Is6() {
		fam = "ipv6"
	}
	out := r.exec(tb, "conntrack", "-L", "-f", fam, "-p", "tcp",
		"--orig-src", client.Addr().String(), "--orig-port-src", strconv.Itoa(int(client.Port())))
	for _, line := range strings.Split(out, "\n") {
		if !strings.HasPrefix(line, "tcp") {
			continue
		}
		var v []string
		for _, f := range strings.Fields(line) {
			k, val, ok := strings.Cut(f, "=")
			if ok && (k == "src" || k == "dst" || k == "sport" || k == "dport") {
				v = append(v, val)
			}
		}
		if len(v) != 8 {
			tb.Fatalf("cannot parse conntrack line %q", line)
		}
		ap := func(a, p string) netip.AddrPort {
			return netip.AddrPortFrom(netip.MustParseAddr(a), uint16(mustAtoi(tb, p)))
		}
		return Entry{
			Orig:  Tuple{Src: ap(v[0], v[2]), Dst: ap(v[1], v[3])},
			Reply: Tuple{Src: ap(v[4], v[6]), Dst: ap(v[5], v[7])},
		}
	}
	tb.Fatalf("conntrack -L shows no entry for %s:\n%s", client, out)
	return Entry{}
}

func mustAtoi(tb testing.TB, s string) int {
	n, err := strconv.Atoi(s)
	if err != nil {
		tb.Fatal(err)
	}
	return n
}

// TestPublicAddr checks PublicAddr against what the endpoints' sockets
// really see through the router's NAT, in each topology.
func TestPublicAddr(t *testing.T) {
	r := newRig(t)
	c := r.openClient(t)
	for _, f := range flows {
		t.Run(f.name, func(t *testing.T) {
			cn := r.dial(t, f)
			seen := cn.seen()

			e, d, err := c.Lookup(seen)
			if err != nil {
				t.Fatal(err)
			}
			if d != Original {
				t.Errorf("Lookup(%v) direction = %v, want original", seen, d)
			}
			if cli := r.cliEntry(t, seen.Src); cli.Orig != e.Orig || cli.Reply != e.Reply {
				t.Errorf("Lookup entry = %v, conntrack -L says %v", e, cli)
			}
			if e2, d2, err := c.Lookup(seen.Reverse()); err != nil || e2 != e || d2 != Reply {
				t.Errorf("Lookup(%v) = %v, %v, %v; want %v, reply", seen.Reverse(), e2, d2, err, e)
			}

			// The client's packets (original direction): the server sees
			// the client as the address accepted connections come from.
			got, err := c.PublicAddr(seen)
			if err != nil {
				t.Fatal(err)
			}
			if want := addrPort(cn.srv.RemoteAddr()).Addr(); got != want || got.String() != f.pubClient {
				t.Errorf("PublicAddr(%v) = %v; server socket sees %v, want %v", seen, got, want, f.pubClient)
			}
			// The server's packets (reply direction): the client sees the
			// server as the address it dialled.
			got, err = c.PublicAddr(seen.Reverse())
			if err != nil {
				t.Fatal(err)
			}
			if want := addrPort(cn.cli.RemoteAddr()).Addr(); got != want || got.String() != f.pubServer {
				t.Errorf("PublicAddr(%v) = %v; client socket sees %v, want %v", seen.Reverse(), got, want, f.pubServer)
			}
		})
	}
}

func TestLookupNotFound(t *testing.T) {
	r := newRig(t)
	c := r.openClient(t)
	seen := tup("192.0.2.10:1", "198.51.100.20:21")
	_, err := c.PublicAddr(seen)
	if !errors.Is(err, ErrNotFound) {
		t.Fatalf("err = %v, want ErrNotFound", err)
	}
	if !strings.Contains(err.Error(), seen.String()) {
		t.Errorf("error %q does not name the tuple %s", err, seen)
	}
	if err := c.SetLiberal(seen); !errors.Is(err, ErrNotFound) {
		t.Errorf("SetLiberal err = %v, want ErrNotFound", err)
	}
	if err := c.SetLiberalEntry(Entry{Orig: seen, Reply: seen.Reverse()}); !errors.Is(err, ErrNotFound) {
		t.Errorf("SetLiberalEntry err = %v, want ErrNotFound", err)
	}
	if _, err := c.PublicAddr(Tuple{}); !errors.Is(err, ErrInvalidTuple) {
		t.Errorf("zero tuple: err = %v, want ErrInvalidTuple", err)
	}
}

// tcpInfo reads the entry's TCP protocol info with ti-mo/conntrack, a
// decoder independent of this package. It dumps the table: ti-mo's Get
// hangs with mdlayher/netlink v1.11.2 (see Client.roundTrip).
func tcpInfo(tb testing.TB, ct *conntrack.Conn, e Entry) conntrack.ProtoInfoTCP {
	tb.Helper()
	f := dumpFlow(tb, ct, e)
	if f.ProtoInfo.TCP == nil {
		tb.Fatalf("entry %v has no TCP protoinfo", e)
	}
	return *f.ProtoInfo.TCP
}

// ctMark reads the entry's ct mark through ti-mo/conntrack.
func ctMark(tb testing.TB, ct *conntrack.Conn, e Entry) uint32 {
	tb.Helper()
	return dumpFlow(tb, ct, e).Mark
}

// dumpFlow finds e in a full dump through ti-mo/conntrack.
func dumpFlow(tb testing.TB, ct *conntrack.Conn, e Entry) conntrack.Flow {
	tb.Helper()
	flows, err := ct.Dump(nil)
	if err != nil {
		tb.Fatalf("conntrack dump: %v", err)
	}
	for _, f := range flows {
		o := f.TupleOrig
		if o.Proto.Protocol == protoTCP &&
			netip.AddrPortFrom(o.IP.SourceAddress, o.Proto.SourcePort) == e.Orig.Src &&
			netip.AddrPortFrom(o.IP.DestinationAddress, o.Proto.DestinationPort) == e.Orig.Dst {
			return f
		}
	}
	tb.Fatalf("conntrack dump has no entry %v", e)
	return conntrack.Flow{}
}

// ctFlags extracts the flags from ti-mo's view of a struct nf_ct_tcp_flags
// {u8 flags; u8 mask}, which it reads as one big-endian uint16.
func ctFlags(v uint16) uint8 { return uint8(v >> 8) }

func (r *rig) dialConntrack(tb testing.TB) *conntrack.Conn {
	tb.Helper()
	var ct *conntrack.Conn
	inNetns(tb, r.router, func() (err error) {
		ct, err = conntrack.Dial(nil)
		return err
	})
	tb.Cleanup(func() { ct.Close() })
	return ct
}

// TestSetLiberal checks that SetLiberal sets BE_LIBERAL in both directions
// and changes nothing else of the entry's TCP state.
func TestSetLiberal(t *testing.T) {
	r := newRig(t)
	c := r.openClient(t)
	ct := r.dialConntrack(t)
	for i, f := range flows {
		t.Run(f.name, func(t *testing.T) {
			cn, e := r.dialEntry(t, c, f)
			before := tcpInfo(t, ct, e)
			if ctFlags(before.OriginalFlags)&TCPFlagBeLiberal != 0 || ctFlags(before.ReplyFlags)&TCPFlagBeLiberal != 0 {
				t.Fatalf("entry already liberal: %+v", before)
			}
			// Alternate the two entry points and both directions of seen.
			var err error
			switch {
			case i%3 == 0:
				err = c.SetLiberalEntry(e)
			case i%3 == 1:
				err = c.SetLiberal(cn.seen())
			default:
				err = c.SetLiberal(cn.seen().Reverse())
			}
			if err != nil {
				t.Fatal(err)
			}
			after := tcpInfo(t, ct, e)
			want := before
			want.OriginalFlags |= TCPFlagBeLiberal << 8
			want.ReplyFlags |= TCPFlagBeLiberal << 8
			if after != want {
				t.Errorf("after SetLiberal: %+v, want %+v (before %+v)", after, want, before)
			}
			// Idempotent.
			if err := c.SetLiberalEntry(e); err != nil {
				t.Fatal(err)
			}
			if again := tcpInfo(t, ct, e); again != want {
				t.Errorf("after second SetLiberal: %+v, want %+v", again, want)
			}
		})
	}
}

// TestSetMarkBits checks that SetMarkBits sets its bits in the entry's ct
// mark and keeps the bits already there.
func TestSetMarkBits(t *testing.T) {
	r := newRig(t)
	c := r.openClient(t)
	ct := r.dialConntrack(t)
	for _, f := range flows {
		t.Run(f.name, func(t *testing.T) {
			_, e := r.dialEntry(t, c, f)
			for _, bits := range []uint32{0x1, 0x20000000} {
				if err := c.SetMarkBits(e.Orig, bits); err != nil {
					t.Fatal(err)
				}
			}
			if got := ctMark(t, ct, e); got != 0x20000001 {
				t.Errorf("mark = %#x, want 0x20000001", got)
			}
		})
	}
	if err := c.SetMarkBits(Tuple{Src: netip.MustParseAddrPort("192.0.2.99:1"), Dst: netip.MustParseAddrPort("198.51.100.99:2")}, 1); !errors.Is(err, ErrNotFound) {
		t.Errorf("marking a missing entry: %v, want ErrNotFound", err)
	}
}

// TestConcurrent runs lookups and updates from many goroutines on one Client
// (run with -race).
func TestConcurrent(t *testing.T) {
	r := newRig(t)
	c := r.openClient(t)
	conns := make([]conn, 0, len(flows))
	for _, f := range flows {
		conns = append(conns, r.dial(t, f))
	}
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 100 {
				cn := conns[(g+i)%len(conns)]
				seen := cn.seen()
				if i%2 == 1 {
					seen = seen.Reverse()
				}
				var err error
				if i%10 == 0 {
					err = c.SetLiberal(seen)
				} else {
					_, err = c.PublicAddr(seen)
				}
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// watch runs c.Watch in the background and returns its NEW events and
// overruns as channels; cleanup stops it.
func watch(t *testing.T, c *Client, block <-chan struct{}) (<-chan NewFlow, <-chan uint64) {
	t.Helper()
	w := watchEvents(t, c, block, false)
	return w.news, w.overruns
}

// watched is what a Watch started by watchEvents reports.
type watched struct {
	news     <-chan NewFlow
	destroys <-chan Destroyed // nil unless asked for
	overruns <-chan uint64
}

// watchEvents runs c.Watch in the background, with a Destroyed handler if
// destroys, and returns what it reports as channels; cleanup stops it.
func watchEvents(t *testing.T, c *Client, block <-chan struct{}, destroys bool) watched {
	t.Helper()
	events := make(chan NewFlow, 1024)
	overruns := make(chan uint64, 16)
	h := WatchHandler{
		NewFlow: func(f NewFlow) {
			if block != nil {
				<-block
			}
			select {
			case events <- f:
			default:
			}
		},
		// Never blocks: a full channel would stall Watch itself (a
		// tiny buffer overruns again and again while the test
		// drains events; seen once in CI, where Watch then missed
		// every event and did not return).
		Overrun: func(n uint64) {
			select {
			case overruns <- n:
			default:
			}
		},
	}
	w := watched{news: events, overruns: overruns}
	if destroys {
		ch := make(chan Destroyed, 1024)
		h.Destroyed = func(d Destroyed) {
			select {
			case ch <- d:
			default:
				t.Errorf("destroy event of %v dropped by the test", d)
			}
		}
		w.destroys = ch
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Watch(ctx, h) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if !errors.Is(err, context.Canceled) {
				t.Errorf("Watch returned %v, want context.Canceled", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("Watch did not return after cancel")
		}
	})
	return w
}

// createUDP creates a conntrack entry through ctnetlink, which the kernel
// reports as a NEW event like any other.
func createUDP(t *testing.T, ct *conntrack.Conn, sport uint16) {
	t.Helper()
	f := conntrack.NewFlow(17, 0, netip.MustParseAddr("203.0.113.1"), netip.MustParseAddr("203.0.113.2"), sport, 53, 60, 0)
	if err := ct.Create(f); err != nil {
		t.Fatalf("creating UDP entry port %d: %v", sport, err)
	}
}

// waitWatching makes sure Watch has joined the event group: it creates
// TCP connections until one is reported.
func waitWatching(t *testing.T, r *rig, events <-chan NewFlow) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		cn := r.dial(t, flows[0])
		timeout := time.After(100 * time.Millisecond)
		for {
			select {
			case f := <-events:
				if f.Orig.Src == cn.seen().Src {
					return
				}
				continue
			case <-timeout:
			}
			break
		}
	}
	t.Fatal("Watch reports no events")
}

// TestWatch checks the NEW event of a connection through a port forward:
// the original tuple is peer -> public address, as a data connection's is.
func TestWatch(t *testing.T) {
	r := newRig(t)
	c := r.openClient(t)
	events, _ := watch(t, c, nil)
	waitWatching(t, r, events)

	if err := c.Watch(context.Background(), WatchHandler{NewFlow: func(NewFlow) {}}); !errors.Is(err, ErrWatching) {
		t.Errorf("second Watch: %v, want ErrWatching", err)
	}

	f := flows[2] // DNAT port forward
	cn := r.dial(t, f)
	want := Entry{
		Orig:  Tuple{Src: addrPort(cn.cli.LocalAddr()), Dst: netip.MustParseAddrPort(f.target)},
		Reply: Tuple{Src: addrPort(cn.srv.LocalAddr()), Dst: addrPort(cn.cli.LocalAddr())},
	}
	timeout := time.After(5 * time.Second)
	for {
		select {
		case got := <-events:
			if got.Orig.Src != want.Orig.Src {
				continue // an earlier connection
			}
			if got.Orig != want.Orig || got.Reply != want.Reply {
				t.Fatalf("NEW event %v, want %v", got, want)
			}
			return
		case <-timeout:
			t.Fatalf("no NEW event for %v", want)
		}
	}
}

// TestSubscribeBeforeWatch checks that a connection opened after Subscribe
// but before Watch starts is still reported: a daemon subscribes before it
// binds its queues and starts Watch later, and an event in between must not
// be lost (it would leave a used pinhole open).
func TestSubscribeBeforeWatch(t *testing.T) {
	r := newRig(t)
	c := r.openClient(t)
	if err := c.Subscribe(); err != nil {
		t.Fatal(err)
	}
	if err := c.Subscribe(); err != nil {
		t.Fatalf("second Subscribe: %v", err)
	}
	f := flows[2] // DNAT port forward
	cn := r.dial(t, f)
	early := addrPort(cn.cli.LocalAddr())
	events, _ := watch(t, c, nil)
	timeout := time.After(5 * time.Second)
	for {
		select {
		case got := <-events:
			if got.Orig.Src == early {
				return
			}
		case <-timeout:
			t.Fatalf("no NEW event for %v, opened between Subscribe and Watch", early)
		}
	}
}

// TestWatchOverrun fills the event socket while the handler is stuck and
// checks that Watch reports the overrun and goes on delivering events.
func TestWatchOverrun(t *testing.T) {
	r := newRig(t)
	c := r.openClient(t)
	ct := r.dialConntrack(t)
	// The smallest buffer the kernel allows holds a handful of events.
	if err := c.events.SetReadBuffer(1); err != nil {
		t.Fatal(err)
	}
	block := make(chan struct{})
	events, overruns := watch(t, c, block)
	for i := range 500 {
		createUDP(t, ct, uint16(10000+i))
	}
	close(block) // unblock the handler; the socket overflowed meanwhile
	// Drain until an overrun is reported and a later event still arrives.
	select {
	case n := <-overruns:
		if n == 0 || c.Overruns() < n {
			t.Errorf("overrun total %d, Overruns() %d", n, c.Overruns())
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no overrun reported after 500 events into a tiny buffer")
	}
	waitWatching(t, r, events)
}

func benchPublicAddr(b *testing.B, f flow, reverse bool) {
	r := newRig(b)
	c := r.openClient(b)
	cn := r.dial(b, f)
	seen := cn.seen()
	if reverse {
		seen = seen.Reverse()
	}
	b.ResetTimer()
	for b.Loop() {
		if _, err := c.PublicAddr(seen); err != nil {
			b.Fatal(err)
		}
	}
}

// Lookups are one round trip when seen is a tuple of the entry, two when
// its reverse is, and two more table walks with SNAT and DNAT together.
func BenchmarkPublicAddr(b *testing.B) {
	b.Run("MASQUERADE/client", func(b *testing.B) { benchPublicAddr(b, flows[1], false) })
	b.Run("MASQUERADE/server", func(b *testing.B) { benchPublicAddr(b, flows[1], true) })
	b.Run("DNAT/client", func(b *testing.B) { benchPublicAddr(b, flows[2], false) })
	b.Run("DNAT/server", func(b *testing.B) { benchPublicAddr(b, flows[2], true) })
	b.Run("DNAT+SNAT/server", func(b *testing.B) { benchPublicAddr(b, flows[3], true) })
}

func BenchmarkSetLiberal(b *testing.B) {
	r := newRig(b)
	c := r.openClient(b)
	cn := r.dial(b, flows[1])
	e, _, err := c.Lookup(cn.seen())
	if err != nil {
		b.Fatal(err)
	}
	b.Run("Entry", func(b *testing.B) {
		for b.Loop() {
			if err := c.SetLiberalEntry(e); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("Tuple", func(b *testing.B) {
		for b.Loop() {
			if err := c.SetLiberal(cn.seen()); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// TestWatchFilter checks the event filter in the kernel, beside a Watch
// without it: the NEW events of a UDP entry and of TCP connections to port
// 21 (MASQUERADE, port forward, IPv6) never reach the filtered Watch, while
// a connection to port 2100 after them does, and the unfiltered Watch sees
// them all. If the kernel laid events out otherwise than the filter reads
// them, it would keep everything, and this test would fail.
func TestWatchFilter(t *testing.T) {
	r := newRig(t)
	all, filtered := r.openClient(t), r.openClient(t)
	if err := filtered.FilterEvents(1024, nil); err != nil {
		t.Fatal(err)
	}
	allEvents, _ := watch(t, all, nil)
	events, _ := watch(t, filtered, nil)
	waitWatching(t, r, allEvents)
	waitWatching(t, r, events) // flows[0] is to port 2121

	ct := r.dialConntrack(t)
	createUDP(t, ct, 40001)
	udp := netip.MustParseAddrPort("203.0.113.1:40001")
	dropped := map[netip.AddrPort]string{udp: "UDP to port 53"}
	for _, f := range flows {
		if netip.MustParseAddrPort(f.target).Port() < 1024 {
			cn := r.dial(t, f)
			dropped[addrPort(cn.cli.LocalAddr())] = f.name
		}
	}
	last := r.dial(t, flows[3]) // DNAT and SNAT, to port 2100
	marker := addrPort(last.cli.LocalAddr())

	for name, ch := range map[string]<-chan NewFlow{"filtered": events, "unfiltered": allEvents} {
		seen := map[netip.AddrPort]bool{}
		timeout := time.After(5 * time.Second)
	wait:
		for {
			select {
			case f := <-ch:
				if f.Orig.Src == marker {
					break wait
				}
				seen[f.Orig.Src] = true
			case <-timeout:
				t.Fatalf("%s Watch: no NEW event for %v", name, marker)
			}
		}
		for src, what := range dropped {
			if name == "filtered" && seen[src] {
				t.Errorf("filtered Watch got the event of %s (%v)", what, src)
			}
			// Watch reports TCP only: the UDP entry's event reached
			// the unfiltered socket but is not reported.
			if name == "unfiltered" && !seen[src] && src != udp {
				t.Errorf("unfiltered Watch missed the event of %s (%v)", what, src)
			}
		}
	}
}
