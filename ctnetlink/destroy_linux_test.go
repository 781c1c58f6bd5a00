package ctnetlink

import (
	"context"
	"errors"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"
)

// destroyDeadline bounds the wait for a DESTROY event. A closed entry is
// destroyed once its TIME_WAIT timeout (lowered to 1 s by
// shortCloseTimeouts) has run out and something reaps it: the tests dump
// the table every reapInterval, which kills the expired entries the dump
// meets, and conntrack's garbage collector does too, within about a minute
// at worst.
const (
	destroyDeadline = 30 * time.Second
	reapInterval    = 250 * time.Millisecond
)

// shortCloseTimeouts makes the router's conntrack forget closed
// connections after 1 s instead of 2 minutes (TIME_WAIT) or 10 s (CLOSE,
// after a reset). The sysctls are per network namespace. The other
// timeouts stay: a half-closed entry expiring early would be recreated
// by the next segment (nf_conntrack_tcp_loose), with events of its own.
func (r *rig) shortCloseTimeouts(tb testing.TB) {
	tb.Helper()
	r.exec(tb, "sysctl", "-qw",
		"net.netfilter.nf_conntrack_tcp_timeout_time_wait=1",
		"net.netfilter.nf_conntrack_tcp_timeout_close=1")
	if got := strings.TrimSpace(r.exec(tb, "sysctl", "-n", "net.netfilter.nf_conntrack_tcp_timeout_time_wait")); got != "1" {
		tb.Fatalf("TIME_WAIT timeout in the router namespace is %q after setting 1", got)
	}
}

// closeBoth closes both ends of cn, which conntrack sees as FINs both ways:
// the entry goes to TIME_WAIT.
func closeBoth(tb testing.TB, cn conn) {
	tb.Helper()
	if err := cn.cli.Close(); err != nil {
		tb.Fatal(err)
	}
	if err := cn.srv.Close(); err != nil {
		tb.Fatal(err)
	}
}

// waitDestroyed reads destroys until every entry of want (by original
// tuple) has been reported, and returns all it read, in order, want's and
// others'. Meanwhile it dumps the table through reaper every reapInterval
// so that expired entries are reaped now rather than by the garbage
// collector. It fails after destroyDeadline.
func waitDestroyed(tb testing.TB, reaper *Client, destroys <-chan Destroyed, want []Entry) []Destroyed {
	tb.Helper()
	missing := map[Tuple]bool{}
	for _, e := range want {
		missing[e.Orig] = true
	}
	var got []Destroyed
	deadline := time.After(destroyDeadline)
	tick := time.NewTicker(reapInterval)
	defer tick.Stop()
	for len(missing) > 0 {
		select {
		case d := <-destroys:
			got = append(got, d)
			delete(missing, d.Orig)
		case <-tick.C:
			if _, err := reaper.Dump(); err != nil {
				tb.Fatal(err)
			}
		case <-deadline:
			tb.Fatalf("no DESTROY event within %v for %v (got %v)", destroyDeadline, missing, got)
		}
	}
	return got
}

// TestEntryID checks Entry.ID against the kernel: Lookup and Dump give the
// same ID for an entry, conntrack -L (libnetfilter_conntrack) prints it
// too, and two connections have different ones.
func TestEntryID(t *testing.T) {
	r := newRig(t)
	c := r.openClient(t)
	var entries []Entry
	for _, f := range []flow{flows[1], flows[1], flows[2], flows[4]} {
		_, e := r.dialEntry(t, c, f)
		if e.ID == 0 {
			t.Errorf("Lookup of %v: ID 0", e)
		}
		entries = append(entries, e)
	}
	dump, err := c.Dump()
	if err != nil {
		t.Fatal(err)
	}
	ids := map[uint32]Entry{}
	for _, e := range entries {
		if o, dup := ids[e.ID]; dup {
			t.Errorf("entries %v and %v have the same ID %#x", o, e, e.ID)
		}
		ids[e.ID] = e
		found := false
		for _, d := range dump {
			if d.Orig == e.Orig {
				found = true
				if d.ID != e.ID {
					t.Errorf("entry %v: Lookup ID %#x, Dump ID %#x", e, e.ID, d.ID)
				}
			}
		}
		if !found {
			t.Errorf("Dump lacks %v", e)
		}
		if cli := r.cliID(t, e.Orig.Src); cli != e.ID {
			t.Errorf("entry %v: Lookup ID %d, conntrack -L id=%d", e, e.ID, cli)
		}
	}
}

