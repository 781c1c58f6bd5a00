//go:build linux

package e2e

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/test/rig"
)

// ftpConn is a raw FTP control connection that writes exactly the bytes
// it is given: the attacker's side of the hostile tests.
type ftpConn struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
}

func dialFTP(t *testing.T, r *rig.Rig, addr string) *ftpConn {
	t.Helper()
	return dialFTPFrom(t, r, rig.Client, addr)
}

// dialFTPFrom is dialFTP from node n (the firewall host for a local client).
func dialFTPFrom(t *testing.T, r *rig.Rig, n rig.Node, addr string) *ftpConn {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	c, err := r.Dial(ctx, n, "tcp", addr)
	if err != nil {
		t.Fatalf("dialing %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	f := &ftpConn{t: t, c: c, r: bufio.NewReader(c)}
	if g := f.reply(); !strings.HasPrefix(g, "220") {
		t.Fatalf("greeting %q", g)
	}
	return f
}

// id is how ftpalg names this connection in its log.
func (f *ftpConn) id() string { return f.c.LocalAddr().String() + "->" }

// reply reads one reply, multi-line included, and returns its last line.
func (f *ftpConn) reply() string {
	f.t.Helper()
	f.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var code string
	for {
		line, err := f.r.ReadString('\n')
		if err != nil {
			f.t.Fatalf("reading reply: %v (got %q)", err, line)
		}
		line = strings.TrimRight(line, "\r\n")
		if len(line) < 4 {
			continue
		}
		if code == "" {
			code = line[:3]
		}
		if line[:3] == code && line[3] == ' ' {
			return line
		}
	}
}

func (f *ftpConn) send(raw string) {
	f.t.Helper()
	if _, err := f.c.Write([]byte(raw)); err != nil {
		f.t.Fatal(err)
	}
}

func (f *ftpConn) cmd(line string) string {
	f.t.Helper()
	f.send(line + "\r\n")
	return f.reply()
}

func (f *ftpConn) login() {
	f.t.Helper()
	f.cmd("USER anonymous")
	if r := f.cmd("PASS guest@"); !strings.HasPrefix(r, "230") {
		f.t.Fatalf("login: %q", r)
	}
}

// trap listens where a hostile announcement points, to prove that nothing
// arrives there.
type trap struct {
	l   net.Listener
	mu  sync.Mutex
	got int
}

func setTrap(t *testing.T, r *rig.Rig, n rig.Node, addr string) *trap {
	t.Helper()
	l, err := r.Listen(n, "tcp", addr)
	if err != nil {
		t.Fatalf("listening on %s: %v", addr, err)
	}
	tr := &trap{l: l}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			tr.mu.Lock()
			tr.got++
			tr.mu.Unlock()
			c.Close()
		}
	}()
	t.Cleanup(func() { l.Close() })
	return tr
}

func (tr *trap) sprung() bool {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return tr.got > 0
}

// reachable reports whether a TCP connection from node n to addr succeeds
// within a second (a pinhole is installed before the announcing packet is
// released, so a second is plenty).
func reachable(t *testing.T, r *rig.Rig, n rig.Node, addr string) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Second)
	defer cancel()
	c, err := r.Dial(ctx, n, "tcp", addr)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// forConn returns ftpalg's log records with message msg about the control
// connection whose client side is f.
func (g *gateway) forConn(msg string, f *ftpConn) []map[string]any {
	var out []map[string]any
	for _, rec := range g.events(msg) {
		if conn, _ := rec["conn"].(string); strings.HasPrefix(conn, f.id()) {
			out = append(out, rec)
		}
	}
	return out
}

