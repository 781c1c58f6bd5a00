// Package status is ftpalg's live view: the daemon serves a Snapshot of
// what it is tracking over a unix socket, and `ftpalg status` fetches and
// prints it. A unix socket (not a TCP port) because the view names every
// FTP client and server the router sees: access is a file mode, checked by
// the kernel, with no listener on any network.
//
// The protocol is HTTP/1.1 over the socket, GET /v1/snapshot, answered with
// the Snapshot as JSON; `curl --unix-socket /run/ftpalg/status.sock
// http://ftpalg/v1/snapshot` works too.
package status

import (
	"cmp"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"
)

// DefaultSocket is where the daemon listens unless told otherwise; systemd's
// RuntimeDirectory=ftpalg creates its directory.
const DefaultSocket = "/run/ftpalg/status.sock"

// Snapshot is the daemon's state at one instant.
type Snapshot struct {
	Version  string            `json:"version"`
	Started  time.Time         `json:"started"`
	Taken    time.Time         `json:"taken"` // when the snapshot was taken, by the daemon's clock
	Conns    []Conn            `json:"conns"`
	Pinholes []Pinhole         `json:"pinholes"`
	Counters map[string]uint64 `json:"counters"`
}

// Conn is one tracked FTP control connection, with addresses as the router
// sees them between its NAT steps (after DNAT, before SNAT).
type Conn struct {
	Session uint64         `json:"session"`
	Client  netip.AddrPort `json:"client"`
	Server  netip.AddrPort `json:"server"`
	// Path is which end, if any, is this machine: forward, local-server
	// or local-client.
	Path     string        `json:"path"`
	Age      time.Duration `json:"age_ns"`
	Rewrites uint32        `json:"rewrites"`
	// OffsetC2S and OffsetS2C are how far the receiver's sequence space is
	// ahead of the sender's after the rewrites so far, in bytes: the sum of
	// the length changes of every rewrite in that direction.
	OffsetC2S int32 `json:"offset_c2s"`
	OffsetS2C int32 `json:"offset_s2c"`
	// State says where a successor finds this connection's state: "ct"
	// (its conntrack labels are written), "ct multi" (written, MULTI set),
	// "overflow" (OVERFLOW: no successor can take it over), "resumed"
	// (taken over from the labels), or "-" (nothing written: not needed).
	State string `json:"state,omitempty"`
}

// Pinhole is one open pinhole: Peer may connect to Public, which is
// translated to Target (equal to Public without NAT).
type Pinhole struct {
	Session uint64         `json:"session"`
	Path    string         `json:"path"` // the control connection's path
	Peer    netip.Addr     `json:"peer"`
	Public  netip.AddrPort `json:"public"`
	Target  netip.AddrPort `json:"target"`
	Opened  time.Time      `json:"opened"`
	Expires time.Time      `json:"expires"`
	// Synced says the other router of an HA pair opened it and sent it
	// here (--sync-peer); Session is the sender's and Path is PathSynced.
	Synced bool `json:"synced,omitempty"`
}

// PathSynced is the path shown for a pinhole synced from the other
// router: its control connection runs there.
const PathSynced = "synced"

// Render prints s as tables for a human: the control connections, the open
// pinholes with the time they have left, and the counters.
func Render(w io.Writer, s Snapshot) error {
	now := s.Taken
	if now.IsZero() {
		now = time.Now()
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "ftpalg %s, up %s\n", orDash(s.Version), roundAge(now.Sub(s.Started)))

	conns := slices.Clone(s.Conns)
	slices.SortFunc(conns, func(a, b Conn) int { return cmp.Compare(a.Session, b.Session) })
	fmt.Fprintf(tw, "\nControl connections: %d\n", len(conns))
	if len(conns) > 0 {
		fmt.Fprintln(tw, "SESSION\tPATH\tCLIENT\tSERVER\tAGE\tREWRITES\tOFFSET C>S\tOFFSET S>C\tSTATE")
		for _, c := range conns {
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%d\t%+d\t%+d\t%s\n", c.Session, orDash(c.Path), c.Client, c.Server,
				roundAge(c.Age), c.Rewrites, c.OffsetC2S, c.OffsetS2C, orDash(c.State))
		}
	}

	pins := slices.Clone(s.Pinholes)
	slices.SortFunc(pins, func(a, b Pinhole) int { return a.Expires.Compare(b.Expires) })
	fmt.Fprintf(tw, "\nOpen pinholes: %d\n", len(pins))
	if len(pins) > 0 {
		fmt.Fprintln(tw, "SESSION\tPATH\tPEER\tPUBLIC\tTARGET\tOPEN FOR\tCLOSES IN")
		for _, p := range pins {
			target := p.Target.String()
			if p.Target == p.Public {
				target = "-"
			}
			left := p.Expires.Sub(now)
			closes := roundAge(left)
			if left <= 0 {
				closes = "due"
			}
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\n", p.Session, orDash(p.Path), p.Peer, p.Public, target,
				roundAge(now.Sub(p.Opened)), closes)
		}
	}

	names := make([]string, 0, len(s.Counters))
	for k := range s.Counters {
		names = append(names, k)
	}
	sort.Strings(names)
	fmt.Fprintf(tw, "\nCounters:\n")
	for _, k := range names {
		fmt.Fprintf(tw, "%s\t%d\n", k, s.Counters[k])
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("writing status: %w", err)
	}
	return nil
}

func orDash(s string) string {
	if strings.TrimSpace(s) == "" {
		return "-"
	}
	return s
}

// roundAge shortens a duration to what a human reads at a glance: 850ms,
// 12.3s, 4m05s, 3h02m, 2d04h.
func roundAge(d time.Duration) string {
	switch {
	case d < 0:
		return "0s"
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	case d < time.Minute:
		return d.Round(100 * time.Millisecond).String()
	case d < time.Hour:
		return fmt.Sprintf("%dm%02ds", int(d/time.Minute), int(d%time.Minute/time.Second))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh%02dm", int(d/time.Hour), int(d%time.Hour/time.Minute))
	}
	return fmt.Sprintf("%dd%02dh", int(d/(24*time.Hour)), int(d%(24*time.Hour)/time.Hour))
}
