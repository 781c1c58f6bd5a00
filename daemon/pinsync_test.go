package daemon

import (
	"errors"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/conntrack"
	"github.com/ftpalg/ftpalg/pinsync"
	"github.com/ftpalg/ftpalg/rules"
)

// sentLog records what the keeper sends to the other router (the link's
// Send); the UDP path itself runs for real in TestPinSyncNetns.
type sentLog struct {
	mu   sync.Mutex
	msgs []pinsync.Message
}

func (s *sentLog) Send(m pinsync.Message) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.msgs = append(s.msgs, m)
	return nil
}

func (s *sentLog) all() []pinsync.Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]pinsync.Message(nil), s.msgs...)
}

func syncMsg(session uint64, p rules.Pinhole, left time.Duration) pinsync.Message {
	return pinsync.Message{Type: pinsync.TypePinhole, Session: session, Timeout: left, Peer: p.Peer, Public: p.Public, Target: p.Target}
}

// Each pinhole opened here is sent with the full timeout, again when it is
// announced again; a resync sends what each has left; pinholes received
// from the other router are never sent back.
func TestPinholeSyncSends(t *testing.T) {
	fw, sent := newFakeFirewall(), &sentLog{}
	k := NewPinholes(fw, newPorts(t), time.Minute, Limits{}, quiet)
	defer k.Stop()
	now := time.Now()
	k.clock = func() time.Time { return now }
	k.SyncTo(sent)
	if err := k.Open(7, cli0, conntrack.PathForward, hole, false); err != nil {
		t.Fatal(err)
	}
	if err := k.Open(7, cli0, conntrack.PathForward, hole, false); err != nil {
		t.Fatal(err)
	}
	other := holeOn(50005)
	other.Peer = netip.MustParseAddr("198.51.100.21")
	if err := k.OpenSynced(9, other, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	now = now.Add(20*time.Second + 500*time.Microsecond)
	if n := k.Resend(); n != 1 {
		t.Fatalf("Resend sent %d, want 1 (the synced pinhole is not sent back)", n)
	}
	want := []pinsync.Message{syncMsg(7, hole, time.Minute), syncMsg(7, hole, time.Minute), syncMsg(7, hole, 39999*time.Millisecond)} // what was left, truncated to ms
	got := sent.all()
	if len(got) != len(want) {
		t.Fatalf("sent %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("message %d: %+v, want %+v", i, got[i], want[i])
		}
	}
	if s := k.Stats(); s.SyncSent != 3 || s.SyncSendFailed != 0 {
		t.Fatalf("stats %+v", s)
	}
}

// A synced pinhole reserves its public port, shows as synced, and at its
// (the sender's remaining) timeout closes and releases the port.
func TestOpenSyncedExpires(t *testing.T) {
	fw, ports := newFakeFirewall(), newPorts(t)
	k := NewPinholes(fw, ports, time.Minute, Limits{}, quiet)
	defer k.Stop()
	if err := k.OpenSynced(42, hole, 100*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if !ports.Reserved(public.Addr(), public.Port()) || fw.open() != 1 {
		t.Fatalf("reserved %v, %d in firewall", ports.Reserved(public.Addr(), public.Port()), fw.open())
	}
	l := k.List()
	if len(l) != 1 || !l[0].Synced || l[0].Session != 42 || l[0].Expires.Sub(l[0].Opened) != 100*time.Millisecond {
		t.Fatalf("List = %+v", l)
	}
	if got := fw.waitClosed(t); got != hole {
		t.Fatalf("closed %v", got)
	}
	if ports.Reserved(public.Addr(), public.Port()) {
		t.Fatal("public port still reserved after expiry")
	}
	if s := k.Stats(); s.SyncExpired != 1 || s.Expired != 0 || s.Opened != 0 {
		t.Fatalf("stats %+v", s)
	}
}

// The data connection of a synced pinhole (after a failover) is admitted,
// marked and closes it, like any other; it counts as SyncUsed.
func TestOpenSyncedUsed(t *testing.T) {
	fw := newFakeFirewall()
	k := NewPinholes(fw, newPorts(t), time.Minute, Limits{}, quiet)
	defer k.Stop()
	if err := k.OpenSynced(42, hole, time.Minute); err != nil {
		t.Fatal(err)
	}
	marked := false
	if !k.Used(peer, public, func() error { marked = true; return nil }) || !marked {
		t.Fatalf("data connection did not match (marked %v)", marked)
	}
	fw.waitClosed(t)
	if s := k.Stats(); s.SyncUsed != 1 || s.Used != 0 || k.Len() != 0 {
		t.Fatalf("stats %+v, %d open", s, k.Len())
	}
}

// Received again, a synced pinhole keeps one record and one firewall
// reference, with its clock restarted; another target for the same
// public endpoint replaces it and keeps its port reserved.
func TestOpenSyncedAgain(t *testing.T) {
	fw, ports := newFakeFirewall(), newPorts(t)
	k := NewPinholes(fw, ports, time.Minute, Limits{}, quiet)
	defer k.Stop()
	for range 2 {
		if err := k.OpenSynced(42, hole, time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	fw.waitClosed(t) // the extra reference
	if k.Len() != 1 || fw.open() != 1 {
		t.Fatalf("%d records, %d in firewall", k.Len(), fw.open())
	}
	moved := hole
	moved.Target = netip.MustParseAddrPort("192.0.2.11:40000")
	if err := k.OpenSynced(43, moved, time.Minute); err != nil {
		t.Fatal(err)
	}
	if got := fw.waitClosed(t); got != hole {
		t.Fatalf("closed %v, want the replaced %v", got, hole)
	}
	if l := k.List(); len(l) != 1 || l[0].Pinhole != moved || !ports.Reserved(public.Addr(), public.Port()) {
		t.Fatalf("List %+v, port reserved %v", l, ports.Reserved(public.Addr(), public.Port()))
	}
}

// What a synced pinhole must not take: this router's own pinhole for the
// same data connection, a public port reserved here for another one, more
// than Limits.Total of them; a firewall failure releases the port.
func TestOpenSyncedRefused(t *testing.T) {
	fw, ports := newFakeFirewall(), newPorts(t)
	k := NewPinholes(fw, ports, time.Minute, Limits{Total: 1}, quiet)
	defer k.Stop()
	if err := k.Open(1, cli0, conntrack.PathForward, hole, false); err != nil {
		t.Fatal(err)
	}
	if err := k.OpenSynced(2, hole, time.Minute); !errors.Is(err, ErrSyncConflict) {
		t.Fatalf("same data connection as a local pinhole: %v", err)
	}
	if _, err := ports.Reserve(public.Addr(), 50003); err != nil {
		t.Fatal(err)
	}
	taken := holeOn(50003)
	taken.Peer = netip.MustParseAddr("198.51.100.22")
	if err := k.OpenSynced(2, taken, time.Minute); !errors.Is(err, ErrSyncPortTaken) {
		t.Fatalf("port reserved here: %v", err)
	}
	fw.mu.Lock()
	fw.openErr = errors.New("nft says no")
	fw.mu.Unlock()
	if err := k.OpenSynced(2, holeOn(50004), time.Minute); err == nil || ports.Reserved(public.Addr(), 50004) {
		t.Fatalf("failed open: err %v, port still reserved %v", err, ports.Reserved(public.Addr(), 50004))
	}
	fw.mu.Lock()
	fw.openErr = nil
	fw.mu.Unlock()
	if err := k.OpenSynced(2, holeOn(50005), time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := k.OpenSynced(3, holeOn(50006), time.Minute); !errors.Is(err, ErrTotalLimit) {
		t.Fatalf("beyond Limits.Total: %v", err)
	}
	if fw.open() != 2 {
		t.Fatalf("%d in firewall, want the local and one synced", fw.open())
	}
}

// PinSync applies the policy before opening anything, counts what it
// refused, and answers a resync with this router's own pinholes.
func TestPinSyncMessage(t *testing.T) {
	fw, sent := newFakeFirewall(), &sentLog{}
	k := NewPinholes(fw, newPorts(t), 10*time.Second, Limits{}, quiet)
	defer k.Stop()
	k.SyncTo(sent)
	ps := NewPinSync(k, quiet)
	from := netip.MustParseAddrPort("203.0.113.2:3781")
	ps.Message(from, syncMsg(5, hole, 11*time.Second)) // beyond our timeout
	ps.Message(from, syncMsg(5, holeOn(1023), time.Second))
	if fw.open() != 0 {
		t.Fatalf("%d pinholes opened out of policy", fw.open())
	}
	ps.Message(from, syncMsg(5, hole, 9*time.Second))
	if l := k.List(); len(l) != 1 || !l[0].Synced || fw.open() != 1 {
		t.Fatalf("List %+v", l)
	}
	if err := k.Open(1, cli0, conntrack.PathForward, holeOn(50007), false); err != nil {
		t.Fatal(err)
	}
	ps.Message(from, pinsync.Message{Type: pinsync.TypeResync})
	if got := sent.all(); len(got) != 2 || got[1].Public != holeOn(50007).Public {
		t.Fatalf("sent %+v: want the local pinhole at open and again at resync", got)
	}
	if s := k.Stats(); s.SyncReceived != 1 || s.SyncRefused != 2 {
		t.Fatalf("stats %+v", s)
	}
}

// A pinhole received from the other router and then announced here (a
// client repeating its PORT after a failover) becomes this router's own:
// one record, one firewall reference, sent to the other router in turn.
func TestOpenTakesOverSynced(t *testing.T) {
	fw, sent := newFakeFirewall(), &sentLog{}
	k := NewPinholes(fw, newPorts(t), time.Minute, Limits{}, quiet)
	defer k.Stop()
	k.SyncTo(sent)
	routed := rules.Pinhole{Peer: peer, Public: target, Target: target}
	if err := k.OpenSynced(42, routed, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := k.Open(1, cli0, conntrack.PathForward, routed, false); err != nil {
		t.Fatal(err)
	}
	fw.waitClosed(t) // the synced record's reference
	l := k.List()
	if len(l) != 1 || l[0].Synced || l[0].Session != 1 || fw.open() != 1 {
		t.Fatalf("List %+v, %d in firewall", l, fw.open())
	}
	if got := sent.all(); len(got) != 1 || got[0] != syncMsg(1, routed, time.Minute) {
		t.Fatalf("sent %+v", got)
	}
}

// A synced pinhole on a public port that a synced copy of another peer's
// pinhole still holds replaces that copy: the sender reserves a port for
// one pinhole at a time, so the copy is stale. The port stays reserved,
// now for the new one, and is released when that closes.
func TestOpenSyncedReusedPort(t *testing.T) {
	fw, ports := newFakeFirewall(), newPorts(t)
	k := NewPinholes(fw, ports, time.Minute, Limits{}, quiet)
	defer k.Stop()
	if err := k.OpenSynced(13, hole, time.Minute); err != nil {
		t.Fatal(err)
	}
	next := rules.Pinhole{Peer: netip.MustParseAddr("198.51.100.30"), Public: public, Target: netip.MustParseAddrPort("192.0.2.20:50001")}
	if err := k.OpenSynced(44, next, time.Minute); err != nil {
		t.Fatalf("the other router reused its public port: %v", err)
	}
	if got := fw.waitClosed(t); got != hole {
		t.Fatalf("closed %v, want the stale copy %v", got, hole)
	}
	if l := k.List(); len(l) != 1 || l[0].Pinhole != next || !ports.Reserved(public.Addr(), public.Port()) {
		t.Fatalf("List %+v, port reserved %v", l, ports.Reserved(public.Addr(), public.Port()))
	}
	if !k.Used(next.Peer, public, nil) {
		t.Fatal("the new pinhole did not admit its data connection")
	}
	fw.waitClosed(t)
	if ports.Reserved(public.Addr(), public.Port()) {
		t.Fatal("public port still reserved after the last pinhole on it closed")
	}
}
