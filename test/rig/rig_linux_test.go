package rig

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/internal/testenv"
	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
)

const testPrefix = "fm"

func requireRoot(t *testing.T) {
	t.Helper()
	testenv.RequireRoot(t, "creates network namespaces")
}

func TestBuildRejects(t *testing.T) {
	ctx := context.Background()
	if _, err := Build(ctx, Topology(0), testPrefix); !errors.Is(err, ErrTopology) {
		t.Errorf("unknown topology: err %v, want ErrTopology", err)
	}
	for _, p := range []string{"", "Bad", "toolong"} {
		if _, err := Build(ctx, Routed, p); !errors.Is(err, ErrPrefix) {
			t.Errorf("prefix %q: err %v, want ErrPrefix", p, err)
		}
	}
}

// TestCloseRemovesEverything checks that Close deletes the namespaces and
// the scratch directory and kills tracked processes and the children
// they leave behind.
func TestCloseRemovesEverything(t *testing.T) {
	requireRoot(t)
	r, err := Build(t.Context(), Routed, testPrefix)
	if err != nil {
		t.Fatal(err)
	}
	// The shell forks a background sleep into its own process group, out
	// of reach of the group signal, and prints its PID.
	p, err := r.Start(Server, "sh", "-c", "setsid sleep 300 & echo $!; exec sleep 300")
	if err != nil {
		t.Fatal(err)
	}
	var orphan int
	for deadline := time.Now().Add(5 * time.Second); orphan == 0 && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		orphan, _ = strconv.Atoi(strings.TrimSpace(p.Output()))
	}
	if orphan == 0 {
		t.Fatalf("no orphan pid from %q", p.Output())
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	for _, n := range []Node{Client, Router, Server} {
		if _, err := os.Stat(netnsDir + "/" + r.NS(n)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("namespace %s survives Close: %v", r.NS(n), err)
		}
	}
	if _, err := os.Stat(r.Dir()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("directory %s survives Close: %v", r.Dir(), err)
	}
	select {
	case <-p.Done():
	default:
		t.Error("tracked process survives Close")
	}
	if !dead(orphan) {
		t.Errorf("orphan %d survives Close", orphan)
	}
	if err := r.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := r.Start(Client, "true"); !errors.Is(err, ErrClosed) {
		t.Errorf("Start after Close: err %v, want ErrClosed", err)
	}
}

// TestClientNATMasquerades dials from the client to a listener in the
// server namespace and checks the server sees the router's address.
func TestClientNATMasquerades(t *testing.T) {
	r := New(t, ClientNAT, WithPrefix(testPrefix))
	checkConnection(t, r, netip.AddrPortFrom(r.ServerHostAddr(), 4000), netip.AddrPortFrom(r.ServerAddr(), 4000))
}

// TestFirewallCounters proves InvalidDrops and PolicyDrops read the real
// counters: a SYN/ACK with no connection is INVALID for conntrack in both
// families, and a SYN to an unpublished port hits the DROP policy.
func TestFirewallCounters(t *testing.T) {
	r := New(t, Routed, WithPrefix(testPrefix))
	for _, get := range []func() (uint64, error){r.InvalidDrops, r.PolicyDrops} {
		if n, err := get(); err != nil || n != 0 {
			t.Fatalf("fresh rig counter = %d, %v; want 0", n, err)
		}
	}
	for _, f := range []Family{IPv4, IPv6} {
		ad := Routed.Addresses(f)
		if err := sendSynAck(r, Client, ad.Client, ad.Server); err != nil {
			t.Fatalf("IPv%d: %v", f, err)
		}
	}
	if n := waitCounter(t, r.InvalidDrops, 2); n != 2 {
		t.Errorf("InvalidDrops = %d after two stray SYN/ACKs, want 2", n)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	if c, err := r.Dial(ctx, Client, "tcp", netip.AddrPortFrom(r.ServerAddr(), 2121).String()); err == nil {
		c.Close()
		t.Fatal("dial to an unpublished port passed the firewall")
	}
	if n := waitCounter(t, r.PolicyDrops, 1); n < 1 {
		t.Errorf("PolicyDrops = %d after a refused SYN, want ≥ 1", n)
	}
	if n, _ := r.InvalidDrops(); n != 2 {
		t.Errorf("InvalidDrops moved to %d on a plain refused SYN", n)
	}
	d := r.Dump()
	for _, want := range []string{"==== router: iptables -t filter -L -v -n -x", "rig: invalid drop", "==== router: conntrack -L -f ipv4", "192.0.2.10/24"} {
		if !strings.Contains(d, want) {
			t.Errorf("Dump lacks %q", want)
		}
	}
}

// dead reports whether pid has exited: gone, or a zombie that init has
// not reaped yet.
func dead(pid int) bool {
	if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
		return true
	}
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return errors.Is(err, os.ErrNotExist)
	}
	// pid (comm) S ...: the state follows the last ')'.
	i := strings.LastIndexByte(string(stat), ')')
	return i >= 0 && i+2 < len(stat) && stat[i+2] == 'Z'
}

func waitCounter(t *testing.T, get func() (uint64, error), want uint64) uint64 {
	t.Helper()
	var n uint64
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		var err error
		if n, err = get(); err != nil {
			t.Fatal(err)
		}
		if n >= want {
			break
		}
	}
	return n
}

