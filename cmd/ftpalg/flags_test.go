package main

import (
	"errors"
	"flag"
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
)

// The pinhole sync flags: off unless both are given, each an addr:port,
// one address family.
func TestSyncFlags(t *testing.T) {
	for _, c := range []struct {
		args    []string
		want    string // error text; "" for success
		listen  string
		peerArg string
	}{
		{args: nil},
		{args: []string{"--sync-listen", "203.0.113.1:3781", "--sync-peer", "203.0.113.2:3781"}, listen: "203.0.113.1:3781", peerArg: "203.0.113.2:3781"},
		{args: []string{"--sync-listen", "203.0.113.1:3781"}, want: "go together"},
		{args: []string{"--sync-peer", "203.0.113.2:3781"}, want: "go together"},
		{args: []string{"--sync-listen", "203.0.113.1", "--sync-peer", "203.0.113.2:3781"}, want: "--sync-listen \"203.0.113.1\": want addr:port"},
		{args: []string{"--sync-listen", "203.0.113.1:3781", "--sync-peer", "203.0.113.2:0"}, want: "want a port"},
		{args: []string{"--sync-listen", "[2001:db8::1]:3781", "--sync-peer", "203.0.113.2:3781"}, want: "one address family"},
	} {
		var o options
		fs := flag.NewFlagSet("run", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		o.define(fs, true)
		if err := fs.Parse(c.args); err != nil {
			t.Fatal(err)
		}
		cfg, err := o.daemonConfig(slog.New(slog.DiscardHandler))
		if c.want != "" {
			if !errors.Is(err, errUsage) || !strings.Contains(err.Error(), c.want) {
				t.Errorf("%q: err = %v, want a usage error saying %q", c.args, err, c.want)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", c.args, err)
			continue
		}
		var wantL, wantP netip.AddrPort
		if c.listen != "" {
			wantL, wantP = netip.MustParseAddrPort(c.listen), netip.MustParseAddrPort(c.peerArg)
		}
		if cfg.SyncListen != wantL || cfg.SyncPeer != wantP {
			t.Errorf("%q: listen %v peer %v", c.args, cfg.SyncListen, cfg.SyncPeer)
		}
	}
}
