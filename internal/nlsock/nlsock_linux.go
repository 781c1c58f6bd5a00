// Package nlsock opens the blocking netfilter netlink sockets that ftpalg's
// request/answer exchanges run on (ctnetlink queries, nf_tables pinhole
// batches, the NFQUEUE reader), and names their failures.
//
// The kernel answers a netfilter request before the write that carries it
// returns, so a blocking read on the caller's thread finds the answer
// waiting; Go's network poller, which mdlayher/netlink and google/nftables
// wait in, cost 30-55 µs per exchange on an idle machine instead.
package nlsock

import (
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// Open opens a NETLINK_NETFILTER socket in the calling thread's network
// namespace, bound, whose reads and writes give up after timeout
// (reporting EAGAIN). Acknowledgements and errors come without a copy of
// the request (NETLINK_CAP_ACK, Linux 4.3 and later; older kernels send
// it along, which only costs bytes).
func Open(timeout time.Duration) (int, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
	if err != nil {
		return -1, os.NewSyscallError("socket", err)
	}
	tv := unix.NsecToTimeval(timeout.Nanoseconds())
	for _, o := range []struct {
		name string
		set  func() error
	}{
		{"bind", func() error { return unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}) }},
		{"SO_RCVTIMEO", func() error { return unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv) }},
		{"SO_SNDTIMEO", func() error { return unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv) }},
	} {
		if err := o.set(); err != nil {
			unix.Close(fd)
			return -1, fmt.Errorf("%s: %w", o.name, err)
		}
	}
	_ = unix.SetsockoptInt(fd, unix.SOL_NETLINK, unix.NETLINK_CAP_ACK, 1)
	return fd, nil
}

// Retry calls f again while it fails with EINTR, for at most timeout after
// the first interruption: a signal interrupts a socket call that has a
// timeout even under SA_RESTART, and the Go runtime's signals reach any
// thread.
func Retry(timeout time.Duration, f func() error) error {
	var deadline time.Time
	for {
		err := f()
		if !errors.Is(err, unix.EINTR) {
			return err
		}
		if deadline.IsZero() {
			deadline = time.Now().Add(timeout)
		} else if time.Now().After(deadline) {
			return err
		}
	}
}

// Err names a failed socket call: EAGAIN, which a socket opened by Open
// reports when its timeout passed, as os.ErrDeadlineExceeded, anything
// else as an *os.SyscallError.
func Err(call string, timeout time.Duration, err error) error {
	if errors.Is(err, unix.EAGAIN) {
		return fmt.Errorf("%s: no answer within %v: %w", call, timeout, os.ErrDeadlineExceeded)
	}
	return os.NewSyscallError(call, err)
}
