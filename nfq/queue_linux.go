package nfq

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/ftpalg/ftpalg/internal/nlsock"
)

// Defaults of Config.
const (
	DefaultMaxQueueLen = 1024
	DefaultCopyRange   = 0xffff
	DefaultReadBuffer  = 8 << 20
	DefaultBatch       = 32
)

// pollInterval bounds how long Serve blocks in one read, which is how long
// it takes to notice its context ending. An idle queue wakes this often.
const pollInterval = 100 * time.Millisecond

// readBufSize holds the largest packet message: a 64 KiB packet plus its
// headers and attributes.
const readBufSize = 0xffff + 1024

// Config sets up one queue.
type Config struct {
	// Num is the queue number of the NFQUEUE rule.
	Num uint16
	// MaxQueueLen bounds how many packets wait for a verdict in the
	// kernel; more are dropped (or, with FailOpen, accepted).
	MaxQueueLen uint32
	// CopyRange is how many bytes of each packet are copied to us.
	CopyRange uint32
	// FailOpen accepts packets the queue has no room for instead of
	// dropping them.
	FailOpen bool
	// ReadBuffer is the socket's receive buffer in bytes: the backlog of
	// queued packet messages waiting to be read.
	ReadBuffer int
	// Batch is the most packet messages taken from the socket per read.
	Batch int
	// Spin is how long the reader keeps polling the socket, yielding the
	// CPU between polls, after a read before it sleeps in the kernel.
	// The next packet of a dialog (the reply to the command just let
	// through) usually comes within tens of microseconds; found by a
	// poll, it does not wait for the reader's thread to be woken and
	// scheduled, which on a busy or idle machine costs more than the
	// handling. It costs at most Spin of CPU per read, given up to any
	// other runnable thread. Zero sleeps at once.
	Spin time.Duration
}

// Handler decides one packet. A non-nil payload replaces the packet (it is
// copied before Handler is called again).
type Handler func(p Packet) (v Verdict, payload []byte)

// ErrorFunc hears about errors Serve recovers from: overruns (ErrOverrun),
// verdicts the kernel refused, messages that do not parse.
type ErrorFunc func(error)

// Errors of a queue.
var (
	// ErrBusy reports a queue another socket is bound to.
	ErrBusy = errors.New("nfq: queue is bound by another program")
	// ErrOverrun reports packet messages the kernel could not deliver
	// because the socket's receive buffer was full: those packets were
	// dropped (or, with FailOpen, accepted unexamined).
	ErrOverrun = errors.New("nfq: receive buffer overrun, queued packets lost")
	// ErrClosed reports a queue used after Close.
	ErrClosed = errors.New("nfq: queue closed")
)

// Queue is one NFQUEUE bound to a netlink socket of its own.
//
// It is read by one goroutine locked to its OS thread, blocking in the
// kernel, and its verdicts are written from that thread. go-nfqueue (used by
// ftpalg before) waits in Go's network poller instead, which puts a
// scheduler hand-off, and often a second thread's wake-up, between the
// packet's arrival and its verdict; for a control connection, where every
// segment waits on the verdict, that was most of the gateway's added
// latency.
type Queue struct {
	fd   int
	num  uint16
	seq  uint32
	spin spinPolicy // owned by Serve

	// Reading state, owned by Serve.
	bufs [][]byte
	iovs []unix.Iovec
	msgs []mmsghdr
	out  []byte

	serving sync.Mutex // held by Serve
	closed  atomic.Bool
}

// mmsghdr is struct mmsghdr of recvmmsg(2); Go lays it out as C does.
type mmsghdr struct {
	hdr unix.Msghdr
	len uint32
}

// Open binds queue cfg.Num in the network namespace of the calling thread.
func Open(cfg Config) (*Queue, error) {
	if cfg.MaxQueueLen == 0 {
		cfg.MaxQueueLen = DefaultMaxQueueLen
	}
	if cfg.CopyRange == 0 {
		cfg.CopyRange = DefaultCopyRange
	}
	if cfg.ReadBuffer == 0 {
		cfg.ReadBuffer = DefaultReadBuffer
	}
	if cfg.Batch <= 0 {
		cfg.Batch = DefaultBatch
	}
	// Reads time out after pollInterval, so Serve notices its context.
	fd, err := nlsock.Open(pollInterval)
	if err != nil {
		return nil, fmt.Errorf("opening netfilter netlink socket: %w", err)
	}
	q := &Queue{fd: fd, num: cfg.Num, spin: newSpinPolicy(cfg.Spin)}
	if err := q.setup(cfg); err != nil {
		unix.Close(fd)
		return nil, err
	}
	q.bufs = make([][]byte, cfg.Batch)
	q.iovs = make([]unix.Iovec, cfg.Batch)
	q.msgs = make([]mmsghdr, cfg.Batch)
	for i := range q.bufs {
		q.bufs[i] = make([]byte, readBufSize)
		q.iovs[i].Base = &q.bufs[i][0]
		q.iovs[i].SetLen(readBufSize)
		q.msgs[i].hdr.Iov = &q.iovs[i]
		q.msgs[i].hdr.SetIovlen(1)
	}
	q.out = make([]byte, 0, 64<<10)
	return q, nil
}

