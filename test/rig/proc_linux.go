package rig

import (
	"errors"
	"fmt"
	"os/exec"
	"sync"
	"syscall"
	"time"
)

// stopGrace is how long Stop waits after SIGTERM before SIGKILL.
const stopGrace = 3 * time.Second

// outputCap bounds the output a Proc keeps (the tail), so a chatty daemon
// cannot grow a test's memory without limit.
const outputCap = 256 << 10

// Proc is a background process started by the rig in one of its
// namespaces. It runs in its own process group, which Stop signals, so
// children it forks (vsftpd's sessions) stop with it.
type Proc struct {
	name string
	cmd  *exec.Cmd
	out  *tailBuffer
	done chan struct{}
	err  error // Wait's result, valid after done is closed
}

// Start runs name in node's namespace in the background, capturing its
// combined output. The rig stops it at Close at the latest.
func (r *Rig) Start(n Node, name string, args ...string) (*Proc, error) {
	return r.StartCmd(r.Exec(n, name, args...))
}

// StartCmd starts cmd (normally from Exec, adjusted by the caller) in the
// background and tracks it like Start. Output goes to the Proc unless the
// caller set Stdout or Stderr.
func (r *Rig) StartCmd(cmd *exec.Cmd) (*Proc, error) {
	p := &Proc{name: cmd.String(), cmd: cmd, out: &tailBuffer{max: outputCap}, done: make(chan struct{})}
	if cmd.Stdout == nil {
		cmd.Stdout = p.out
	}
	if cmd.Stderr == nil {
		cmd.Stderr = p.out
	}
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	// A child that escapes the process group (setsid) may hold the output
	// pipe open forever; do not let Wait block on it once the process
	// itself has exited. Close kills such children by namespace.
	if cmd.WaitDelay == 0 {
		cmd.WaitDelay = time.Second
	}
	// Refuse early after Close; track below catches a Close that races
	// with Start and stops the process it would otherwise miss.
	r.mu.Lock()
	closed := r.closed
	r.mu.Unlock()
	if closed {
		return nil, fmt.Errorf("starting %s: %w", p.name, ErrClosed)
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", p.name, err)
	}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	if err := r.track(p); err != nil {
		return nil, errors.Join(fmt.Errorf("starting %s: %w", p.name, err), p.Stop())
	}
	return p, nil
}

// Pid returns the process ID (also its process group ID).
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Err returns the process's exit error once Done is closed, else nil.
func (p *Proc) Err() error {
	select {
	case <-p.done:
		return p.err
	default:
		return nil
	}
}

// Output returns the process's captured output (the last 256 KiB).
func (p *Proc) Output() string { return p.out.String() }

// Stop sends SIGTERM to the process group, then SIGKILL after a grace
// period, and waits for the process to exit. Exits caused by these
// signals are not errors. It is idempotent.
func (p *Proc) Stop() error {
	pgid := p.cmd.Process.Pid
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		select {
		case <-p.done:
			return nil
		default:
		}
		// The leader has not been reaped, so pgid still names our group.
		if err := syscall.Kill(-pgid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
			return fmt.Errorf("signalling %s (pgid %d): %w", p.name, pgid, err)
		}
		select {
		case <-p.done:
			return nil
		case <-time.After(stopGrace):
		}
	}
	return fmt.Errorf("stopping %s (pid %d): still running after SIGKILL", p.name, pgid)
}

func killPID(pid int) error { return syscall.Kill(pid, syscall.SIGKILL) }

// tailBuffer is an io.Writer keeping the last max bytes written, safe for
// concurrent Write (stdout and stderr) and String.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	buf []byte
}

func (t *tailBuffer) Write(b []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, b...)
	if over := len(t.buf) - t.max; over > 0 {
		t.buf = append(t.buf[:0], t.buf[over:]...)
	}
	return len(b), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.buf)
}
