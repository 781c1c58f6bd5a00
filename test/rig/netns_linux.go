package rig

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"

	"golang.org/x/sys/unix"
)

// Dial connects from node's namespace. A socket keeps the namespace it was
// created in, so the returned connection can be used from any goroutine.
// It lets Go test code act as an FTP client (or probe a server) inside the
// rig without an external program.
func (r *Rig) Dial(ctx context.Context, n Node, network, address string) (net.Conn, error) {
	var c net.Conn
	err := r.inNamespace(n, func() error {
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, network, address)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("dialing %s %s from %v: %w", network, address, n, err)
	}
	return c, nil
}

// Listen listens in node's namespace; see Dial.
func (r *Rig) Listen(n Node, network, address string) (net.Listener, error) {
	var l net.Listener
	err := r.inNamespace(n, func() error {
		var err error
		l, err = net.Listen(network, address)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listening on %s %s in %v: %w", network, address, n, err)
	}
	return l, nil
}

// ListenPacket opens a packet connection in node's namespace; see Dial.
// With network "ip4:tcp" or "ip6:tcp" it is a raw socket, for injecting
// hand-made segments (for example ones conntrack must classify INVALID).
func (r *Rig) ListenPacket(n Node, network, address string) (net.PacketConn, error) {
	var c net.PacketConn
	err := r.inNamespace(n, func() error {
		var err error
		c, err = net.ListenPacket(network, address)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listening on %s %s in %v: %w", network, address, n, err)
	}
	return c, nil
}

// inNamespace runs fn in node's namespace; see InNamespace.
func (r *Rig) inNamespace(n Node, fn func() error) error {
	ns := r.NS(n)
	if ns == "" {
		return fmt.Errorf("entering %v: %w", n, ErrNode)
	}
	return InNamespace(ns, fn)
}

// InNamespace runs fn on an OS thread switched into the named network
// namespace (as `ip netns` names it). The thread is switched back
// afterwards; if that fails it stays locked so the runtime discards it
// with the goroutine, and no other goroutine ever runs in the wrong
// namespace. A socket fn creates keeps that namespace, so it can be used
// from any goroutine afterwards: test code acts as a client, server or
// router peer inside a namespace without an external program.
func InNamespace(ns string, fn func() error) error {
	target, err := os.Open(netnsDir + "/" + ns)
	if err != nil {
		return fmt.Errorf("opening namespace %s: %w", ns, err)
	}
	defer target.Close()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("opening current namespace: %w", err)
			return
		}
		defer orig.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("entering namespace %s: %w", ns, err)
			return
		}
		ferr := fn()
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("leaving namespace %s: %w", ns, err))
			return // thread stays locked and dies with this goroutine
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}