func (q *Queue) setup(cfg Config) error {
	// FORCE passes net.core.rmem_max with CAP_NET_ADMIN, which a
	// process binding a queue has.
	if err := unix.SetsockoptInt(q.fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, cfg.ReadBuffer); err != nil {
		if err := unix.SetsockoptInt(q.fd, unix.SOL_SOCKET, unix.SO_RCVBUF, cfg.ReadBuffer); err != nil {
			return fmt.Errorf("setting the receive buffer of queue %d: %w", cfg.Num, err)
		}
	}
	flags := uint32(0)
	if cfg.FailOpen {
		flags |= flagFailOpen
	}
	if err := q.request(appendCommand(nil, q.nextSeq(), q.num, cmdBind)); err != nil {
		// The kernel refuses a queue another socket holds with
		// EPERM, which is also its answer without CAP_NET_ADMIN.
		if errors.Is(err, unix.EPERM) && hasNetAdmin() {
			return fmt.Errorf("binding queue %d: %w", cfg.Num, ErrBusy)
		}
		return fmt.Errorf("binding queue %d: %w", cfg.Num, err)
	}
	if err := q.request(appendParams(nil, q.nextSeq(), q.num, cfg.CopyRange, cfg.MaxQueueLen, flags)); err != nil {
		return fmt.Errorf("configuring queue %d: %w", cfg.Num, err)
	}
	return nil
}

// hasNetAdmin reports whether the calling thread has CAP_NET_ADMIN in its
// effective set.
func hasNetAdmin() bool {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return false
	}
	return data[unix.CAP_NET_ADMIN/32].Effective&(1<<(unix.CAP_NET_ADMIN%32)) != 0
}

func (q *Queue) nextSeq() uint32 { q.seq++; return q.seq }

// request sends one message asking for an acknowledgement and waits for
// it. Packets queued meanwhile (between the bind and the copy mode taking
// effect) are dropped unexamined: TCP sends them again.
func (q *Queue) request(msg []byte) error {
	want := ne.Uint32(msg[8:])
	if _, err := unix.Write(q.fd, msg); err != nil {
		return err
	}
	buf := make([]byte, readBufSize)
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		n, _, err := unix.Recvfrom(q.fd, buf, 0)
		if err != nil {
			if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
				continue
			}
			return err
		}
		for b := buf[:n]; len(b) > 0; {
			typ, _, _, body, rest, err := nextMessage(b)
			if err != nil {
				return err
			}
			b = rest
			switch typ {
			case nlmsgError:
				errno, seq, err := parseError(body)
				if err != nil {
					return err
				}
				if seq != want {
					continue
				}
				if errno != 0 {
					return syscall.Errno(-errno)
				}
				return nil
			case subsysQueue<<8 | msgPacket:
				if p, err := parsePacket(typ, body); p.ID != 0 || err == nil {
					if _, err := unix.Write(q.fd, appendVerdict(nil, q.num, p.ID, Drop, nil)); err != nil {
						return fmt.Errorf("dropping packet %d queued during setup: %w", p.ID, err)
					}
				}
			}
		}
	}
	return fmt.Errorf("no answer from the kernel to request %d: %w", want, unix.ETIMEDOUT)
}

