package pinsync

import (
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"
)

// TestLinkLoopback runs two links over real UDP sockets on loopback (no
// root needed; the netns test of daemon runs the whole path between two
// routers): a message from the peer arrives decoded, a datagram from
// another address and a malformed one are refused with their reasons.
func TestLinkLoopback(t *testing.T) {
	a, err := Listen(netip.MustParseAddrPort("127.0.0.1:0"), netip.MustParseAddrPort("127.0.0.1:9"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := Listen(netip.MustParseAddrPort("127.0.0.1:0"), a.Addr(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	type got struct {
		m   Message
		err error
	}
	ch := make(chan got, 8)
	served := make(chan error, 1)
	go func() {
		served <- a.Serve(t.Context(), func(_ netip.AddrPort, m Message) { ch <- got{m: m} },
			func(_ netip.AddrPort, err error) { ch <- got{err: err} })
	}()
	next := func() got {
		t.Helper()
		select {
		case g := <-ch:
			return g
		case <-time.After(10 * time.Second):
			t.Fatal("no datagram within 10 s")
		}
		return got{}
	}
	if err := b.Send(pinholeMsg()); err != nil {
		t.Fatal(err)
	}
	if g := next(); g.err != nil || g.m != pinholeMsg() {
		t.Fatalf("got %+v, want %+v", g, pinholeMsg())
	}
	stranger, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.ParseIP("127.0.0.2")})
	if err != nil {
		t.Fatal(err)
	}
	defer stranger.Close()
	good, _ := Encode(nil, pinholeMsg())
	if _, err := stranger.WriteToUDPAddrPort(good, a.Addr()); err != nil {
		t.Fatal(err)
	}
	if g := next(); !errors.Is(g.err, ErrPeer) {
		t.Fatalf("from 127.0.0.2: got %+v, want ErrPeer", g)
	}
	if _, err := b.conn.WriteToUDPAddrPort(append(good, 0), a.Addr()); err != nil {
		t.Fatal(err)
	}
	if g := next(); !errors.Is(g.err, ErrMalformed) {
		t.Fatalf("overlong: got %+v, want ErrMalformed", g)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-served; err != nil {
		t.Fatalf("Serve after Close: %v", err)
	}
	if err := a.Send(pinholeMsg()); !errors.Is(err, ErrClosed) {
		t.Fatalf("Send after Close: %v, want ErrClosed", err)
	}
}
