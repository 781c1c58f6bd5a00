package nfq

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/internal/testenv"
	"golang.org/x/sys/unix"
)

// testQueue is the queue number the tests bind in their own namespaces.
const testQueue = 7

// netnsRig is one network namespace with 192.0.2.1 on its loopback and UDP
// to port 9999 queued: datagrams the test sends to itself pass through the
// queue on OUTPUT.
type netnsRig struct {
	name string
	recv *net.UDPConn
	send *net.UDPConn
}

func newRig(t *testing.T, bypass bool) *netnsRig {
	t.Helper()
	testenv.RequireRoot(t, "creates a network namespace, an NFQUEUE rule and a queue socket")
	h := fnv.New32a()
	h.Write([]byte(t.Name()))
	r := &netnsRig{name: fmt.Sprintf("nq%d-%08x", os.Getpid(), h.Sum32())}
	run(t, "ip", "netns", "add", r.name)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", r.name).CombinedOutput(); err != nil {
			t.Errorf("removing netns %s: %v\n%s", r.name, err, out)
		}
	})
	run(t, "ip", "-n", r.name, "link", "set", "lo", "up")
	run(t, "ip", "-n", r.name, "addr", "add", "192.0.2.1/32", "dev", "lo")
	rule := []string{"ip", "netns", "exec", r.name, "iptables", "-A", "OUTPUT", "-p", "udp", "--dport", "9999",
		"-j", "NFQUEUE", "--queue-num", fmt.Sprint(testQueue)}
	if bypass {
		rule = append(rule, "--queue-bypass")
	}
	run(t, rule...)
	r.in(t, func() error {
		var err error
		if r.recv, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 9999}); err != nil {
			return err
		}
		r.send, err = net.DialUDP("udp4", nil, &net.UDPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 9999})
		return err
	})
	t.Cleanup(func() { r.recv.Close(); r.send.Close() })
	return r
}

func run(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// in runs fn on a thread inside the rig's namespace; sockets fn opens stay
// there.
func (r *netnsRig) in(t *testing.T, fn func() error) {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		// The thread is never unlocked: the runtime discards it with
		// the goroutine instead of reusing a thread in another netns.
		runtime.LockOSThread()
		ns, err := unix.Open("/run/netns/"+r.name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- err
			return
		}
		defer unix.Close(ns)
		if err := unix.Setns(ns, unix.CLONE_NEWNET); err != nil {
			errc <- err
			return
		}
		errc <- fn()
	}()
	if err := <-errc; err != nil {
		t.Fatalf("in netns %s: %v", r.name, err)
	}
}

func (r *netnsRig) open(t *testing.T, cfg Config) *Queue {
	t.Helper()
	var q *Queue
	r.in(t, func() (err error) { q, err = Open(cfg); return err })
	t.Cleanup(func() { q.Close() })
	return q
}

// serve runs q.Serve until the test ends and returns a function that stops
// it and reports Serve's result.
func serve(t *testing.T, q *Queue, h Handler, onErr ErrorFunc) (stop func() error) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- q.Serve(ctx, h, onErr) }()
	var stopped atomic.Bool
	stop = func() error {
		if stopped.Swap(true) {
			return nil
		}
		cancel()
		return <-done
	}
	t.Cleanup(func() { stop(); q.Close() })
	return stop
}

// udpPayload returns the UDP payload of an IPv4 packet.
func udpPayload(pkt []byte) []byte {
	if len(pkt) < 20 {
		return nil
	}
	ihl := int(pkt[0]&0x0f) * 4
	if len(pkt) < ihl+8 {
		return nil
	}
	return pkt[ihl+8:]
}

// receive reads datagrams until want have arrived or the deadline passes.
func (r *netnsRig) receive(t *testing.T, want int, wait time.Duration) []string {
	t.Helper()
	var got []string
	buf := make([]byte, 2048)
	r.recv.SetReadDeadline(time.Now().Add(wait))
	for len(got) < want {
		n, err := r.recv.Read(buf)
		if err != nil {
			break
		}
		got = append(got, string(buf[:n]))
	}
	return got
}

// TestServeVerdicts passes, drops and replaces real packets, in a burst
// large enough that reads return several at once.
func TestServeVerdicts(t *testing.T) {
	for _, spin := range []time.Duration{0, 50 * time.Microsecond} {
		t.Run(fmt.Sprintf("spin=%v", spin), func(t *testing.T) { testServeVerdicts(t, spin) })
	}
}