// Serve reads packets and sends handle's verdicts until ctx ends (noticed
// within pollInterval) or the socket fails. It returns nil when ctx ended.
// Packets are handled in the order the kernel queued them; the verdicts of
// the packets one read returned are written together, after the last of
// them is handled.
func (q *Queue) Serve(ctx context.Context, handle Handler, onErr ErrorFunc) error {
	if !q.serving.TryLock() {
		return errors.New("nfq: Serve called twice")
	}
	defer q.serving.Unlock()
	if q.closed.Load() {
		return ErrClosed
	}
	if onErr == nil {
		onErr = func(error) {}
	}
	// The reader blocks in recvmmsg on its own thread: the kernel wakes
	// it directly when a packet is queued.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	for ctx.Err() == nil {
		n, err := q.read()
		switch {
		case err == nil:
		case errors.Is(err, unix.EAGAIN), errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.ENOBUFS):
			onErr(fmt.Errorf("queue %d: %w", q.num, ErrOverrun))
			continue
		default:
			return fmt.Errorf("reading queue %d: %w", q.num, err)
		}
		q.out = q.out[:0]
		for i := range n {
			q.handleDatagram(q.bufs[i][:q.msgs[i].len], handle, onErr)
		}
		if len(q.out) == 0 {
			continue
		}
		if _, err := unix.Write(q.fd, q.out); err != nil {
			// The kernel takes verdicts synchronously: an error
			// here means none of this batch was applied.
			onErr(fmt.Errorf("writing verdicts to queue %d: %w", q.num, err))
		}
	}
	return nil
}

// read returns once at least one datagram has arrived, taking every other
// one already waiting, up to the batch size. It polls first when the spin
// policy says so (see spinPolicy), then blocks (up to pollInterval, when it
// reports EAGAIN).
func (q *Queue) read() (int, error) {
	spin, ok := q.spin.poll()
	if !ok {
		return q.recv(unix.MSG_WAITFORONE)
	}
	n, err := q.recv(unix.MSG_DONTWAIT)
	if err != unix.EAGAIN {
		return n, err // waiting already: the poll neither helped nor cost
	}
	for deadline := time.Now().Add(spin); ; {
		// Let a thread this CPU may be needed for (the FTP server about
		// to answer, say) run first; if one did, stop polling.
		before := time.Now()
		unix.RawSyscall(unix.SYS_SCHED_YIELD, 0, 0, 0)
		after := time.Now()
		n, err := q.recv(unix.MSG_DONTWAIT)
		if err != unix.EAGAIN {
			if err == nil {
				q.spin.caught()
			}
			return n, err
		}
		if !q.spin.yielded(after.Sub(before)) || after.After(deadline) {
			break
		}
	}
	q.spin.missed()
	return q.recv(unix.MSG_WAITFORONE)
}

func (q *Queue) recv(flags int) (int, error) {
	r, _, errno := unix.Syscall6(unix.SYS_RECVMMSG, uintptr(q.fd), uintptr(unsafe.Pointer(&q.msgs[0])),
		uintptr(len(q.msgs)), uintptr(flags), 0, 0)
	runtime.KeepAlive(q.msgs)
	if errno != 0 {
		return 0, errno
	}
	return int(r), nil
}

func (q *Queue) handleDatagram(b []byte, handle Handler, onErr ErrorFunc) {
	for len(b) > 0 {
		typ, _, _, body, rest, err := nextMessage(b)
		if err != nil {
			onErr(fmt.Errorf("queue %d: %w", q.num, err))
			return
		}
		b = rest
		switch typ {
		case nlmsgError:
			if errno, _, err := parseError(body); err != nil {
				onErr(fmt.Errorf("queue %d: %w", q.num, err))
			} else if errno != 0 {
				onErr(fmt.Errorf("queue %d: the kernel refused a verdict: %w", q.num, syscall.Errno(-errno)))
			}
			continue
		case nlmsgDone:
			continue
		}
		p, err := parsePacket(typ, body)
		if err != nil {
			onErr(fmt.Errorf("queue %d: %w", q.num, err))
			if p.ID != 0 {
				// Fail closed: a packet that could not be
				// examined is not passed.
				q.out = appendVerdict(q.out, q.num, p.ID, Drop, nil)
			}
			continue
		}
		v, payload := handle(p)
		q.out = appendVerdict(q.out, q.num, p.ID, v, payload)
	}
}

// Close unbinds the queue and closes its socket. With Serve running, it
// waits for Serve to notice its context has ended: cancel that first.
// Packets still waiting for a verdict are dropped by the kernel, or pass
// when the NFQUEUE rule has --queue-bypass.
func (q *Queue) Close() error {
	if q.closed.Swap(true) {
		return nil
	}
	q.serving.Lock() // Serve has returned
	defer q.serving.Unlock()
	var err error
	if _, werr := unix.Write(q.fd, appendCommand(nil, q.nextSeq(), q.num, cmdUnbind)); werr != nil {
		err = fmt.Errorf("unbinding queue %d: %w", q.num, werr)
	}
	if cerr := unix.Close(q.fd); cerr != nil {
		err = errors.Join(err, fmt.Errorf("closing queue %d: %w", q.num, cerr))
	}
	return err
}
