package daemon

import (
	"context"
	"errors"
	"os"
	"os/signal"
	"syscall"
)

// ErrHandover is the cancellation cause of Run's context that means "hand
// over to a successor": stop reading the queue and exit, leaving the queue
// rules, chains, nftables tables and open pinholes in place. While no
// ftpalg is bound, control packets wait in the kernel's sense of waiting
// (the queue rule drops them without --queue-bypass and TCP retransmits
// them), so a successor that adopts what it finds continues every
// connection. Any other cancellation stops for good: everything is removed.
var ErrHandover = errors.New("handing over to a successor")

// ErrStopped is the cancellation cause for a stop for good.
var ErrStopped = errors.New("stopped for good")

// SignalContext returns a context that SIGTERM cancels with ErrHandover
// (systemctl restart, an upgrade: the successor loses nothing) and SIGINT
// with ErrStopped (systemctl stop: nothing is left). The unit file maps
// systemd's stop and restart to these signals.
func SignalContext(parent context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancelCause(parent)
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		defer signal.Stop(sigs)
		select {
		case s := <-sigs:
			if s == syscall.SIGTERM {
				cancel(ErrHandover)
			} else {
				cancel(ErrStopped)
			}
		case <-ctx.Done():
		}
	}()
	return ctx, func() { cancel(context.Canceled) }
}