// wantRefused requires a refusal for f whose reason contains reason, and
// no pinhole for f at all.
func (g *gateway) wantRefused(t *testing.T, f *ftpConn, reason string) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for {
		for _, rec := range g.forConn("refused", f) {
			if r, _ := rec["reason"].(string); strings.Contains(r, reason) {
				g.wantNoPinhole(t, f)
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no refusal %q for %s; refusals: %v", reason, f.id(), g.forConn("refused", f))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (g *gateway) wantNoPinhole(t *testing.T, f *ftpConn) {
	t.Helper()
	if p := g.forConn("pinhole opened", f); len(p) != 0 {
		t.Fatalf("a pinhole was opened for the hostile connection %s: %v", f.id(), p)
	}
}

// hostile is a rig with ftpalg and vsftpd, and a normal session that must
// keep working while each attack runs.
type hostile struct {
	r    *rig.Rig
	g    *gateway
	mode rig.Mode
	sum  string
}

func newHostile(t *testing.T, topo rig.Topology, mode rig.Mode, setup func(r *rig.Rig), args ...string) *hostile {
	return newHostileWith(t, topo, nil, mode, setup, args...)
}

// startVsftpd1M starts an anonymous vsftpd in r serving 1m.bin, 1 MiB of
// random bytes, and returns the file's SHA-256.
func startVsftpd1M(t *testing.T, r *rig.Rig) string {
	t.Helper()
	s, err := r.StartVsftpd(rig.VsftpdOptions{})
	if err != nil {
		t.Fatal(err)
	}
	sum, err := s.CreateFile("1m.bin", 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	return sum
}

// newHostileWith is newHostile with rig options.
func newHostileWith(t *testing.T, topo rig.Topology, opts []rig.Option, mode rig.Mode, setup func(r *rig.Rig), args ...string) *hostile {
	r := rig.New(t, topo, append([]rig.Option{rig.WithPrefix(nsPrefix)}, opts...)...)
	sum := startVsftpd1M(t, r)
	if setup != nil {
		setup(r)
	}
	return &hostile{r: r, g: startFtpalg(t, r, args...), mode: mode, sum: sum}
}

// during runs attack while a normal transfer through ftpalg is under way,
// and requires the transfer to succeed and no packet to be dropped as
// INVALID.
func (h *hostile) during(t *testing.T, attack func()) {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		out := filepath.Join(t.TempDir(), "1m.bin")
		res, err := h.r.CurlGet(h.mode, h.r.URL("1m.bin"), out)
		if err == nil {
			if got, _ := rig.FileSHA256(out); got != h.sum || res.Bytes != 1<<20 {
				err = fmt.Errorf("normal transfer corrupted: %d bytes, SHA-256 %s", res.Bytes, got)
			}
		}
		done <- err
	}()
	attack()
	if err := <-done; err != nil {
		t.Fatalf("the normal session failed during the attack: %v", err)
	}
	if n, err := h.r.InvalidDrops(); err != nil || n != 0 {
		t.Fatalf("router dropped %d INVALID packets (%v)", n, err)
	}
}

// TestHostileClient runs attacks a client behind the router's NAT can make
// through the control connection. None may open a pinhole or get a data
// connection through, and a normal session (active mode, which needs
// ftpalg's rewrite and pinhole) must keep working at the same time.
func TestHostileClient(t *testing.T) {
	h := newHostile(t, rig.ClientNAT, rig.PORT, nil, "--tls", "refuse")
	r, g := h.r, h.g
	server := net.JoinHostPort(r.ServerAddr().String(), "21")
	router := r.Addresses().RouterOutside.String() // the client's public address

	t.Run("PORT to a third host (FTP bounce)", func(t *testing.T) {
		h.during(t, func() {
			f := dialFTP(t, r, server)
			f.login()
			f.cmd("PORT 203,0,113,99,200,10")
			g.wantRefused(t, f, "neither the sender's nor its public address")
		})
	})
	t.Run("PORT to the router's SSH port", func(t *testing.T) {
		tr := setTrap(t, r, rig.Router, r.Addresses().RouterInside.String()+":22")
		h.during(t, func() {
			f := dialFTP(t, r, server)
			f.login()
			f.cmd("PORT " + commas(r.Addresses().RouterInside.String(), 22))
			g.wantRefused(t, f, "below the minimum")
		})
		if reachable(t, r, rig.Server, router+":22") || tr.sprung() {
			t.Fatal("the router's port 22 was reached from outside")
		}
	})
	t.Run("PORT to port 22 of the client", func(t *testing.T) {
		tr := setTrap(t, r, rig.Client, r.ClientAddr().String()+":22")
		h.during(t, func() {
			f := dialFTP(t, r, server)
			f.login()
			f.cmd("PORT " + commas(r.ClientAddr().String(), 22))
			g.wantRefused(t, f, "below the minimum")
		})
		if reachable(t, r, rig.Server, router+":22") || tr.sprung() {
			t.Fatal("the client's port 22 was reached from outside")
		}
	})
	t.Run("EPRT with a foreign address", func(t *testing.T) {
		h.during(t, func() {
			f := dialFTP(t, r, server)
			f.login()
			f.cmd("EPRT |1|198.51.100.77|5000|")
			g.wantRefused(t, f, "neither the sender's nor its public address")
		})
	})
	t.Run("commands before login (slipstream-shaped)", func(t *testing.T) {
		tr := setTrap(t, r, rig.Client, r.ClientAddr().String()+":51220")
		h.during(t, func() {
			f := dialFTP(t, r, server)
			f.send("USER anonymous\r\nPASS guest@\r\nPORT " + commas(r.ClientAddr().String(), 51220) + "\r\n")
			g.wantRefused(t, f, "before the server accepted a login")
		})
		if reachable(t, r, rig.Server, router+":51220") || tr.sprung() {
			t.Fatal("a PORT sent before login was let through")
		}
	})
	t.Run("command starting a segment mid-line (slipstream)", func(t *testing.T) {
		tr := setTrap(t, r, rig.Client, r.ClientAddr().String()+":51221")
		h.during(t, func() {
			f := dialFTP(t, r, server)
			f.login()
			f.send("NOOP " + strings.Repeat("x", 200)) // no line end: the next segment is mid-line
			time.Sleep(50 * time.Millisecond)
			f.send("PORT " + commas(r.ClientAddr().String(), 51221) + "\r\n")
			f.reply()
			f.cmd("NOOP")
			g.wantNoPinhole(t, f)
		})
		if reachable(t, r, rig.Server, router+":51221") || tr.sprung() {
			t.Fatal("a PORT in the middle of a line was let through")
		}
	})
	t.Run("PORT flood", func(t *testing.T) {
		h.during(t, func() {
			f := dialFTP(t, r, server)
			f.login()
			for i := range 300 {
				f.cmd("PORT " + commas(r.ClientAddr().String(), uint16(40000+i)))
			}
			// One pending pinhole per control connection: each PORT
			// replaced the previous one, and the replaced ones are closed.
			deadline := time.Now().Add(30 * time.Second)
			for {
				n := pinholeRules(t, r, r.ClientAddr().String())
				if n <= 1 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("%d pinhole rules for the flooding client 30s after the flood", n)
				}
				time.Sleep(100 * time.Millisecond)
			}
		})
	})
	t.Run("64 KB line without CRLF, NUL bytes, garbage", func(t *testing.T) {
		h.during(t, func() {
			f := dialFTP(t, r, server)
			f.login()
			f.cmd("PORT " + commas(r.ClientAddr().String(), 51222) + "\x00")
			g.wantRefused(t, f, "malformed")

			long := dialFTP(t, r, server)
			long.login()
			long.send(strings.Repeat("A", 64<<10))
			// vsftpd answers "500 Input line too long." and ends the
			// session, so the CRLF may meet its reset (seen once in CI:
			// broken pipe). What this checks is ftpalg's verdict.
			_, _ = long.c.Write([]byte("\r\n"))
			g.wantRefused(t, long, "line too long")

			junk := dialFTP(t, r, server)
			b := make([]byte, 4096)
			rnd := rand.New(rand.NewPCG(1, 2))
			for i := range b {
				b[i] = byte(rnd.UintN(256))
			}
			junk.send(string(b))
			junk.send("GET / HTTP/1.1\r\nHost: example\r\n\r\nSSH-2.0-OpenSSH_9.2p1\r\n")
			g.wantNoPinhole(t, junk)
		})
	})
	t.Run("AUTH TLS refused with a clear reply", func(t *testing.T) {
		h.during(t, func() {
			f := dialFTP(t, r, server)
			if rep := f.cmd("AUTH TLS"); !strings.HasPrefix(rep, "534 ") || !strings.Contains(rep, "ftpalg") {
				t.Fatalf("AUTH TLS answered %q, want ftpalg's 534", rep)
			}
			f.login() // the session goes on in plain FTP
		})
		// curl that requires TLS fails at once with the reason, instead of hanging.
		start := time.Now()
		out, err := r.Exec(rig.Client, "curl", "-sS", "--max-time", "10", "--ssl-reqd", r.URL("1m.bin"), "-o", "/dev/null").CombinedOutput()
		if err == nil || time.Since(start) > 5*time.Second {
			t.Fatalf("curl --ssl-reqd: err %v after %v: %s", err, time.Since(start), out)
		}
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			t.Fatal(err)
		}
		t.Logf("curl --ssl-reqd through --tls=refuse: exit %d in %v: %s", ee.ExitCode(), time.Since(start).Round(time.Millisecond), strings.TrimSpace(string(out)))
	})
}

