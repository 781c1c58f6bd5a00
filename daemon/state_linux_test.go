package daemon

import (
	"encoding/json"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/alg"
	"github.com/ftpalg/ftpalg/conntrack"
	"github.com/ftpalg/ftpalg/ctnetlink"
)

// orderCheckingLabels is the kernel's side of label writes for
// TestDurableOrder: at each write it records what was durable already.
type orderCheckingLabels struct {
	t      *testing.T
	store  *stateStore
	fw     *fakeFirewall
	writes int
}

func (l *orderCheckingLabels) Lookup(seen ctnetlink.Tuple) (ctnetlink.Entry, ctnetlink.Direction, error) {
	return ctnetlink.Entry{Orig: seen, Reply: ctnetlink.Tuple{Src: seen.Dst, Dst: seen.Src}}, 0, nil
}

func (l *orderCheckingLabels) SetLabels(_ ctnetlink.Tuple, labels, mask [16]byte, liberal bool) error {
	lab, err := conntrack.LabelsFromBytes(labels[:])
	if err != nil || !lab.Bit(conntrack.LabelRewritten) {
		return err // the login's write: nothing rewritten yet
	}
	l.writes++
	b, err := os.ReadFile(l.store.path(1))
	var st conntrack.FlowState
	if err == nil {
		err = json.Unmarshal(b, &st)
	}
	if err != nil || len(st.Halves[0].Edits) != 1 {
		l.t.Errorf("labels saying REWRITTEN written before the state file holds the rewrite (%v, %+v)", err, st.Halves[0])
	}
	if l.fw.open() != 1 {
		l.t.Errorf("labels written with %d pinholes open, want the PORT's", l.fw.open())
	}
	return nil
}

// TestDurableOrder checks the order in which a rewrite becomes durable
// before its packet is released: the pinhole, then the --state-dir file,
// then the conntrack labels. A SIGKILL between two of them must leave the
// successor the most it can know: a state file never older than the
// labels (it also knows where the client's stream is; measured: a kill
// between a label write and the file write lost a 227 session in
// TestRestartBusy), and no saved rewrite whose pinhole was never opened
// (the successor replays a saved rewrite without acting on it again).
func TestDurableOrder(t *testing.T) {
	fw, ports := newFakeFirewall(), newPorts(t)
	pins := NewPinholes(fw, ports, time.Minute, Limits{}, quiet)
	defer pins.Stop()
	store, err := openStateStore(t.TempDir(), quiet)
	if err != nil {
		t.Fatal(err)
	}
	lc := &orderCheckingLabels{t: t, store: store, fw: fw}
	labels := newLabelStore(lc, quiet)
	nat := &natResolver{mapper: fakeMapper{pub: netip.MustParseAddr("198.51.100.1")}, ports: ports}
	e := conntrack.New(conntrack.Config{VerifyChecksum: true, AllowBeforeLogin: true, WriteLabels: true, LabelSource: labels}, nat)
	gw := NewGateway(e, pins, &fakeLiberal{}, quiet)
	gw.keepLabels(labels)
	gw.state = store

	cli, srv := netip.MustParseAddrPort("192.0.2.10:40000"), netip.MustParseAddrPort("198.51.100.20:21")
	now := time.Now()
	gw.Handle(tcpPacket(t, cli, srv, 100, 0, true, ""), now)
	if v, _ := gw.Handle(tcpPacket(t, cli, srv, 101, 1, false, "PORT 192,0,2,10,156,64\r\n"), now); v != conntrack.AcceptModified {
		t.Fatalf("PORT: %v", v)
	}
	if lc.writes != 1 {
		t.Fatalf("%d label writes for the rewrite, want 1", lc.writes)
	}
}

