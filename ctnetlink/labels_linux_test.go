package ctnetlink

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"testing"
	"time"
)

// labelBytes lays out label bits as the kernel does on this machine
// (unsigned longs in host order; see conntrack.Labels, which tests every
// layout): built here by hand from two 64-bit words, so the test does not
// use the code under test to compute what it expects.
func labelBytes(bits ...int) [16]byte {
	var w [2]uint64
	for _, b := range bits {
		w[b/64] |= 1 << (b % 64)
	}
	var out [16]byte
	if strconv.IntSize == 64 {
		binary.NativeEndian.PutUint64(out[0:], w[0])
		binary.NativeEndian.PutUint64(out[8:], w[1])
	} else {
		for i := range 4 {
			binary.NativeEndian.PutUint32(out[i*4:], uint32(w[i/2]>>(32*(i%2))))
		}
	}
	return out
}

var allLabels = [16]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

// connlabelCounts returns the packet counter of each `-m connlabel --label
// N` rule in the router's mangle chain LBL, by N.
func (r *rig) connlabelCounts(t *testing.T) map[int]uint64 {
	t.Helper()
	out := r.exec(t, "iptables", "-t", "mangle", "-L", "LBL", "-v", "-x", "-n")
	re := regexp.MustCompile(`(?m)^\s*(\d+)\s+\d+\s.*connlabel '?(\d+)'?`)
	got := map[int]uint64{}
	for _, m := range re.FindAllStringSubmatch(out, -1) {
		n, _ := strconv.ParseUint(m[1], 10, 64)
		bit, _ := strconv.Atoi(m[2])
		got[bit] = n
	}
	if len(got) == 0 {
		t.Fatalf("no connlabel counters in\n%s", out)
	}
	return got
}