// TestHostileServer runs a server that announces data endpoints it was
// not asked for. ftpalg must open nothing for them, while a normal passive
// session to vsftpd on the same router keeps working.
func TestHostileServer(t *testing.T) {
	const evilPort = "2121"
	h := newHostile(t, rig.Routed, rig.PASV, func(r *rig.Rig) {
		// Let clients reach the hostile server's control port, as an admin
		// would for a second FTP service.
		if out, err := r.Run(t.Context(), rig.Router, "iptables", "-I", "FORWARD", "2", "-p", "tcp", "-d", r.ServerHostAddr().String(),
			"--dport", evilPort, "-m", "conntrack", "--ctstate", "NEW", "-j", "ACCEPT"); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
	}, "--control-ports", "21,"+evilPort)
	r := h.r
	srv := r.ServerHostAddr().String()
	answers := startEvilServer(t, r, rig.Server, net.JoinHostPort(srv, evilPort))
	comma := strings.ReplaceAll(srv, ".", ",")
	cases := []struct {
		name, cmd, reply string
		port             int // announced but not to be honoured
		honoured         int // announced on the reply's terminating line: must work
	}{
		{"unsolicited 227", "NOOP", fmt.Sprintf("227 Entering Passive Mode (%s,200,30).\r\n", comma), 51230, 0},
		{"227 inside a 550 error", "RETR x", fmt.Sprintf("550 Failed: 227 Entering Passive Mode (%s,200,31).\r\n", comma), 51231, 0},
		{"227 on a continuation line", "PASV", fmt.Sprintf("227-Entering Passive Mode (%s,200,32).\r\n227 Entering Passive Mode (%s,200,33).\r\n", comma, comma), 51232, 51233},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tr := setTrap(t, r, rig.Server, net.JoinHostPort(srv, fmt.Sprint(tc.port)))
			if tc.honoured != 0 {
				setTrap(t, r, rig.Server, net.JoinHostPort(srv, fmt.Sprint(tc.honoured)))
			}
			h.during(t, func() {
				f := dialFTP(t, r, net.JoinHostPort(srv, evilPort))
				f.login()
				answers <- tc.reply
				f.cmd(tc.cmd)
				if reachable(t, r, rig.Client, net.JoinHostPort(srv, fmt.Sprint(tc.port))) || tr.sprung() {
					t.Fatalf("the client reached port %d, announced by %q", tc.port, strings.TrimSpace(tc.reply))
				}
				// The positive control: a real answer to PASV opens its pinhole.
				if tc.honoured != 0 && !reachable(t, r, rig.Client, net.JoinHostPort(srv, fmt.Sprint(tc.honoured))) {
					t.Fatalf("the terminating 227 line's port %d was not opened", tc.honoured)
				}
			})
		})
	}
}