// cliID reads the ID of the entry from client with conntrack -L -o id.
func (r *rig) cliID(tb testing.TB, client netip.AddrPort) uint32 {
	tb.Helper()
	fam := "ipv4"
	if client.Addr().Is6() {
		fam = "ipv6"
	}
	out := r.exec(tb, "conntrack", "-L", "-o", "id", "-f", fam, "-p", "tcp",
		"--orig-src", client.Addr().String(), "--orig-port-src", strconv.Itoa(int(client.Port())))
	for _, f := range strings.Fields(out) {
		if v, ok := strings.CutPrefix(f, "id="); ok {
			id, err := strconv.ParseUint(v, 10, 32)
			if err != nil {
				tb.Fatalf("conntrack id %q: %v", v, err)
			}
			return uint32(id)
		}
	}
	tb.Fatalf("conntrack -L -o id shows no id for %s:\n%s", client, out)
	return 0
}

// TestIDReusedPortPair reopens a connection on the tuples of one just
// reset, as a client reusing its port does: conntrack kills the old entry
// (its DESTROY event comes at once) and creates a new one. The test checks
// that the events come in that order on one socket, with the IDs Lookup
// gave, and logs whether the two IDs differ: they need not (see Entry.ID).
func TestIDReusedPortPair(t *testing.T) {
	r := newRig(t)
	c := r.openClient(t)
	// One channel for both kinds keeps the order Watch reported them in.
	type event struct {
		destroy bool
		e       Entry
	}
	events := make(chan event, 1024)
	news := make(chan NewFlow, 1024) // for waitWatching
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- c.Watch(ctx, WatchHandler{
			NewFlow:   func(f NewFlow) { events <- event{false, f}; news <- f },
			Destroyed: func(d Destroyed) { events <- event{true, d} },
		})
	}()
	defer func() {
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("Watch: %v", err)
		}
	}()
	waitWatching(t, r, news)

	// next returns the next event of the entry whose original tuple is
	// orig.
	next := func(orig Tuple) event {
		t.Helper()
		timeout := time.After(5 * time.Second)
		for {
			select {
			case ev := <-events:
				if ev.e.Orig == orig {
					return ev
				}
			case <-timeout:
				t.Fatalf("no event for %v", orig)
			}
		}
	}

	f := flows[1] // MASQUERADE to port 21
	first, old := r.dialEntry(t, c, f)
	if ev := next(old.Orig); ev.destroy || ev.e.ID != old.ID {
		t.Fatalf("first event of %v: destroy %v, ID %#x; want NEW, ID %#x", old, ev.destroy, ev.e.ID, old.ID)
	}
	// A reset leaves no TIME_WAIT on the client, so its port is free.
	if err := first.cli.SetLinger(0); err != nil {
		t.Fatal(err)
	}
	if err := first.cli.Close(); err != nil {
		t.Fatal(err)
	}
	// Wait until conntrack has seen the reset (CLOSE), or the SYN below
	// could meet an ESTABLISHED entry.
	deadline := time.Now().Add(5 * time.Second)
	for {
		e, err := c.Get(old.Orig)
		if err != nil {
			t.Fatal(err)
		}
		if e.TCPState == TCPClose {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("entry %v in state %d after a reset", e, e.TCPState)
		}
		time.Sleep(10 * time.Millisecond)
	}
	second := r.dialFrom(t, f, int(first.seen().Src.Port()))
	renewed, _, err := c.Lookup(second.seen())
	if err != nil {
		t.Fatal(err)
	}
	if renewed.Orig != old.Orig {
		t.Fatalf("reopened connection has tuple %v, want %v", renewed.Orig, old.Orig)
	}
	t.Logf("old entry ID %#x, new entry ID %#x, equal: %v", old.ID, renewed.ID, old.ID == renewed.ID)

	// The old entry's DESTROY, then the new one's NEW.
	if ev := next(old.Orig); !ev.destroy || ev.e.ID != old.ID || ev.e.TCPState != TCPClose {
		t.Errorf("event after the reopen: destroy %v, ID %#x, state %d; want DESTROY, ID %#x, state %d",
			ev.destroy, ev.e.ID, ev.e.TCPState, old.ID, TCPClose)
	}
	if ev := next(old.Orig); ev.destroy || ev.e.ID != renewed.ID {
		t.Errorf("second event after the reopen: destroy %v, ID %#x; want NEW, ID %#x", ev.destroy, ev.e.ID, renewed.ID)
	}
}

