package rig

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"time"
)

const (
	// CurlMaxTime bounds a whole curl transfer (curl --max-time), so a
	// transfer that an ALG or firewall breaks fails instead of hanging.
	CurlMaxTime = 20 * time.Second
	// curlConnectTimeout bounds each connection curl opens, including the
	// passive data connection, so a dropped SYN fails in seconds.
	curlConnectTimeout = 5 * time.Second
)

// Result describes one curl transfer.
type Result struct {
	// Bytes is what curl reports as transferred (size_download or
	// size_upload).
	Bytes int64
	// Duration is the wall time of the curl process.
	Duration time.Duration
	// ExitCode is curl's exit status (0 on success, 28 on timeout, ...).
	ExitCode int
	// Stderr is curl's verbose output: the control-channel transcript
	// and its error message.
	Stderr string
	// Commands are the FTP commands curl sent, in order, from Stderr.
	Commands []string
	// Replies are the server replies curl received, in order.
	Replies []string
}

// Sent reports whether curl sent a command with this verb (e.g. "EPRT").
func (res Result) Sent(verb string) bool {
	return slices.ContainsFunc(res.Commands, func(c string) bool {
		v, _, _ := strings.Cut(c, " ")
		return strings.EqualFold(v, verb)
	})
}

// CurlGet downloads url into outPath with curl in the client namespace,
// forcing data-connection mode m. It returns an error wrapping
// ErrTransfer when curl fails and ErrModeNotUsed when curl succeeded only
// by falling back to another mode; the Result is filled in either case.
func (r *Rig) CurlGet(m Mode, url, outPath string) (Result, error) {
	return r.curl(m, "%{size_download}", "-o", outPath, url)
}

// CurlPut uploads inPath to url (curl -T) from the client namespace; see
// CurlGet.
func (r *Rig) CurlPut(m Mode, inPath, url string) (Result, error) {
	return r.curl(m, "%{size_upload}", "-T", inPath, url)
}

func (r *Rig) curl(m Mode, writeOut string, args ...string) (Result, error) {
	// The context is a backstop only; --max-time ends curl first.
	ctx, cancel := context.WithTimeout(context.Background(), CurlMaxTime+10*time.Second)
	defer cancel()
	return r.curlCtx(ctx, m, writeOut, args...)
}

// curlCtx runs curl with args in the client namespace until ctx ends.
// --max-time bounds each transfer of the invocation.
func (r *Rig) curlCtx(ctx context.Context, m Mode, writeOut string, args ...string) (Result, error) {
	modeArgs, err := curlArgs(m)
	if err != nil {
		return Result{}, err
	}
	full := append([]string{
		"-sS", "-v", "--trace-time",
		"--max-time", strconv.FormatFloat(CurlMaxTime.Seconds(), 'f', -1, 64),
		"--connect-timeout", strconv.FormatFloat(curlConnectTimeout.Seconds(), 'f', -1, 64),
		"-w", writeOut,
	}, modeArgs...)
	full = append(full, args...)
	cmd := r.ExecContext(ctx, r.topo.ClientNode(), "curl", full...)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	runErr := cmd.Run()
	res := Result{Duration: time.Since(start), Stderr: stderr.String()}
	res.Commands, res.Replies = parseCurlTranscript(res.Stderr)
	if n, err := strconv.ParseInt(strings.TrimSpace(stdout.String()), 10, 64); err == nil {
		res.Bytes = n
	}
	var exitErr *exec.ExitError
	switch {
	case errors.As(runErr, &exitErr):
		res.ExitCode = exitErr.ExitCode()
		// curl's own message is often misleading (7.88 reports a stale
		// "inet_ntop() failed" for every -P transfer, and names the control
		// connection when the data connection times out); the last server
		// reply says what happened.
		last := ""
		if len(res.Replies) > 0 {
			last = res.Replies[len(res.Replies)-1]
		}
		return res, fmt.Errorf("curl %v %s: %w: exit %d, last reply %q: %s",
			m, args[len(args)-1], ErrTransfer, res.ExitCode, last, curlError(res.Stderr))
	case runErr != nil:
		return res, fmt.Errorf("running curl %v %s: %w", m, args[len(args)-1], runErr)
	}
	if !res.Sent(m.String()) {
		return res, fmt.Errorf("curl %v %s: %w: sent %v", m, args[len(args)-1], ErrModeNotUsed, res.Commands)
	}
	for _, fb := range m.fallbacks() {
		if res.Sent(fb) {
			return res, fmt.Errorf("curl %v %s: %w: fell back to %s", m, args[len(args)-1], ErrModeNotUsed, fb)
		}
	}
	return res, nil
}

// parseCurlTranscript extracts the control-channel exchange from curl -v
// output, where sent lines start with "> " and received ones with "< ",
// after the "15:04:05.000000 " stamp --trace-time adds.
func parseCurlTranscript(stderr string) (commands, replies []string) {
	t := parseCurl(stderr)
	return t.commands(), t.replies()
}

// curlError returns curl's own error lines ("curl: (28) ...") from its
// stderr, or the last line when there are none.
func curlError(stderr string) string {
	var errs []string
	last := ""
	for line := range strings.Lines(stderr) {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		last = line
		if strings.HasPrefix(line, "curl: (") {
			errs = append(errs, line)
		}
	}
	if len(errs) == 0 {
		return last
	}
	return strings.Join(errs, "; ")
}

// isTraceTime reports whether s looks like curl's --trace-time stamp
// "15:04:05.000000".
func isTraceTime(s string) bool {
	if len(s) != len("15:04:05.000000") {
		return false
	}
	for i, c := range s {
		switch i {
		case 2, 5:
			if c != ':' {
				return false
			}
		case 8:
			if c != '.' {
				return false
			}
		default:
			if c < '0' || c > '9' {
				return false
			}
		}
	}
	return true
}