func testServeVerdicts(t *testing.T, spin time.Duration) {
	r := newRig(t, false)
	q := r.open(t, Config{Num: testQueue, Spin: spin})
	var seen atomic.Int64
	serve(t, q, func(p Packet) (Verdict, []byte) {
		seen.Add(1)
		if p.Proto != unix.ETH_P_IP || p.Truncated {
			t.Errorf("packet %d: proto %#x truncated %v", p.ID, p.Proto, p.Truncated)
		}
		data := udpPayload(p.Payload)
		switch {
		case bytes.HasPrefix(data, []byte("drop")):
			return Drop, nil
		case bytes.HasPrefix(data, []byte("edit")):
			out := bytes.Clone(p.Payload)
			copy(udpPayload(out), "EDIT")
			ihl := int(out[0]&0x0f) * 4
			out[ihl+6], out[ihl+7] = 0, 0 // no UDP checksum (IPv4 allows it)
			return Accept, out
		}
		return Accept, nil
	}, func(err error) { t.Errorf("serve: %v", err) })

	const n = 300
	for i := range n {
		var msg string
		switch i % 3 {
		case 0:
			msg = fmt.Sprintf("pass %03d", i)
		case 1:
			msg = fmt.Sprintf("drop %03d", i)
		default:
			msg = fmt.Sprintf("edit %03d", i)
		}
		if _, err := r.send.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
	}
	got := r.receive(t, 2*n/3, 5*time.Second)
	var want []string
	for i := range n {
		switch i % 3 {
		case 0:
			want = append(want, fmt.Sprintf("pass %03d", i))
		case 2:
			want = append(want, fmt.Sprintf("EDIT %03d", i))
		}
	}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("received %d datagrams:\n%v\nwant %d:\n%v", len(got), got, len(want), want)
	}
	if extra := r.receive(t, 1, 200*time.Millisecond); len(extra) > 0 {
		t.Errorf("dropped datagrams arrived: %v", extra)
	}
	if s := seen.Load(); s != n {
		t.Errorf("handler saw %d packets, want %d", s, n)
	}
}

func TestOpenBusy(t *testing.T) {
	r := newRig(t, false)
	r.open(t, Config{Num: testQueue})
	r.in(t, func() error {
		q, err := Open(Config{Num: testQueue})
		if !errors.Is(err, ErrBusy) {
			if q != nil {
				q.Close()
			}
			return fmt.Errorf("second Open of queue %d: err = %v, want ErrBusy", testQueue, err)
		}
		return nil
	})
}

// TestCloseUnbinds stops a queue and checks that the kernel let go of it:
// with --queue-bypass, traffic passes again, and the queue can be bound
// anew.
func TestCloseUnbinds(t *testing.T) {
	r := newRig(t, true)
	q := r.open(t, Config{Num: testQueue})
	stop := serve(t, q, func(Packet) (Verdict, []byte) { return Drop, nil }, nil)
	r.send.Write([]byte("dropped"))
	if got := r.receive(t, 1, 300*time.Millisecond); len(got) != 0 {
		t.Fatalf("received %v through a queue that drops everything", got)
	}
	start := time.Now()
	if err := stop(); err != nil {
		t.Fatalf("Serve returned %v after its context ended, want nil", err)
	}
	if err := q.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if took := time.Since(start); took > 3*pollInterval {
		t.Errorf("stopping took %v, want at most about %v", took, pollInterval)
	}
	r.send.Write([]byte("bypassed"))
	if got := r.receive(t, 1, 2*time.Second); len(got) != 1 || got[0] != "bypassed" {
		t.Fatalf("after Close got %v, want the datagram to bypass the unbound queue", got)
	}
	q2 := r.open(t, Config{Num: testQueue})
	if err := q2.Close(); err != nil {
		t.Fatal(err)
	}
	if err := q.Serve(context.Background(), nil, nil); !errors.Is(err, ErrClosed) {
		t.Errorf("Serve after Close: %v, want ErrClosed", err)
	}
}

// TestFailOpen fills a tiny queue whose handler never answers: with
// FailOpen the kernel passes what does not fit.
func TestFailOpen(t *testing.T) {
	r := newRig(t, false)
	q := r.open(t, Config{Num: testQueue, MaxQueueLen: 1, FailOpen: true})
	release := make(chan struct{})
	serve(t, q, func(Packet) (Verdict, []byte) { <-release; return Accept, nil }, nil)
	defer close(release)
	for i := range 5 {
		r.send.Write(fmt.Appendf(nil, "dgram %d", i))
	}
	if got := r.receive(t, 3, 2*time.Second); len(got) < 3 {
		t.Fatalf("received %v with the queue full and FailOpen, want the overflow to pass", got)
	}
}

// TestOverrun fills a tiny socket buffer while the handler is slow: the
// kernel drops the messages that do not fit and Serve reports ErrOverrun,
// then carries on.
func TestOverrun(t *testing.T) {
	r := newRig(t, false)
	q := r.open(t, Config{Num: testQueue, ReadBuffer: 4096})
	overruns := make(chan error, 100)
	var first atomic.Bool
	serve(t, q, func(Packet) (Verdict, []byte) {
		if !first.Swap(true) {
			time.Sleep(100 * time.Millisecond)
		}
		return Accept, nil
	}, func(err error) {
		select {
		case overruns <- err:
		default:
		}
	})
	for i := range 200 {
		r.send.Write(fmt.Appendf(nil, "dgram %d", i))
	}
	select {
	case err := <-overruns:
		if !errors.Is(err, ErrOverrun) {
			t.Fatalf("reported %v, want ErrOverrun", err)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("no overrun reported")
	}
	got := r.receive(t, 200, time.Second)
	if len(got) == 0 || len(got) == 200 {
		t.Fatalf("received %d of 200 datagrams: want the first ones, and losses", len(got))
	}
	r.send.Write([]byte("after"))
	if got := r.receive(t, 1, 2*time.Second); len(got) != 1 || got[0] != "after" {
		t.Fatalf("after the overrun got %v, want the queue to carry on", got)
	}
}