// TestResumeCountsNew: a connection restored from --state-dir is in the
// dump at start too, with its labels; Resume leaves it to the state
// file's fuller view and counts only the connections it took over.
func TestResumeCountsNew(t *testing.T) {
	pins := NewPinholes(newFakeFirewall(), newPorts(t), time.Minute, Limits{}, quiet)
	defer pins.Stop()
	e := conntrack.New(conntrack.Config{}, nil)
	gw := NewGateway(e, pins, &fakeLiberal{}, quiet)
	srv := netip.MustParseAddrPort("192.0.2.20:21")
	restored := conntrack.Conn{Client: netip.MustParseAddrPort("198.51.100.30:40000"), Server: srv}
	d, err := alg.NewDialog(alg.Config{}).MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Restore(conntrack.FlowState{Conn: restored, Session: 5, Dialog: d}, time.Now()); err != nil {
		t.Fatal(err)
	}
	st := conntrack.LabelState{Rewritten: true, LoggedIn: true}
	st.Halves[1] = conntrack.LabelHalf{Pos: 5000, Shift: 1, Step: 1}
	lab := st.Encode().Bytes()
	entry := func(c conntrack.Conn) ctnetlink.Entry {
		return ctnetlink.Entry{Orig: ctnetlink.Tuple{Src: c.Client, Dst: netip.MustParseAddrPort("198.51.100.1:21")},
			Reply: ctnetlink.Tuple{Src: c.Server, Dst: c.Client}, Labels: lab, HasLabels: true, TCPState: ctnetlink.TCPEstablished}
	}
	fresh := conntrack.Conn{Client: netip.MustParseAddrPort("198.51.100.30:40002"), Server: srv}
	if n := gw.Resume([]ctnetlink.Entry{entry(restored), entry(fresh)}, time.Now()); n != 1 || e.Len() != 2 {
		t.Fatalf("Resume took over %d (%d tracked), want 1 (2)", n, e.Len())
	}
	var resumed []uint64
	e.Flows(func(f conntrack.FlowInfo) {
		if f.Resumed {
			resumed = append(resumed, f.Session)
		}
	})
	if len(resumed) != 1 || resumed[0] == 5 {
		t.Fatalf("resumed sessions %v, want only the one not restored", resumed)
	}
}

// TestStateOverwrite checks the in-place writes of a state file: a shorter
// state after a longer one, in this process and over a file a previous
// process left, loads as the shorter one (the padding is JSON whitespace),
// and a removed session's file is gone.
func TestStateOverwrite(t *testing.T) {
	dir := t.TempDir()
	conn := conntrack.Conn{Client: netip.MustParseAddrPort("192.0.2.10:40000"), Server: netip.MustParseAddrPort("198.51.100.20:21")}
	long := conntrack.FlowState{Conn: conn, Session: 3, Mapping: true, Dialog: make([]byte, 300)}
	long.Halves[0].Edits = []conntrack.EditState{{Start: 100, OldLen: 25, Repl: []byte("PORT 198,51,100,1,200,1\r\n")}}
	short := conntrack.FlowState{Conn: conn, Session: 3, Mapping: true, Dialog: []byte{1}}
	short.Halves[1].Base = 7

	loadOne := func(s *stateStore) conntrack.FlowState {
		t.Helper()
		got := s.load(time.Hour)
		if len(got) != 1 {
			t.Fatalf("loaded %d states, want 1", len(got))
		}
		return got[0]
	}
	s1, err := openStateStore(dir, quiet)
	if err != nil {
		t.Fatal(err)
	}
	s1.save(long)
	s1.save(short)
	if got := loadOne(s1); len(got.Dialog) != 1 || got.Halves[1].Base != 7 || len(got.Halves[0].Edits) != 0 {
		t.Fatalf("after a shorter write in the same process: %+v", got)
	}
	s1.save(long)

	// A successor knows no sizes: it must still pad to the file's.
	s2, err := openStateStore(dir, quiet)
	if err != nil {
		t.Fatal(err)
	}
	s2.save(short)
	if got := loadOne(s2); len(got.Dialog) != 1 || got.Halves[1].Base != 7 {
		t.Fatalf("after a shorter write over a previous process's file: %+v", got)
	}
	if s2.errors != 0 || s1.errors != 0 {
		t.Errorf("write errors: %d, %d", s1.errors, s2.errors)
	}
	s2.remove(3)
	if got := s2.load(time.Hour); len(got) != 0 {
		t.Errorf("after remove: %d states", len(got))
	}
}
