package rig

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"time"
)

// stopGrace is how long Stop waits after SIGTERM before SIGKILL.
const stopGrace = 3 * time.Second

// Proc is a background process started by the rig in one of its
// namespaces. It runs in its own process group, which Stop signals, so
// children it forks (vsftpd's sessions) stop with it.
//
// Its output goes to a file in the rig's directory, written by the
// process itself: once a line is written it is in Output. Through a pipe,
// the copy to the test would run in a goroutine that on a loaded machine
// may lag behind what the process did next (ftpalg logs a rewrite before
// it releases the packet, and the transfer could end before the test had
// read the line).
type Proc struct {
	name string
	cmd  *exec.Cmd
	out  *os.File // the output file, opened O_APPEND; nil when the caller took stdout and stderr
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
	// Refuse early after Close; track below catches a Close that races
	// with Start and stops the process it would otherwise miss.
	r.mu.Lock()
	closed := r.closed
	r.mu.Unlock()
	if closed {
		return nil, fmt.Errorf("starting %s: %w", cmd, ErrClosed)
	}
	p, err := StartProc(r.dir, cmd)
	if err != nil {
		r.mu.Lock()
		closed := r.closed // Close removed the directory meanwhile
		r.mu.Unlock()
		if closed {
			err = fmt.Errorf("%w (%w)", ErrClosed, err)
		}
		return nil, err
	}
	if err := r.track(p); err != nil {
		return nil, errors.Join(fmt.Errorf("starting %s: %w", p.name, err), p.Stop())
	}
	return p, nil
}

// StartProc starts cmd in the background in its own process group, with
// its output (unless the caller set Stdout or Stderr) in a file in dir.
// The caller stops it. For rigs of their own (test/ha) that keep their
// processes the way Rig does.
func StartProc(dir string, cmd *exec.Cmd) (*Proc, error) {
	p := &Proc{name: cmd.String(), cmd: cmd, done: make(chan struct{})}
	if cmd.Stdout == nil || cmd.Stderr == nil {
		f, err := os.CreateTemp(dir, "proc-*.log")
		if err != nil {
			return nil, fmt.Errorf("starting %s: output file: %w", p.name, err)
		}
		// O_APPEND, so that stdout and stderr, and forked children,
		// never overwrite each other.
		if err := f.Close(); err != nil {
			return nil, fmt.Errorf("starting %s: output file: %w", p.name, err)
		}
		if p.out, err = os.OpenFile(f.Name(), os.O_WRONLY|os.O_APPEND, 0); err != nil {
			return nil, fmt.Errorf("starting %s: output file: %w", p.name, err)
		}
		if cmd.Stdout == nil {
			cmd.Stdout = p.out
		}
		if cmd.Stderr == nil {
			cmd.Stderr = p.out
		}
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
	if err := cmd.Start(); err != nil {
		if p.out != nil {
			p.out.Close()
		}
		return nil, fmt.Errorf("starting %s: %w", p.name, err)
	}
	if p.out != nil {
		// The child has its own copy of the descriptor.
		p.out.Close()
	}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
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

// Output returns everything the process (and its children) wrote to
// stdout and stderr so far, unless the caller of StartCmd took both.
func (p *Proc) Output() string {
	if p.out == nil {
		return ""
	}
	b, err := os.ReadFile(p.out.Name())
	if err != nil {
		return fmt.Sprintf("(output of %s: %v)", p.name, err)
	}
	return string(b)
}

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

// Signal sends sig to the process alone (not its group): keepalived's
// SIGTERM, which it handles by stopping its own children.
func (p *Proc) Signal(sig syscall.Signal) error {
	select {
	case <-p.done:
		return nil
	default:
	}
	if err := p.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("signalling %s: %w", p.name, err)
	}
	return nil
}

// Kill SIGKILLs the process group at once (a crash or power cut) and waits
// for the process to exit.
func (p *Proc) Kill() error {
	select {
	case <-p.done:
		return nil
	default:
	}
	if err := syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("killing %s: %w", p.name, err)
	}
	select {
	case <-p.done:
		return nil
	case <-time.After(stopGrace):
		return fmt.Errorf("killing %s (pid %d): still running", p.name, p.cmd.Process.Pid)
	}
}

// Name is the command line the process was started with.
func (p *Proc) Name() string { return p.name }

// KillNamespace SIGKILLs every process inside namespace ns; for rigs of
// their own (test/ha), whose namespaces hold only their processes.
func KillNamespace(ns string) error { return killNamespace(ns) }