// sendSynAck injects a TCP SYN/ACK from src to dst:21 through a raw socket
// in node n.
func sendSynAck(r *Rig, n Node, src, dst netip.Addr) error {
	tcp := &layers.TCP{SrcPort: 40000, DstPort: ControlPort, Seq: 1000, Ack: 2000, SYN: true, ACK: true, Window: 1024}
	network := "ip4:tcp"
	var ip gopacket.NetworkLayer = &layers.IPv4{SrcIP: src.AsSlice(), DstIP: dst.AsSlice(), Protocol: layers.IPProtocolTCP}
	if src.Is6() {
		network = "ip6:tcp"
		ip = &layers.IPv6{SrcIP: src.AsSlice(), DstIP: dst.AsSlice(), NextHeader: layers.IPProtocolTCP}
	}
	if err := tcp.SetNetworkLayerForChecksum(ip); err != nil {
		return err
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{ComputeChecksums: true, FixLengths: true}, tcp); err != nil {
		return err
	}
	c, err := r.ListenPacket(n, network, src.String())
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = c.WriteTo(buf.Bytes(), &net.IPAddr{IP: dst.AsSlice()})
	return err
}

func TestStartVsftpd(t *testing.T) {
	for _, topo := range []Topology{ServerForward, Routed6} {
		t.Run(topo.String(), func(t *testing.T) {
			r := New(t, topo, WithPrefix(testPrefix))
			s, err := r.StartVsftpd(VsftpdOptions{Upload: true})
			if err != nil {
				t.Fatal(err)
			}
			if fi, err := os.Stat(s.UploadDir); err != nil || !fi.IsDir() {
				t.Fatalf("upload dir: %v", err)
			}
			// The readiness probe is a session; it must be in the log.
			if !strings.Contains(s.Log(), "CONNECT") {
				t.Errorf("vsftpd log lacks the probe's CONNECT:\n%s", s.Log())
			}
			if _, err := s.CreateFile("../escape", 1); !errors.Is(err, ErrConfig) {
				t.Errorf("CreateFile outside root: err %v, want ErrConfig", err)
			}
			if err := s.Stop(); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(t.Context(), time.Second)
			defer cancel()
			if c, err := r.Dial(ctx, Server, "tcp", netip.AddrPortFrom(r.ServerHostAddr(), ControlPort).String()); err == nil {
				c.Close()
				t.Error("port 21 still accepts after Stop")
			}
		})
	}
	r := New(t, Routed, WithPrefix(testPrefix))
	if _, err := r.StartVsftpd(VsftpdOptions{Extra: []string{"no-equals"}}); !errors.Is(err, ErrConfig) {
		t.Errorf("bad extra line: err %v, want ErrConfig", err)
	}
	// A broken configuration must surface as ErrNotReady with vsftpd's
	// complaint, not as a timeout.
	_, err := r.StartVsftpd(VsftpdOptions{Extra: []string{"no_such_option=YES"}})
	if !errors.Is(err, ErrNotReady) || !strings.Contains(err.Error(), "no_such_option") {
		t.Errorf("bad option: err %v, want ErrNotReady naming the option", err)
	}
}

func TestExecUnknownNode(t *testing.T) {
	r := &Rig{}
	err := r.Exec(Node(7), "true").Run()
	if !errors.Is(err, ErrNode) {
		t.Errorf("Exec on unknown node: err %v, want ErrNode", err)
	}
}

// TestProcOutput: what a process (or its child) wrote is in Output as
// soon as the write returned, with no copy in between to wait for. The
// process writes its lines, then creates a file; the moment the test sees
// the file, Output must hold every line.
func TestProcOutput(t *testing.T) {
	r := &Rig{dir: t.TempDir()}
	marker := filepath.Join(r.dir, "written")
	p, err := r.StartCmd(exec.Command("sh", "-c", `echo out; echo err >&2; sh -c 'echo child'; touch `+marker+`; exec sleep 60`))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Stop()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		if _, err := os.Stat(marker); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the process did not write its marker within 10s; output %q", p.Output())
		}
	}
	if got, want := p.Output(), "out\nerr\nchild\n"; got != want {
		t.Errorf("Output() = %q, want %q", got, want)
	}
	if err := p.Stop(); err != nil {
		t.Fatal(err)
	}
}

func TestParseName(t *testing.T) {
	tests := []struct {
		name string
		pid  int
		ok   bool
	}{
		{"fc118757dd9s", 11875, true},
		{"fc118757dd9c", 11875, true},
		{"fc12ab12r", 12, true},
		{"fc118757dd9-2707092131", 11875, true},
		{"fc118757dd9x", 0, false},  // unknown role
		{"fca118757dd9s", 0, false}, // another prefix
		{"fc7dd9s", 0, false},       // no pid
		{"fc11875zzzzs", 0, false},  // not hex
		{"rig12347dd9s", 0, false},
		{"fc", 0, false},
	}
	for _, tc := range tests {
		pid, ok := parseName("fc", tc.name)
		if pid != tc.pid || ok != tc.ok {
			t.Errorf("parseName(fc, %q) = %d, %v; want %d, %v", tc.name, pid, ok, tc.pid, tc.ok)
		}
	}
}
