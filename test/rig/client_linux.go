package rig

import (
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// DefaultJobTimeout bounds a client job whose context has no deadline.
const DefaultJobTimeout = 2 * time.Minute

// clientIdle bounds how long a client waits on a stalled connection, so a
// data connection that a firewall drops fails in seconds.
const clientIdle = 15 * time.Second

//go:embed ftplib_client.py
var ftplibScript []byte

// RunClient runs job with client c in the topology's client node (the
// client namespace, or the router where the client runs on the firewall
// host) against the address the client dials (ServerEndpoint), forcing
// job.Mode. It returns an
// error wrapping ErrTransfer when the client fails or a transfer's final
// reply is not 2xx, and ErrModeNotUsed when the transcript shows another
// data-connection command than the one forced (a fallback). The Result
// is filled in either case; Bytes counts the local files after the job.
func (r *Rig) RunClient(ctx context.Context, c ClientKind, job Job) (Result, error) {
	if err := job.validate(); err != nil {
		return Result{}, err
	}
	if ok, why := c.Supports(job.Mode, r.topo.Family()); !ok {
		return Result{}, fmt.Errorf("%v %v: %w: %s", c, job.Mode, ErrModeNotUsed, why)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultJobTimeout)
		defer cancel()
	}
	var (
		res Result
		tr  transcript
		err error
	)
	start := time.Now()
	switch c {
	case Curl:
		res, err = r.curlJob(ctx, job)
		tr = parseCurl(res.Stderr)
	case Lftp:
		res, err = r.runLftp(ctx, lftpScript(r.ServerEndpoint(), job))
		tr = parseArrows(res.Stderr, false)
	case Tnftp:
		res, err = r.runScripted(ctx, "tnftp",
			[]string{"-n", "-i", "-v", "-d", "-q", strconv.Itoa(int(clientIdle.Seconds()))},
			tnftpScript(r.ServerEndpoint(), job))
		tr = parseArrows(res.Stderr, true)
	case Ftplib:
		res, err = r.ftplibJob(ctx, job)
		tr = parseFtplib(res.Stderr)
	case GoFTP:
		res, tr, err = r.goFTPJob(ctx, job)
	default:
		return Result{}, fmt.Errorf("client %v: %w", c, ErrConfig)
	}
	res.Duration = time.Since(start)
	res.Commands, res.Replies = tr.commands(), tr.replies()
	res.Bytes = localBytes(job)
	if err != nil {
		return res, fmt.Errorf("%v %v %v: %w", c, job.Mode, job.Op, err)
	}
	if err := tr.transfersOK(); err != nil {
		return res, fmt.Errorf("%v %v %v: %w", c, job.Mode, job.Op, err)
	}
	// tnftp skips a transfer whose data connection it cannot set up
	// and still exits 0.
	if n := tr.transfers(); n < len(job.Remote) {
		return res, fmt.Errorf("%v %v %v: %w: sent %d of %d transfer commands: %s",
			c, job.Mode, job.Op, ErrTransfer, n, len(job.Remote), lastLines(res.Stderr, 3))
	}
	if err := checkMode(c, res, job.Mode); err != nil {
		return res, err
	}
	return res, nil
}

// localBytes sums the sizes of the job's local files.
func localBytes(job Job) int64 {
	size := func(p string) int64 {
		fi, err := os.Stat(p)
		if err != nil {
			return 0
		}
		return fi.Size()
	}
	if job.Op != GetMany {
		return size(job.Local)
	}
	var n int64
	for _, p := range job.Remote {
		n += size(filepath.Join(job.Local, filepath.Base(p)))
	}
	return n
}

// runExternal runs cmd, a client in the client namespace, and fills
// Result.Stderr with its combined output and ExitCode.
func runExternal(cmd *exec.Cmd) (Result, error) {
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.WaitDelay = time.Second
	err := cmd.Run()
	res := Result{Stderr: out.String()}
	var exitErr *exec.ExitError
	switch {
	case errors.As(err, &exitErr):
		res.ExitCode = exitErr.ExitCode()
		return res, fmt.Errorf("%w: exit %d: %s", ErrTransfer, res.ExitCode, lastLines(res.Stderr, 3))
	case err != nil:
		return res, fmt.Errorf("running %s: %w", cmd, err)
	}
	return res, nil
}