// TestWatchDestroy checks DESTROY events with the real kernel and the
// event filter for control ports 21 and 2122, beside an unfiltered Watch:
// a closed connection to a control port is reported with the tuples and
// the ID Lookup gave while it lived, whether the control port is the
// original destination (2122 forwarded to 2200), the reply source (2121
// forwarded to 21, also in a zone of the original direction, which puts a
// zone inside the original tuple and moves the reply tuple), or both
// (MASQUERADE to 21, IPv4 and IPv6); connections to other ports are
// destroyed first (as the unfiltered Watch shows) and never reach the
// filtered one.
func TestWatchDestroy(t *testing.T) {
	r := newRig(t)
	r.shortCloseTimeouts(t)
	for _, rule := range [][]string{
		{"iptables", "-t", "nat", "-A", "PREROUTING", "-i", "out0", "-d", "198.51.100.1", "-p", "tcp", "--dport", "2121", "-j", "DNAT", "--to-destination", "192.0.2.20:21"},
		{"iptables", "-t", "nat", "-A", "PREROUTING", "-i", "out0", "-d", "198.51.100.1", "-p", "tcp", "--dport", "2122", "-j", "DNAT", "--to-destination", "192.0.2.20:2200"},
		{"iptables", "-t", "nat", "-A", "PREROUTING", "-i", "out0", "-d", "198.51.100.1", "-p", "tcp", "--dport", "2123", "-j", "DNAT", "--to-destination", "192.0.2.20:21"},
		{"iptables", "-t", "raw", "-A", "PREROUTING", "-i", "out0", "-d", "198.51.100.1", "-p", "tcp", "--dport", "2123", "-j", "CT", "--zone-orig", "7"},
	} {
		r.exec(t, rule...)
	}
	forwarded := func(name, target, listen string) flow {
		return flow{name: name, clientNS: nsOut, local: "198.51.100.30", target: target, serverNS: nsIn, listen: listen}
	}
	controls := []flow{
		flows[1], // MASQUERADE to 21
		forwarded("2121 to 21", "198.51.100.1:2121", "192.0.2.20:21"),
		forwarded("2122 to 2200", "198.51.100.1:2122", "192.0.2.20:2200"),
		forwarded("2123 to 21 in a zone", "198.51.100.1:2123", "192.0.2.20:21"),
		flows[4], // IPv6 MASQUERADE to 21
	}
	others := []flow{
		flows[0], // no NAT, to 2121
		flows[3], // DNAT and SNAT, to 2100
	}

	all, filtered := r.openClient(t), r.openClient(t)
	if err := filtered.FilterEvents(1024, []uint16{21, 2122}); err != nil {
		t.Fatal(err)
	}
	allW := watchEvents(t, all, nil, true)
	filteredW := watchEvents(t, filtered, nil, true)
	waitWatching(t, r, allW.news)
	waitWatching(t, r, filteredW.news) // flows[0] is to port 2121

	// Other ports first, until the unfiltered Watch has seen them go.
	var gone []Entry
	for _, f := range others {
		cn, e := r.dialEntry(t, all, f)
		closeBoth(t, cn)
		gone = append(gone, e)
	}
	for _, d := range waitDestroyed(t, all, allW.destroys, gone) {
		for _, e := range gone {
			if d.Orig == e.Orig && (d.Reply != e.Reply || d.ID != e.ID) {
				t.Errorf("unfiltered DESTROY %v id %#x, Lookup gave %v id %#x", d, d.ID, e, e.ID)
			}
		}
	}

	// Then the control connections.
	var want []Entry
	for _, f := range controls {
		cn, e := r.dialEntry(t, all, f)
		if strings.Contains(f.name, "zone") {
			if out := r.exec(t, "conntrack", "-L", "-p", "tcp", "--dport", "2123"); !strings.Contains(out, "zone-orig=7") {
				t.Fatalf("connection %s is not in an original-direction zone:\n%s", f.name, out)
			}
		}
		closeBoth(t, cn)
		want = append(want, e)
	}
	got := waitDestroyed(t, all, filteredW.destroys, want)
	if len(got) != len(want) {
		t.Errorf("filtered Watch reported %d DESTROY events, want %d: %v", len(got), len(want), got)
	}
	for _, d := range got {
		var e *Entry
		for i := range want {
			if want[i].Orig == d.Orig {
				e = &want[i]
			}
		}
		switch {
		case e == nil:
			t.Errorf("filtered Watch reported the DESTROY of %v, not a control connection", d)
		case d.Reply != e.Reply || d.ID != e.ID:
			t.Errorf("DESTROY %v id %#x, Lookup gave %v id %#x", d, d.ID, e, e.ID)
		case !d.TCPState.Closed():
			t.Errorf("DESTROY of %v in TCP state %d, want closed", d, d.TCPState)
		}
	}
	// The unfiltered Watch saw them too.
	waitDestroyed(t, all, allW.destroys, want)
}

