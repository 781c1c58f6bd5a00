//go:build linux

package e2e

import (
	"fmt"
	"net"
	"strings"
	"testing"

	"github.com/ftpalg/ftpalg/test/rig"
)

// hostControlPorts are the control ports of the host tests: vsftpd on the
// first, a hostile server on the second, so both of ftpalg's
// --control-ports are on the local paths.
var hostControlPorts = []uint16{21, 2121}

func newHostHostile(t *testing.T, topo rig.Topology, mode rig.Mode) *hostile {
	return newHostileWith(t, topo, []rig.Option{rig.WithControlPorts(hostControlPorts...)}, mode, nil,
		"--control-ports", "21,2121")
}

// wantNoPinholeTo requires that none of ftpalg's nftables pinholes names
// port (the concurrent normal session's may exist).
func wantNoPinholeTo(t *testing.T, r *rig.Rig, port uint16) {
	t.Helper()
	elems, err := r.PinholeElements(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range elems {
		if strings.Contains(e, fmt.Sprintf(",%d]", port)) || strings.Contains(e, fmt.Sprintf(",%d,", port)) {
			t.Fatalf("a pinhole names port %d: %s", port, e)
		}
	}
}

// TestHostileHostServer attacks ftpalg on an FTP server's own host (strict
// INPUT, --control-ports 21,2121): a client's PORT naming the host's SSH
// port or another of its listeners, and a local server's PASV reply
// naming a foreign address. Nothing may open (no pinhole logged or in the
// ruleset, the connection attempt fails, the listener sees nothing) while
// a normal passive session, which needs ftpalg's pinhole into INPUT,
// keeps working; INVALID stays 0 and SIGINT leaves nothing.
func TestHostileHostServer(t *testing.T) {
	h := newHostHostile(t, rig.HostServer, rig.PASV)
	r, g := h.r, h.g
	host := r.ServerHostAddr().String()
	vsftpd := net.JoinHostPort(host, "21")

	for _, tc := range []struct {
		name   string
		port   uint16
		reason string
	}{
		{"PORT to the host's own port 22", 22, "below the minimum"},
		{"PORT to another local listener", 8022, "neither the sender's nor its public address"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			target := net.JoinHostPort(host, fmt.Sprint(tc.port))
			tr := setTrap(t, r, rig.Router, target)
			h.during(t, func() {
				f := dialFTP(t, r, vsftpd)
				f.login()
				f.cmd("PORT " + commas(host, tc.port))
				g.wantRefused(t, f, tc.reason)
				wantNoPinholeTo(t, r, tc.port)
			})
			if reachable(t, r, rig.Client, target) || tr.sprung() {
				t.Fatalf("the host's port %d was reached", tc.port)
			}
		})
	}
	t.Run("local server's PASV naming a foreign address", func(t *testing.T) {
		answers := startEvilServer(t, r, rig.Router, net.JoinHostPort(host, "2121"))
		foreign := r.Addresses().ServerNS.String() // the bystander on the host's other link
		tr := setTrap(t, r, rig.Server, net.JoinHostPort(foreign, "51250"))
		h.during(t, func() {
			f := dialFTP(t, r, net.JoinHostPort(host, "2121"))
			f.login()
			answers <- fmt.Sprintf("227 Entering Passive Mode (%s).\r\n", commas(foreign, 51250))
			f.cmd("PASV")
			g.wantRefused(t, f, "neither the sender's nor its public address")
			wantNoPinholeTo(t, r, 51250)
		})
		if reachable(t, r, rig.Client, net.JoinHostPort(foreign, "51250")) || tr.sprung() {
			t.Fatal("the foreign address named by the local server's 227 was reached")
		}
	})
	g.stop()
}

// TestHostileHostClient attacks ftpalg on an FTP client's own host (strict
// INPUT, --control-ports 21,2121): a hostile server's unsolicited 227
// naming one of the host's ports, and a local client's PORT naming the
// host's SSH port. Nothing may open while a normal active-mode session,
// which needs ftpalg's pinhole into INPUT, keeps working; INVALID stays 0
// and SIGINT leaves nothing.
func TestHostileHostClient(t *testing.T) {
	h := newHostHostile(t, rig.HostClient, rig.PORT)
	r, g := h.r, h.g
	host := r.ClientAddr().String() // the firewall host, where the client runs
	srv := r.ServerHostAddr().String()

	t.Run("unsolicited 227 toward a local client", func(t *testing.T) {
		answers := startEvilServer(t, r, rig.Server, net.JoinHostPort(srv, "2121"))
		tr := setTrap(t, r, rig.Router, net.JoinHostPort(host, "51240"))
		h.during(t, func() {
			f := dialFTPFrom(t, r, rig.Router, net.JoinHostPort(srv, "2121"))
			f.login()
			answers <- fmt.Sprintf("227 Entering Passive Mode (%s).\r\n", commas(host, 51240))
			f.cmd("NOOP")
			g.wantNoPinhole(t, f)
			wantNoPinholeTo(t, r, 51240)
		})
		if reachable(t, r, rig.Server, net.JoinHostPort(host, "51240")) || tr.sprung() {
			t.Fatal("the server reached the host's port named by an unsolicited 227")
		}
	})
	t.Run("PORT to the host's own port 22", func(t *testing.T) {
		tr := setTrap(t, r, rig.Router, net.JoinHostPort(host, "22"))
		h.during(t, func() {
			f := dialFTPFrom(t, r, rig.Router, net.JoinHostPort(srv, "21"))
			f.login()
			f.cmd("PORT " + commas(host, 22))
			g.wantRefused(t, f, "below the minimum")
			wantNoPinholeTo(t, r, 22)
		})
		if reachable(t, r, rig.Server, net.JoinHostPort(host, "22")) || tr.sprung() {
			t.Fatal("the server reached the host's port 22")
		}
	})
	g.stop()
}