// TestLabels writes labels on real conntrack entries and reads them back:
// through Lookup, through Dump, and through the kernel's own connlabel match,
// which proves the bit numbering (bit N of the labels is `--label N`).
func TestLabels(t *testing.T) {
	r := newRig(t)
	c := r.openClient(t)
	ct := r.dialConntrack(t)
	f := flows[1] // MASQUERADE

	// An entry created before any connlabel rule has no label extension.
	early := r.dial(t, f)
	e0, _, err := c.Lookup(early.seen())
	if err != nil {
		t.Fatal(err)
	}
	err = c.SetLabels(e0.Orig, labelBytes(127), allLabels, true)
	if !errors.Is(err, ErrNoLabels) {
		t.Fatalf("labels on an entry made before any connlabel rule: %v, want ErrNoLabels", err)
	}
	t.Logf("entry without label extension: %v", err)
	// BE_LIBERAL of the same update is applied all the same.
	if ti := tcpInfo(t, ct, e0); ctFlags(ti.OriginalFlags)&TCPFlagBeLiberal == 0 || ctFlags(ti.ReplyFlags)&TCPFlagBeLiberal == 0 {
		t.Errorf("BE_LIBERAL not set beside refused labels: %+v", ti)
	}

	r.exec(t, "iptables", "-t", "mangle", "-N", "LBL")
	for _, bit := range []int{0, 1, 59, 60, 63, 64, 127} {
		r.exec(t, "iptables", "-t", "mangle", "-A", "LBL", "-m", "connlabel", "--label", strconv.Itoa(bit))
	}
	r.exec(t, "iptables", "-t", "mangle", "-A", "FORWARD", "-j", "LBL")

	cn := r.dial(t, f)
	e, _, err := c.Lookup(cn.seen())
	if err != nil {
		t.Fatal(err)
	}
	if e.HasLabels {
		t.Errorf("fresh entry reports labels %x", e.Labels)
	}
	want := labelBytes(0, 60, 64, 127)
	if err := c.SetLabels(e.Orig, want, allLabels, true); err != nil {
		t.Fatal(err)
	}
	got, _, err := c.Lookup(cn.seen())
	if err != nil {
		t.Fatal(err)
	}
	if !got.HasLabels || got.Labels != want {
		t.Fatalf("labels read back %x (present %v), want %x", got.Labels, got.HasLabels, want)
	}
	// The kernel's own match sees bits 0, 60, 64 and 127, and no other.
	before := r.connlabelCounts(t)
	if _, err := cn.cli.Write([]byte("NOOP\r\n")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 6)
	if err := cn.srv.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := cn.srv.Read(buf); err != nil {
		t.Fatal(err)
	}
	after := r.connlabelCounts(t)
	for bit, set := range map[int]bool{0: true, 1: false, 59: false, 60: true, 63: false, 64: true, 127: true} {
		if moved := after[bit] > before[bit]; moved != set {
			t.Errorf("connlabel --label %d matched: %v, want %v (counts %v -> %v)", bit, moved, set, before, after)
		}
	}

	// What a write costs a packet's verdict: one round trip (the daemon
	// keeps each connection's original tuple), with BE_LIBERAL in it.
	const n = 2000
	writes, gets := make([]time.Duration, n), make([]time.Duration, n)
	for i := range n {
		start := time.Now()
		if err := c.SetLabels(e.Orig, labelBytes(i%60, 127), allLabels, true); err != nil {
			t.Fatal(err)
		}
		writes[i] = time.Since(start)
		start = time.Now()
		if _, _, err := c.Lookup(cn.seen()); err != nil {
			t.Fatal(err)
		}
		gets[i] = time.Since(start)
	}
	slices.Sort(writes)
	slices.Sort(gets)
	t.Logf("SetLabels with BE_LIBERAL: min %v p50 %v p99 %v; Lookup (GET, labels included): min %v p50 %v p99 %v",
		writes[0], writes[n/2], writes[n*99/100], gets[0], gets[n/2], gets[n*99/100])
	if err := c.SetLabels(e.Orig, want, allLabels, true); err != nil {
		t.Fatal(err)
	}

	// A second update changes only the bits under its mask.
	if err := c.SetLabels(e.Orig, labelBytes(61), labelBytes(60, 61, 127), false); err != nil {
		t.Fatal(err)
	}
	got, _, err = c.Lookup(cn.seen())
	if err != nil {
		t.Fatal(err)
	}
	if want := labelBytes(0, 61, 64); got.Labels != want {
		t.Errorf("after a masked update: %x, want %x", got.Labels, want)
	}

	// Dump finds it with its labels; the early entry has none.
	entries, err := c.Dump()
	if err != nil {
		t.Fatal(err)
	}
	found := 0
	for _, d := range entries {
		switch d.Orig {
		case e.Orig:
			found++
			if d.Labels != got.Labels {
				t.Errorf("dumped labels %x, want %x", d.Labels, got.Labels)
			}
			if d.TCPState != TCPEstablished {
				t.Errorf("dumped TCP state %d, want ESTABLISHED", d.TCPState)
			}
		case e0.Orig:
			found++
			if d.HasLabels {
				t.Errorf("early entry dumped with labels %x", d.Labels)
			}
		}
	}
	if found != 2 {
		t.Errorf("dump of %d entries has %d of the two connections", len(entries), found)
	}
	// Labels cleared to zero: the kernel then sends no CTA_LABELS.
	if err := c.SetLabels(e.Orig, [16]byte{}, allLabels, false); err != nil {
		t.Fatal(err)
	}
	if got, _, err = c.Lookup(cn.seen()); err != nil || got.HasLabels {
		t.Errorf("zero labels: present %v (%x), %v", got.HasLabels, got.Labels, err)
	}
	if err := c.SetLabels(Tuple{Src: e.Orig.Src, Dst: netip.MustParseAddrPort("198.51.100.99:2")}, want, allLabels, false); !errors.Is(err, ErrNotFound) {
		t.Errorf("labels on a missing entry: %v, want ErrNotFound", err)
	}
}

// TestLabelsByReplyTuple writes labels naming entries by their reply
// tuple, on every NAT kind of the rig: the daemon does so for port
// forwards, where the tuple it sees, reversed, is the reply tuple, so that
// it keeps no copy of the original one.
func TestLabelsByReplyTuple(t *testing.T) {
	r := newRig(t)
	c := r.openClient(t)
	r.exec(t, "iptables", "-t", "mangle", "-A", "FORWARD", "-m", "connlabel", "--label", "127")
	r.exec(t, "ip6tables", "-t", "mangle", "-A", "FORWARD", "-m", "connlabel", "--label", "127")
	for i, f := range flows {
		t.Run(f.name, func(t *testing.T) {
			cn, e := r.dialEntry(t, c, f)
			want := labelBytes(i, 64+i, 127)
			if err := c.SetLabels(e.Reply, want, allLabels, false); err != nil {
				t.Fatalf("entry %s: %v", e, err)
			}
			got, _, err := c.Lookup(cn.seen())
			if err != nil {
				t.Fatal(err)
			}
			if got.Labels != want {
				t.Errorf("entry %s: labels %x after a write by its reply tuple, want %x", e, got.Labels, want)
			}
		})
	}
}