// lastLines returns the last n non-empty lines of s, joined by " | ".
func lastLines(s string, n int) string {
	var lines []string
	for l := range strings.Lines(s) {
		if l = strings.TrimSpace(l); l != "" {
			lines = append(lines, l)
		}
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

func (r *Rig) curlJob(ctx context.Context, job Job) (Result, error) {
	base := "ftp://" + r.ServerEndpoint().String() + "/"
	args := []string{"--user", job.User + ":" + job.Password}
	switch job.Op {
	case Get:
		args = append(args, "-o", job.Local, base+job.Remote[0])
	case Put:
		args = append(args, "-T", job.Local, base+job.Remote[0])
	case List:
		args = append(args, "-o", job.Local, base+strings.TrimSuffix(job.Remote[0], "/")+"/")
	case GetMany:
		// One curl invocation reuses its control connection for every URL.
		for _, p := range job.Remote {
			args = append(args, "-o", filepath.Join(job.Local, filepath.Base(p)), base+p)
		}
	}
	return r.curlCtx(ctx, job.Mode, "", args...)
}

// lftpScript returns an lftp script for job. Settings that would hide an
// ALG's mistake are turned off: ftp:fix-pasv-address (replaces an
// unreachable 227 address with the control connection's),
// ftp:auto-passive-mode (switches mode after a failure) and retries.
func lftpScript(server netip.AddrPort, job Job) string {
	onOff := func(b bool) string {
		if b {
			return "on"
		}
		return "off"
	}
	lines := []string{
		"set cmd:fail-exit yes",
		"set net:max-retries 1",
		"set net:persist-retries 0",
		"set net:timeout " + strconv.Itoa(int(clientIdle.Seconds())),
		"set net:reconnect-interval-base 1",
		"set ftp:ssl-allow no",
		"set cache:enable no",
		"set xfer:clobber on",
		"set ftp:auto-passive-mode no",
		"set ftp:fix-pasv-address no",
		"set ftp:passive-mode " + onOff(!job.Mode.Active()),
		"set ftp:prefer-epsv " + onOff(job.Mode == EPSV),
		fmt.Sprintf("open -u %q,%q ftp://%s", job.User, job.Password, server),
	}
	switch job.Op {
	case Get:
		lines = append(lines, fmt.Sprintf("get %q -o %q", job.Remote[0], job.Local))
	case Put:
		lines = append(lines, fmt.Sprintf("put %q -o %q", job.Local, job.Remote[0]))
	case List:
		lines = append(lines, fmt.Sprintf("ls %q > %q", job.Remote[0], job.Local))
	case GetMany:
		for _, p := range job.Remote {
			lines = append(lines, fmt.Sprintf("get %q -o %q", p, filepath.Join(job.Local, filepath.Base(p))))
		}
	}
	return strings.Join(append(lines, "bye"), "\n") + "\n"
}

// tnftpScript returns tnftp's standard input for job: passive on or off,
// and the extended commands (epsv4/epsv6) on or off.
func tnftpScript(server netip.AddrPort, job Job) string {
	onOff := func(b bool) string {
		if b {
			return "on"
		}
		return "off"
	}
	extended := job.Mode == EPRT || job.Mode == EPSV
	lines := []string{
		"open " + server.Addr().String() + " " + strconv.Itoa(int(server.Port())),
		"user " + job.User + " " + job.Password,
		"binary",
		"passive " + onOff(!job.Mode.Active()),
		// tnftp 20210827 sends EPRT on IPv4 only when epsv6 is on as
		// well (its IPv4 case falls through to the IPv6 check).
		"epsv4 " + onOff(extended),
		"epsv6 " + onOff(extended),
	}
	switch job.Op {
	case Get:
		lines = append(lines, "get "+job.Remote[0]+" "+job.Local)
	case Put:
		lines = append(lines, "put "+job.Local+" "+job.Remote[0])
	case List:
		lines = append(lines, "ls "+job.Remote[0]+" "+job.Local)
	case GetMany:
		for _, p := range job.Remote {
			lines = append(lines, "get "+p+" "+filepath.Join(job.Local, filepath.Base(p)))
		}
	}
	return strings.Join(append(lines, "bye"), "\n") + "\n"
}

// runScripted runs name in the client node with script on its standard
// input.
func (r *Rig) runScripted(ctx context.Context, name string, args []string, script string) (Result, error) {
	cmd := r.ExecContext(ctx, r.topo.ClientNode(), name, args...)
	cmd.Stdin = strings.NewReader(script)
	return runExternal(cmd)
}

// runLftp runs an lftp script (lftp reads scripts from files only).
func (r *Rig) runLftp(ctx context.Context, script string) (Result, error) {
	f, err := os.CreateTemp(r.dir, "lftp-*.script")
	if err != nil {
		return Result{}, fmt.Errorf("writing lftp script: %w", err)
	}
	defer os.Remove(f.Name())
	if _, err := f.WriteString(script); err != nil {
		f.Close()
		return Result{}, fmt.Errorf("writing lftp script: %w", err)
	}
	if err := f.Close(); err != nil {
		return Result{}, fmt.Errorf("writing lftp script: %w", err)
	}
	return runExternal(r.ExecContext(ctx, r.topo.ClientNode(), "lftp", "-d", "-f", f.Name()))
}

func (r *Rig) ftplibJob(ctx context.Context, job Job) (Result, error) {
	script := filepath.Join(r.dir, "ftplib_client.py")
	if err := os.WriteFile(script, ftplibScript, 0o644); err != nil {
		return Result{}, fmt.Errorf("writing ftplib client: %w", err)
	}
	arg, err := json.Marshal(map[string]any{
		"host": r.ServerAddr().String(), "port": r.ControlPort(),
		"user": job.User, "password": job.Password,
		"mode": job.Mode.String(), "op": job.Op.String(),
		"remote": job.Remote, "local": job.Local,
	})
	if err != nil {
		return Result{}, fmt.Errorf("encoding ftplib job: %w", err)
	}
	// The system's python3, not a user's shim earlier in PATH.
	python := "/usr/bin/python3"
	if _, err := os.Stat(python); err != nil {
		python = "python3"
	}
	return runExternal(r.ExecContext(ctx, r.topo.ClientNode(), python, "-u", script, string(arg)))
}

// dialer returns a dial function for jlaffaye/ftp that opens every
// connection in the client namespace with a deadline, recording the
// first (the control connection) into tr.
func (r *Rig) dialer(ctx context.Context, tr *transcript) func(network, address string) (net.Conn, error) {
	first := true
	return func(network, address string) (net.Conn, error) {
		c, err := r.Dial(ctx, r.topo.ClientNode(), network, address)
		if err != nil {
			return nil, err
		}
		deadline, _ := ctx.Deadline()
		if err := c.SetDeadline(deadline); err != nil {
			c.Close()
			return nil, fmt.Errorf("setting deadline on %s: %w", address, err)
		}
		if first {
			first = false
			return &recordingConn{Conn: c, tr: tr}, nil
		}
		return c, nil
	}
}
