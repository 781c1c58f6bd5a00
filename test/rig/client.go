package rig

import (
	"fmt"
	"slices"
	"strings"
)

// ClientKind names an FTP client program.
type ClientKind int

const (
	// Curl is curl (see CurlGet for how the mode is forced).
	Curl ClientKind = iota + 1
	// Lftp is lftp, driven by a script with ftp:passive-mode and
	// ftp:prefer-epsv set, fallbacks off.
	Lftp
	// Tnftp is tnftp (NetBSD ftp), driven on standard input with
	// passive and epsv4/epsv6 set.
	Tnftp
	// Ftplib is a small Python script using the standard library's ftplib.
	Ftplib
	// GoFTP is github.com/jlaffaye/ftp, run in the test process with its
	// sockets opened in the client namespace.
	GoFTP
)

// Clients returns all client programs, for table tests.
func Clients() []ClientKind { return []ClientKind{Curl, Lftp, Tnftp, Ftplib, GoFTP} }

// String returns the client's name.
func (c ClientKind) String() string {
	switch c {
	case Curl:
		return "curl"
	case Lftp:
		return "lftp"
	case Tnftp:
		return "tnftp"
	case Ftplib:
		return "ftplib"
	case GoFTP:
		return "goftp"
	}
	return fmt.Sprintf("ClientKind(%d)", int(c))
}

// Supports reports whether client c can be made to use mode m over family
// f, and if not, why. PORT and PASV carry IPv4 addresses only. lftp
// sends EPRT only on IPv6 connections and PORT on IPv4 ones, with no
// setting to change that; jlaffaye/ftp implements passive mode only.
func (c ClientKind) Supports(m Mode, f Family) (bool, string) {
	if f == IPv6 && (m == PORT || m == PASV) {
		return false, m.String() + " carries IPv4 addresses only"
	}
	switch {
	case c == Lftp && m == EPRT && f == IPv4:
		return false, "lftp sends PORT, never EPRT, on IPv4"
	case c == GoFTP && m.Active():
		return false, "jlaffaye/ftp has no active mode"
	}
	return true, ""
}

// Op is what a client job does.
type Op int

const (
	// Get downloads Job.Remote[0] to the file Job.Local.
	Get Op = iota + 1
	// Put uploads the file Job.Local to Job.Remote[0].
	Put
	// List writes the LIST output of directory Job.Remote[0] to Job.Local.
	List
	// GetMany downloads every path in Job.Remote, one after the other
	// over one control connection, into directory Job.Local under its
	// base name.
	GetMany
)

// String returns the operation's name.
func (o Op) String() string {
	switch o {
	case Get:
		return "get"
	case Put:
		return "put"
	case List:
		return "list"
	case GetMany:
		return "getmany"
	}
	return fmt.Sprintf("Op(%d)", int(o))
}

// Job is one client session: log in, do Op with Mode, quit.
type Job struct {
	Op   Op
	Mode Mode
	// Remote paths, relative to the FTP root.
	Remote []string
	// Local file (Get, Put, List) or directory (GetMany).
	Local string
	// User and Password log in (FTPServer.User and Password).
	User, Password string
}

func (j Job) validate() error {
	if _, err := curlArgs(j.Mode); err != nil {
		return err
	}
	n := len(j.Remote)
	if j.Local == "" || n == 0 || (j.Op != GetMany && n != 1) || j.Op < Get || j.Op > GetMany {
		return fmt.Errorf("client job %v with %d remote paths: %w", j.Op, n, ErrConfig)
	}
	for _, p := range j.Remote {
		// Every client gets the path inside a script or URL.
		if p == "" || strings.ContainsAny(p, "\r\n\" ;'\\") {
			return fmt.Errorf("client job path %q: %w", p, ErrConfig)
		}
	}
	return nil
}

// checkMode reports ErrModeNotUsed unless the transcript shows the
// requested command and none of its fallbacks.
func checkMode(client ClientKind, res Result, m Mode) error {
	if !res.Sent(m.String()) {
		return fmt.Errorf("%v %v: %w: sent %v", client, m, ErrModeNotUsed, abbreviate(res.Commands))
	}
	for _, fb := range slices.Concat(m.fallbacks(), m.others()) {
		if res.Sent(fb) {
			return fmt.Errorf("%v %v: %w: also sent %s", client, m, ErrModeNotUsed, fb)
		}
	}
	return nil
}

// others lists the data-connection commands of the other direction or
// generation, which no client should send in a session forced to m.
func (m Mode) others() []string {
	all := []string{"PORT", "EPRT", "PASV", "EPSV", "LPRT", "LPSV"}
	return slices.DeleteFunc(all, func(s string) bool {
		return s == m.String() || slices.Contains(m.fallbacks(), s)
	})
}

// abbreviate shortens a long command list for error messages.
func abbreviate(cmds []string) []string {
	if len(cmds) <= 12 {
		return cmds
	}
	return append(slices.Clone(cmds[:12]), fmt.Sprintf("... %d more", len(cmds)-12))
}
