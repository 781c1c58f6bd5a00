package daemon

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/conntrack"
	"github.com/ftpalg/ftpalg/internal/testenv"
	"github.com/ftpalg/ftpalg/pinsync"
	"github.com/ftpalg/ftpalg/rules"
	"github.com/ftpalg/ftpalg/test/rig"
)

// envSyncChild makes TestPinSyncNetns the receiving router, re-executed
// inside its namespace (the nftables sockets then live there).
const envSyncChild = "FTPALG_DAEMON_SYNC_CHILD"

// The two ends of the sync link in TestPinSyncNetns.
var (
	syncA    = netip.MustParseAddrPort("203.0.113.1:3781") // the test: the other router
	syncB    = netip.MustParseAddrPort("203.0.113.2:3781") // the child: ftpalg's sync under test
	stranger = netip.MustParseAddrPort("203.0.113.9:3781") // on A's link, not the configured peer
)

// TestPinSyncNetns runs the pinhole sync between two network namespaces
// joined by a veth pair, with real UDP sockets and ftpalg's real nftables
// table: the receiving side (a child process in namespace B: NFTable,
// Pinholes, PinSync, pinsync.Link as Run wires them) asks for a resync
// and sends its own pinhole at start, and again when asked for a resync;
// a pinhole sent to it appears in its nat_targets map with the sender's
// remaining timeout and leaves it at that timeout; a malformed datagram,
// an out-of-policy pinhole and a datagram from another address are
// refused and counted.
func TestPinSyncNetns(t *testing.T) {
	if os.Getenv(envSyncChild) != "" {
		syncChild(t)
		return
	}
	testenv.RequireRoot(t, "the test creates network namespaces and nftables tables")
	testenv.RequireTool(t, "ip")
	testenv.RequireTool(t, "nft")
	base := fmt.Sprintf("psync%d%04x", os.Getpid(), rand.N(1<<16))
	nsA, nsB := base+"a", base+"b"
	for _, ns := range []string{nsA, nsB} {
		mustRun(t, "ip", "netns", "add", ns)
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	}
	for _, c := range [][]string{
		{"-n", nsA, "link", "add", "sync", "type", "veth", "peer", "name", "sync", "netns", nsB},
		{"-n", nsA, "addr", "add", syncA.Addr().String() + "/24", "dev", "sync"},
		{"-n", nsA, "addr", "add", stranger.Addr().String() + "/24", "dev", "sync"},
		{"-n", nsB, "addr", "add", syncB.Addr().String() + "/24", "dev", "sync"},
		{"-n", nsA, "link", "set", "sync", "up"}, {"-n", nsB, "link", "set", "sync", "up"},
	} {
		mustRun(t, "ip", c...)
	}
	var sock, strange *net.UDPConn
	if err := rig.InNamespace(nsA, func() (err error) {
		if sock, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(syncA)); err != nil {
			return err
		}
		strange, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(stranger))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer sock.Close()
	defer strange.Close()

	child := startSyncChild(t, nsB)
	receive := func(what string) pinsync.Message {
		t.Helper()
		if err := sock.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, pinsync.MaxLen)
		n, from, err := sock.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatalf("%s from the child: %v\n%s", what, err, child.output())
		}
		m, err := pinsync.Decode(buf[:n])
		if err != nil || from != syncB {
			t.Fatalf("%s from %v: %+v, %v; want one from %v", what, from, m, err, syncB)
		}
		return m
	}
	// At start: a resync request, then the pinhole the child opened.
	if m := receive("resync request"); m != (pinsync.Message{Type: pinsync.TypeResync}) {
		t.Fatalf("first datagram %+v, want a resync request", m)
	}
	if m := receive("pinhole"); m != syncMsg(3, childHole, 10*time.Second) {
		t.Fatalf("second datagram %+v, want %+v", m, syncMsg(3, childHole, 10*time.Second))
	}

	send := func(c *net.UDPConn, m pinsync.Message) {
		t.Helper()
		b, err := pinsync.Encode(nil, m)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.WriteToUDPAddrPort(b, syncB); err != nil {
			t.Fatal(err)
		}
	}
	// Asked for a resync, the child sends its own pinhole again, with
	// the time it has left.
	send(sock, pinsync.Message{Type: pinsync.TypeResync})
	if m := receive("resync answer"); m.Type != pinsync.TypePinhole || m.Public != childHole.Public || m.Timeout <= 0 || m.Timeout >= 10*time.Second {
		t.Fatalf("resync answer %+v, want %v with less than 10 s left", m, childHole)
	}

	// A NAT'd pinhole with 3 s left: its map element carries 3 s plus
	// NFTTimeoutMargin (nft lists "timeout 5s").
	send(sock, syncMsg(77, hole, 3*time.Second))
	element := regexp.MustCompile(fmt.Sprintf(`%s \. %s \. %d timeout 5s expires [0-9.ms]+ : %s \. %d`,
		regexp.QuoteMeta(hole.Peer.String()), regexp.QuoteMeta(hole.Public.Addr().String()), hole.Public.Port(),
		regexp.QuoteMeta(hole.Target.Addr().String()), hole.Target.Port()))
	natTargets := func() string {
		out, _ := exec.Command("ip", "netns", "exec", nsB, "nft", "list", "map", "ip", rules.NFTTableName, "nat_targets").CombinedOutput()
		return string(out)
	}
	waitUntil(t, 10*time.Second, func() bool { return element.MatchString(natTargets()) },
		func() string { return "no element " + element.String() + " in\n" + natTargets() + child.output() })
	child.waitStats(t, func(s PinholeStats) bool { return s.SyncReceived == 1 })
	// The line is logged after the count: wait for it too.
	opened := `"msg":"synced pinhole opened","peer_session":77,"from":"203.0.113.1:3781"`
	waitUntil(t, 10*time.Second, func() bool { return strings.Contains(child.output(), opened) },
		func() string { return "no log line for the received pinhole:\n" + child.output() })

	bad, _ := pinsync.Encode(nil, syncMsg(78, holeOn(50002), time.Second))
	if _, err := sock.WriteToUDPAddrPort(bad[:len(bad)-1], syncB); err != nil { // truncated
		t.Fatal(err)
	}
	send(sock, syncMsg(79, holeOn(1023), time.Second))     // a port below 1024
	send(sock, syncMsg(80, holeOn(50003), time.Minute))    // beyond the child's 10 s
	send(strange, syncMsg(81, holeOn(50004), time.Second)) // not from the peer
	child.waitStats(t, func(s PinholeStats) bool { return s.SyncRefused == 4 && s.SyncReceived == 1 })
	malformed := `"msg":"synced pinhole refused","from":"203.0.113.1:3781","err":"malformed pinsync message: IPv4 pinhole of 39 bytes"`
	waitUntil(t, 10*time.Second, func() bool { return strings.Contains(child.output(), malformed) },
		func() string { return "no log line for the malformed datagram:\n" + child.output() })

	// At its timeout the pinhole is closed: gone from the map (the
	// kernel's timeout comes 2 s after the keeper's own).
	waitUntil(t, 10*time.Second, func() bool { return !strings.Contains(natTargets(), hole.Target.Addr().String()) },
		func() string { return "element still there:\n" + natTargets() })
	child.waitStats(t, func(s PinholeStats) bool { return s.SyncExpired == 1 })
	child.stop(t)
}