// TestSubscribeDestroyBeforeWatch checks that a connection that ends after
// SubscribeDestroy but before Watch starts is reported, and the handler
// rules: SubscribeDestroy needs a Destroyed handler, and a Watch that
// ended left the DESTROY group, so that a later Watch without one runs.
func TestSubscribeDestroyBeforeWatch(t *testing.T) {
	r := newRig(t)
	r.shortCloseTimeouts(t)
	c := r.openClient(t)
	if err := c.FilterEvents(1024, []uint16{21}); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := c.Subscribe(); err != nil {
			t.Fatal(err)
		}
		if err := c.SubscribeDestroy(); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Watch(context.Background(), WatchHandler{NewFlow: func(NewFlow) {}}); err == nil || errors.Is(err, ErrWatching) {
		t.Fatalf("Watch without Destroyed after SubscribeDestroy: %v, want an error", err)
	}
	// That Watch left the groups: join them again.
	if err := c.Subscribe(); err != nil {
		t.Fatal(err)
	}
	if err := c.SubscribeDestroy(); err != nil {
		t.Fatal(err)
	}

	cn, e := r.dialEntry(t, c, flows[1]) // MASQUERADE to 21
	closeBoth(t, cn)
	// Let the entry expire and be reaped before Watch runs.
	deadline := time.Now().Add(destroyDeadline)
	for {
		if _, err := c.Dump(); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Get(e.Orig); errors.Is(err, ErrNotFound) {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("entry %v still there after %v", e, destroyDeadline)
		}
		time.Sleep(reapInterval)
	}

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	destroys := make(chan Destroyed, 16)
	go func() {
		done <- c.Watch(ctx, WatchHandler{NewFlow: func(NewFlow) {}, Destroyed: func(d Destroyed) { destroys <- d }})
	}()
	select {
	case d := <-destroys:
		if d.Orig != e.Orig || d.ID != e.ID {
			t.Errorf("DESTROY %v id %#x, want %v id %#x", d, d.ID, e, e.ID)
		}
	case <-time.After(5 * time.Second):
		t.Errorf("no DESTROY event for %v, which ended between SubscribeDestroy and Watch", e)
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Watch: %v", err)
	}
	// A Watch without Destroyed now runs: the last one left the group.
	ctx, cancel = context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := c.Watch(ctx, WatchHandler{NewFlow: func(NewFlow) {}}); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Watch without Destroyed after a Watch with it: %v, want the context's end", err)
	}
}