// startEvilServer runs a hostile FTP server on node n at addr: it greets,
// accepts any login, and answers every other command with the next reply
// the test sends on the returned channel.
func startEvilServer(t *testing.T, r *rig.Rig, n rig.Node, addr string) chan<- string {
	t.Helper()
	answers := make(chan string, 1)
	l, err := r.Listen(n, "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				fmt.Fprint(c, "220 evil\r\n")
				for {
					line, err := br.ReadString('\n')
					if err != nil {
						return
					}
					switch verb := strings.ToUpper(strings.Fields(line + " x")[0]); verb {
					case "USER":
						fmt.Fprint(c, "331 pw\r\n")
					case "PASS":
						fmt.Fprint(c, "230 ok\r\n")
					default:
						fmt.Fprint(c, <-answers)
					}
				}
			}()
		}
	}()
	return answers
}

// pinholeRules counts ftpalg's ACCEPT pinholes that mention addr.
func pinholeRules(t *testing.T, r *rig.Rig, addr string) int {
	t.Helper()
	out, err := r.Run(t.Context(), rig.Router, "iptables", "-S", "FTPALG-ACCEPT")
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(out, addr)
}

// commas writes an IPv4 address and port the way PORT does.
func commas(addr string, port uint16) string {
	return fmt.Sprintf("%s,%d,%d", strings.ReplaceAll(addr, ".", ","), port>>8, port&0xff)
}
