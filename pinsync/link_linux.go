package pinsync

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
)

// sendQueue bounds the datagrams waiting for the writer: a full queue
// drops (the pinhole is then not synced, as if its datagram were lost)
// instead of delaying the packet path that opened the pinhole.
const sendQueue = 4096

// Link is one router's end of the sync link: a UDP socket bound to the
// listen address, sending to the peer's and accepting datagrams only from
// the peer's address. Send never blocks: a writer goroutine sends what it
// queues.
type Link struct {
	conn   *net.UDPConn
	peer   netip.AddrPort
	onErr  func(error)
	out    chan []byte
	done   chan struct{}
	wg     sync.WaitGroup
	mu     sync.Mutex
	closed bool
}

// Listen binds listen and sends to peer. onSendError, if not nil, is told
// of each datagram that could not be queued or sent (from the writer
// goroutine: keep it short).
func Listen(listen, peer netip.AddrPort, onSendError func(error)) (*Link, error) {
	if !listen.IsValid() || !peer.IsValid() || peer.Port() == 0 {
		return nil, fmt.Errorf("pinsync: listen %v, peer %v: both need an address and the peer a port", listen, peer)
	}
	conn, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(listen))
	if err != nil {
		return nil, fmt.Errorf("pinsync: listening on %v: %w", listen, err)
	}
	if onSendError == nil {
		onSendError = func(error) {}
	}
	l := &Link{conn: conn, peer: netip.AddrPortFrom(peer.Addr().Unmap(), peer.Port()), onErr: onSendError,
		out: make(chan []byte, sendQueue), done: make(chan struct{})}
	l.wg.Go(l.writer)
	return l, nil
}

// Addr is the bound address (its port when listen's was 0).
func (l *Link) Addr() netip.AddrPort { return l.conn.LocalAddr().(*net.UDPAddr).AddrPort() }

// Send queues m for the peer. It fails if m does not encode, the link is
// closed or the queue is full.
func (l *Link) Send(m Message) error {
	b, err := Encode(make([]byte, 0, MaxLen), m)
	if err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return ErrClosed
	}
	select {
	case l.out <- b:
		return nil
	default:
		err := fmt.Errorf("pinsync: sending %v to %v: queue of %d full", m.Type, l.peer, sendQueue)
		l.onErr(err)
		return err
	}
}

func (l *Link) writer() {
	for {
		select {
		case <-l.done:
			return
		case b := <-l.out:
			if _, err := l.conn.WriteToUDPAddrPort(b, l.peer); err != nil {
				l.onErr(fmt.Errorf("pinsync: sending to %v: %w", l.peer, err))
			}
		}
	}
}

// Serve reads datagrams until ctx is done or the link is closed. Each
// one from the peer's address that decodes goes to msg; every other one
// (another source, malformed, a version this build does not read) goes to
// refused with the reason, ErrPeer or ErrMalformed.
func (l *Link) Serve(ctx context.Context, msg func(from netip.AddrPort, m Message), refused func(from netip.AddrPort, err error)) error {
	stop := context.AfterFunc(ctx, func() { _ = l.Close() })
	defer stop()
	buf := make([]byte, MaxLen+1) // one more: an overlong datagram is seen as such
	for {
		n, from, err := l.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("pinsync: reading: %w", err)
		}
		from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
		if from.Addr() != l.peer.Addr() {
			refused(from, fmt.Errorf("%w %v", ErrPeer, l.peer.Addr()))
			continue
		}
		m, err := Decode(buf[:n])
		if err != nil {
			refused(from, err)
			continue
		}
		msg(from, m)
	}
}

// Close stops the writer (datagrams still queued are dropped) and closes
// the socket, which ends Serve.
func (l *Link) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	close(l.done)
	l.mu.Unlock()
	l.wg.Wait()
	if err := l.conn.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("pinsync: closing: %w", err)
	}
	return nil
}