// childHole is the pinhole the child opens itself at start, routed (no
// NAT), so it reserves no port.
var childHole = rules.Pinhole{Peer: netip.MustParseAddr("198.51.100.30"), Public: netip.MustParseAddrPort("192.0.2.20:40010"),
	Target: netip.MustParseAddrPort("192.0.2.20:40010")}

// syncChild is the receiving router: it serves until stdin closes and
// prints its counters ("stats {json}") for each line it reads.
func syncChild(t *testing.T) {
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil))
	const timeout = 10 * time.Second
	rc := rules.Config{ControlPorts: []uint16{21}, QueueNum: 21, IPv4: true, AcceptMark: rules.DefaultAcceptMark}
	nft, err := rules.NewNFTable(rc, timeout, log)
	if err != nil {
		t.Fatal(err)
	}
	if err := nft.Install(); err != nil {
		t.Fatal(err)
	}
	defer nft.Remove()
	ports, err := rules.NewPorts(1024, 65535)
	if err != nil {
		t.Fatal(err)
	}
	k := NewPinholes(nft, ports, timeout, Limits{}, log)
	defer k.Stop()
	ps := NewPinSync(k, log)
	link, err := pinsync.Listen(syncB, syncA, ps.SendFailed)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- link.Serve(t.Context(), ps.Message, ps.Refused) }()
	k.SyncTo(link)
	if err := link.Send(pinsync.Message{Type: pinsync.TypeResync}); err != nil {
		t.Fatal(err)
	}
	conn := conntrack.Conn{Client: netip.MustParseAddrPort("198.51.100.30:40000"), Server: netip.MustParseAddrPort("192.0.2.20:21")}
	if err := k.Open(3, conn, conntrack.PathForward, childHole, false); err != nil {
		t.Fatal(err)
	}
	fmt.Println("ready")
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		b, _ := json.Marshal(k.Stats())
		fmt.Printf("stats %s\n", b)
	}
	if err := link.Close(); err != nil {
		t.Error(err)
	}
	if err := <-served; err != nil {
		t.Error(err)
	}
}

