package daemon

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/florianl/go-nfqueue/v2"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/ftpalg/ftpalg/nfq"
)

// packetQueue is a bound NFQUEUE whose packets go to a handler.
type packetQueue interface {
	// Serve hands packets to the handler until ctx ends or the queue
	// fails; it returns nil when ctx ended.
	Serve(ctx context.Context) error
	// Close unbinds the queue; with Serve running, cancel its context
	// first.
	Close() error
}

// openQueue binds queue num with the configured reader. Packets may reach
// handle from the moment it returns, even before Serve runs.
func openQueue(ctx context.Context, cfg Config, num uint16, handle nfq.Handler, onErr nfq.ErrorFunc) (packetQueue, error) {
	cfg.QueueNum = num
	if cfg.QueueReader == GoNFQueue {
		return openGoNFQueue(ctx, cfg, handle, onErr)
	}
	q, err := nfq.Open(nfq.Config{Num: num, FailOpen: cfg.FailOpen, Spin: cfg.QueueSpin})
	if err != nil {
		return nil, err
	}
	return &directQueue{q: q, handle: handle, onErr: onErr}, nil
}

// directQueue is the default reader, package nfq.
type directQueue struct {
	q      *nfq.Queue
	handle nfq.Handler
	onErr  nfq.ErrorFunc
}

func (d *directQueue) Serve(ctx context.Context) error { return d.q.Serve(ctx, d.handle, d.onErr) }
func (d *directQueue) Close() error                    { return d.q.Close() }

// goNFQueue reads the queue with github.com/florianl/go-nfqueue, which
// waits in Go's network poller: portable and well known, but each packet
// waits 30-60 µs longer for its verdict than with package nfq on an idle
// machine (README, Performance). Kept as --queue-reader=go-nfqueue.
type goNFQueue struct {
	nf *nfqueue.Nfqueue
}

func openGoNFQueue(ctx context.Context, cfg Config, handle nfq.Handler, onErr nfq.ErrorFunc) (*goNFQueue, error) {
	flags := uint32(0)
	if cfg.FailOpen {
		flags |= nfqueue.NfQaCfgFlagFailOpen
	}
	nf, err := nfqueue.Open(&nfqueue.Config{
		NfQueue:      cfg.QueueNum,
		MaxPacketLen: nfq.DefaultCopyRange,
		MaxQueueLen:  nfq.DefaultMaxQueueLen,
		Copymode:     nfqueue.NfQnlCopyPacket,
		AfFamily:     unix.AF_INET, // any: kernels since 3.8 ignore it
		Flags:        flags,
		WriteTimeout: time.Second,
	})
	if err != nil {
		return nil, err
	}
	hook := func(a nfqueue.Attribute) int {
		if a.PacketID == nil {
			return 0
		}
		id := *a.PacketID
		var v nfq.Verdict
		var out []byte
		if a.Payload == nil {
			onErr(fmt.Errorf("queue %d: packet %d without payload: %w", cfg.QueueNum, id, nfq.ErrMalformed))
		} else {
			p := nfq.Packet{ID: id, Payload: *a.Payload}
			if a.Hook != nil {
				p.Hook = *a.Hook
			}
			v, out = handle(p)
		}
		var verr error
		switch {
		case v == nfq.Accept && out != nil:
			verr = nf.SetVerdictWithOption(id, nfqueue.NfAccept, nfqueue.WithAlteredPacket(out))
		case v == nfq.Accept:
			verr = nf.SetVerdict(id, nfqueue.NfAccept)
		default:
			verr = nf.SetVerdict(id, nfqueue.NfDrop)
		}
		if verr != nil && ctx.Err() == nil {
			onErr(fmt.Errorf("setting the verdict of packet %d: %w", id, verr))
		}
		return 0
	}
	errFn := func(e error) int {
		if ctx.Err() != nil {
			return 1
		}
		var op *netlink.OpError
		if errors.As(e, &op) && errors.Is(op.Err, unix.ENOBUFS) {
			onErr(fmt.Errorf("queue %d: %w", cfg.QueueNum, nfq.ErrOverrun))
			return 0
		}
		onErr(fmt.Errorf("receiving from queue %d: %w", cfg.QueueNum, e))
		return 0
	}
	if err := nf.RegisterWithErrorFunc(ctx, hook, errFn); err != nil {
		nf.Close()
		if errors.Is(err, unix.EPERM) {
			err = fmt.Errorf("%w: %w", nfq.ErrBusy, err)
		}
		return nil, err
	}
	return &goNFQueue{nf: nf}, nil
}

func (g *goNFQueue) Serve(ctx context.Context) error {
	<-ctx.Done()
	return nil
}

func (g *goNFQueue) Close() error { return g.nf.Close() }
