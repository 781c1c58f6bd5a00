package rig

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestServersAndClients runs every server with every client through the
// kernel's FTP helper behind MASQUERADE (IPv4) and on the routed IPv6
// topology: one supported mode per pair, rotating so that each client uses
// every mode it supports somewhere. Each transfer must arrive intact in
// the mode asked for. The server behind NAT must log the client's public
// address, proving the transfer crossed the NAT.
func TestServersAndClients(t *testing.T) {
	requireRoot(t)
	for _, topo := range []Topology{ClientNAT, Routed6} {
		for _, srv := range Servers() {
			t.Run(topo.String()+"/"+srv.String(), func(t *testing.T) {
				t.Parallel()
				r := New(t, topo, WithPrefix(testPrefix), WithKernelHelper())
				s, err := r.StartServer(srv, ServerOptions{Upload: true})
				if err != nil {
					t.Fatal(err)
				}
				want, err := s.CreateFile("f.bin", 300<<10)
				if err != nil {
					t.Fatal(err)
				}
				dir := t.TempDir()
				i := int(srv)
				for _, c := range Clients() {
					var modes []Mode
					for _, m := range Modes() {
						if ok, _ := c.Supports(m, topo.Family()); ok {
							modes = append(modes, m)
						}
					}
					m := modes[(i+int(c))%len(modes)]
					for _, op := range []Op{Get, Put} {
						local := filepath.Join(dir, c.String()+"-"+op.String())
						remote := "f.bin"
						if op == Put {
							remote = "upload/" + c.String() + ".bin"
							if err := os.Link(filepath.Join(s.Root, "f.bin"), local); err != nil {
								t.Fatal(err)
							}
						}
						ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
						res, err := r.RunClient(ctx, c, Job{Op: op, Mode: m, Remote: []string{remote}, Local: local, User: s.User, Password: s.Password})
						cancel()
						if err != nil {
							t.Errorf("%v %v %v: %v\n%s", c, m, op, err, res.Stderr)
							continue
						}
						got := local
						if op == Put {
							got = filepath.Join(s.Root, remote)
						}
						if sum, err := FileSHA256(got); err != nil || sum != want {
							t.Errorf("%v %v %v: %s has SHA-256 %s (%v), want %s", c, m, op, got, sum, err, want)
						}
						if res.Bytes != 300<<10 {
							t.Errorf("%v %v %v: Bytes %d, want %d", c, m, op, res.Bytes, 300<<10)
						}
					}
				}
				if n, err := r.InvalidDrops(); err != nil || n != 0 {
					t.Errorf("INVALID drops %d (%v), want 0", n, err)
				}
			})
		}
	}
}

// TestRunClientRejects checks job validation and unsupported modes.
func TestRunClientRejects(t *testing.T) {
	requireRoot(t)
	r := New(t, Routed6, WithPrefix(testPrefix))
	ctx := t.Context()
	for _, tc := range []struct {
		c    ClientKind
		job  Job
		want error
	}{
		{Curl, Job{Op: Get, Mode: EPSV, Local: "x"}, ErrConfig},
		{Curl, Job{Op: Get, Mode: Mode(9), Remote: []string{"a"}, Local: "x"}, ErrMode},
		{Curl, Job{Op: Get, Mode: EPSV, Remote: []string{"a;rm"}, Local: "x"}, ErrConfig},
		{Curl, Job{Op: Get, Mode: PASV, Remote: []string{"a"}, Local: "x"}, ErrModeNotUsed},
		{GoFTP, Job{Op: Get, Mode: EPRT, Remote: []string{"a"}, Local: "x"}, ErrModeNotUsed},
	} {
		if _, err := r.RunClient(ctx, tc.c, tc.job); !errors.Is(err, tc.want) {
			t.Errorf("%v %+v: err %v, want %v", tc.c, tc.job, err, tc.want)
		}
	}
}

// TestFetchPackagesIdempotent checks that a second fetch reuses the cache.
func TestFetchPackagesIdempotent(t *testing.T) {
	requireRoot(t)
	ctx := t.Context()
	p, err := FetchPackages(ctx, DefaultCacheDir())
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	q, err := FetchPackages(ctx, DefaultCacheDir())
	if err != nil {
		t.Fatal(err)
	}
	if *p != *q || time.Since(start) > 5*time.Second {
		t.Errorf("second fetch took %v and returned %+v, want the cached %+v", time.Since(start), q, p)
	}
	out, err := execEnv(ctx, p, p.ProFTPD, "-v").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "ProFTPD") {
		t.Errorf("proftpd -v: %v: %s", err, out)
	}
}
