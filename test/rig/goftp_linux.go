package rig

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"

	"github.com/jlaffaye/ftp"
)

// goFTPJob runs job with github.com/jlaffaye/ftp in this process, every
// socket opened in the client namespace. EPSV or PASV is forced with
// DialWithDisabledEPSV; DialWithTrustPasvIP makes the library use the 227
// address (it substitutes the control connection's otherwise), so an
// unrewritten private address fails as it would for a strict client.
func (r *Rig) goFTPJob(ctx context.Context, job Job) (Result, transcript, error) {
	var tr transcript
	addr := r.ServerEndpoint().String()
	c, err := ftp.Dial(addr,
		ftp.DialWithDialFunc(r.dialer(ctx, &tr)),
		ftp.DialWithDisabledEPSV(job.Mode == PASV),
		ftp.DialWithTrustPasvIP(true),
	)
	if err != nil {
		return Result{}, tr, fmt.Errorf("%w: dialing %s: %w", ErrTransfer, addr, err)
	}
	defer c.Quit()
	if err := c.Login(job.User, job.Password); err != nil {
		return Result{}, tr, fmt.Errorf("%w: login: %w", ErrTransfer, err)
	}
	switch job.Op {
	case Get:
		err = goFTPGet(c, job.Remote[0], job.Local)
	case Put:
		err = goFTPPut(c, job.Local, job.Remote[0])
	case List:
		err = goFTPList(c, job.Remote[0], job.Local)
	case GetMany:
		for _, p := range job.Remote {
			if err = goFTPGet(c, p, filepath.Join(job.Local, filepath.Base(p))); err != nil {
				break
			}
		}
	}
	if err != nil {
		return Result{}, tr, fmt.Errorf("%w: %w", ErrTransfer, err)
	}
	if err := c.Quit(); err != nil {
		return Result{}, tr, fmt.Errorf("%w: quit: %w", ErrTransfer, err)
	}
	return Result{}, tr, nil
}

func goFTPGet(c *ftp.ServerConn, remote, local string) (err error) {
	resp, err := c.Retr(remote)
	if err != nil {
		return fmt.Errorf("RETR %s: %w", remote, err)
	}
	f, err := os.Create(local)
	if err != nil {
		resp.Close()
		return fmt.Errorf("creating %s: %w", local, err)
	}
	_, cerr := io.Copy(f, resp)
	// Close reads the 226: the transfer's real result.
	return errors.Join(wrap(cerr, "reading %s", remote), wrap(resp.Close(), "RETR %s", remote), wrap(f.Close(), "closing %s", local))
}

func goFTPPut(c *ftp.ServerConn, local, remote string) error {
	f, err := os.Open(local)
	if err != nil {
		return fmt.Errorf("opening %s: %w", local, err)
	}
	defer f.Close()
	return wrap(c.Stor(remote, f), "STOR %s", remote)
}

func goFTPList(c *ftp.ServerConn, dir, local string) error {
	entries, err := c.List(dir)
	if err != nil {
		return fmt.Errorf("LIST %s: %w", dir, err)
	}
	var b []byte
	for _, e := range entries {
		b = append(b, e.Name+" "+strconv.FormatUint(e.Size, 10)+"\n"...)
	}
	return os.WriteFile(local, b, 0o644)
}

// wrap annotates err, keeping nil nil.
func wrap(err error, format string, args ...any) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf(format+": %w", append(args, err)...)
}
