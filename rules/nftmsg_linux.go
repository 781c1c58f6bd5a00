package rules

import (
	"fmt"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ftpalg/ftpalg/internal/nlsock"
)

// nftSockTimeout bounds each send and receive on nftSock's socket, so a
// transaction never hangs. The kernel answers within microseconds, or
// within milliseconds when it waits for its commit lock.
const nftSockTimeout = 2 * time.Second

// nftRecvBuf is the size of nftSock's receive buffer. With NETLINK_CAP_ACK
// an acknowledgement or error is 36 bytes; without it (kernels before 4.3)
// an error carries the failed request back, still far less than this.
const nftRecvBuf = 8192

// nftSock runs the per-pinhole transactions (see nftmsg.go) on one
// blocking netlink socket, kept open between them. The calling goroutine
// writes the batch and reads the acknowledgements itself, blocked in the
// system call: the kernel processes the batch and queues every answer
// before the write returns, so no wait involves Go's network poller,
// whose wake-up costs more than the kernel's work when the process was
// idle.
//
// Keeping the socket also spares the close that google/nftables pays for
// after every transaction: closing a netlink socket makes nf_tables wait,
// holding its commit lock, for objects that the last transactions freed
// to be destroyed after an RCU grace period, which after a deletion takes
// ~10-30 ms during which no other transaction in the namespace commits.
//
// A transaction that fails, times out or ends early leaves answers in the
// socket that a later one could misread. Sequence numbers would tell them
// apart, but the socket is closed all the same and the next transaction
// opens a new one, as nftConn's per-transaction sockets guaranteed. The
// socket belongs to the network namespace of the thread that opens it,
// which for the daemon is its only one.
type nftSock struct {
	mu   sync.Mutex
	fd   int    // -1 when closed
	seq  uint32 // the last sequence number used
	wbuf []byte // the batch being sent, reused
	rbuf []byte // the datagram being read, reused
	acks []nftAck
}

func newNFTSock() *nftSock {
	return &nftSock{fd: -1}
}

// txn runs ops as one transaction and returns once the kernel has
// committed them (nil) or refused them: the error, wrapping ErrNFTables,
// names the op at fault and wraps the kernel's syscall.Errno.
func (s *nftSock) txn(ops []nftElemOp) error {
	if len(ops) == 0 {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.openLocked(); err != nil {
		return err
	}
	begin := s.seq + 1
	s.seq += uint32(len(ops)) + 2
	b, err := appendNFTBatch(s.wbuf[:0], begin, ops)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrNFTables, err)
	}
	s.wbuf = b
	if err := s.exchange(b, nftAckWait{begin: begin, ops: ops}); err != nil {
		s.closeLocked()
		return err
	}
	return nil
}

// warm opens the socket ahead of the first transaction, so that it does
// not pay for it. A failure is left to that transaction to report.
func (s *nftSock) warm() {
	s.mu.Lock()
	defer s.mu.Unlock()
	_ = s.openLocked()
}

// close closes the socket; the next transaction opens a new one.
func (s *nftSock) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closeLocked()
}

func (s *nftSock) openLocked() error {
	if s.fd >= 0 {
		return nil
	}
	fd, err := nlsock.Open(nftSockTimeout)
	if err != nil {
		return fmt.Errorf("%w: opening netlink: %w", ErrNFTables, err)
	}
	s.fd = fd
	if s.rbuf == nil {
		s.rbuf = make([]byte, nftRecvBuf)
	}
	return nil
}

func (s *nftSock) closeLocked() {
	if s.fd >= 0 {
		_ = unix.Close(s.fd)
		s.fd = -1
	}
}

// exchange sends the batch b and reads acknowledgements until w says the
// transaction is over.
func (s *nftSock) exchange(b []byte, w nftAckWait) error {
	var n int
	err := nlsock.Retry(nftSockTimeout, func() (err error) { n, err = unix.Write(s.fd, b); return err })
	if err != nil {
		return fmt.Errorf("%w: sending: %w", ErrNFTables, nlsock.Err("write", nftSockTimeout, err))
	}
	if n != len(b) {
		return fmt.Errorf("%w: sent %d of %d bytes", ErrNFTables, n, len(b))
	}
	for {
		var from unix.Sockaddr
		err := nlsock.Retry(nftSockTimeout, func() (err error) { n, from, err = unix.Recvfrom(s.fd, s.rbuf, unix.MSG_TRUNC); return err })
		if err != nil {
			return fmt.Errorf("%w: receiving: %w", ErrNFTables, nlsock.Err("recvfrom", nftSockTimeout, err))
		}
		if sa, ok := from.(*unix.SockaddrNetlink); !ok || sa.Pid != 0 {
			continue // not from the kernel
		}
		if n > len(s.rbuf) {
			return fmt.Errorf("%w: reply of %d bytes truncated to %d", ErrNFTables, n, len(s.rbuf))
		}
		s.acks, err = parseNFTAcks(s.rbuf[:n], s.acks[:0])
		if err != nil {
			return err
		}
		for _, a := range s.acks {
			if done, err := w.take(a); done {
				return err
			}
		}
	}
}