// syncChildProc is the child as the parent sees it.
type syncChildProc struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	mu    sync.Mutex
	out   bytes.Buffer // stdout and stderr
	stats chan PinholeStats
}

func (c *syncChildProc) Write(b []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.out.Write(b)
}

func (c *syncChildProc) output() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.out.String()
}

func startSyncChild(t *testing.T, ns string) *syncChildProc {
	t.Helper()
	c := &syncChildProc{stats: make(chan PinholeStats, 16)}
	c.cmd = exec.Command("ip", "netns", "exec", ns, os.Args[0], "-test.run=^TestPinSyncNetns$", "-test.count=1")
	c.cmd.Env = append(os.Environ(), envSyncChild+"=1")
	c.cmd.Stderr = c
	stdout, err := c.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if c.stdin, err = c.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.stdin.Close()
		done := make(chan struct{})
		go func() { _ = c.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = c.cmd.Process.Kill() // only our own child, by its PID
			<-done
		}
	})
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			line := sc.Text()
			fmt.Fprintln(c, line)
			switch {
			case line == "ready":
				close(ready)
			case strings.HasPrefix(line, "stats "):
				var s PinholeStats
				if json.Unmarshal([]byte(strings.TrimPrefix(line, "stats ")), &s) == nil {
					c.stats <- s
				}
			}
		}
	}()
	select {
	case <-ready:
	case <-time.After(20 * time.Second):
		t.Fatalf("child not ready within 20 s:\n%s", c.output())
	}
	return c
}

// waitStats polls the child's counters until ok holds (deadline 10 s).
func (c *syncChildProc) waitStats(t *testing.T, ok func(PinholeStats) bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	var last PinholeStats
	for time.Now().Before(deadline) {
		if _, err := io.WriteString(c.stdin, "stats\n"); err != nil {
			t.Fatalf("asking the child: %v", err)
		}
		select {
		case last = <-c.stats:
			if ok(last) {
				return
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("child did not answer:\n%s", c.output())
		}
		time.Sleep(20 * time.Millisecond) // poll interval
	}
	t.Fatalf("child's counters %+v after 10 s\n%s", last, c.output())
}

// stop ends the child and checks it exited cleanly (its test passed).
func (c *syncChildProc) stop(t *testing.T) {
	t.Helper()
	c.stdin.Close()
	if err := c.cmd.Wait(); err != nil {
		t.Fatalf("child: %v\n%s", err, c.output())
	}
}

func waitUntil(t *testing.T, timeout time.Duration, cond func() bool, why func() string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %v: %s", timeout, why())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func mustRun(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
}
