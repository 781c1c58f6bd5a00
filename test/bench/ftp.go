package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// Sentinel errors of the benchmark's FTP client.
var (
	// ErrReply reports a reply the client did not expect (wrong code or
	// malformed line).
	ErrReply = errors.New("unexpected FTP reply")
	// ErrShort reports a transfer that delivered fewer or more bytes than
	// the file has.
	ErrShort = errors.New("wrong transfer size")
)

// opTimeout bounds every single exchange of the client (a reply, a data
// connection, a transfer's idle gap), so a gateway that loses a packet
// fails the workload instead of hanging the run.
const opTimeout = 10 * time.Second

// netEnv opens sockets where the client lives (the rig's client
// namespace).
type netEnv interface {
	DialContext(ctx context.Context, network, address string) (net.Conn, error)
	Listen(network, address string) (net.Listener, error)
}

// mode is how a transfer's data connection is set up.
type mode string

const (
	pasv mode = "PASV" // the client connects to the server's 227 address
	port mode = "PORT" // the server connects to the client's PORT address
)

// reply is one complete FTP reply.
type reply struct {
	code int
	text string // all lines, CRLF stripped, joined by "\n"
}

// readReply reads one reply, single-line ("200 ok") or multi-line ("211-"
// up to a line starting "211 ", RFC 959 section 4.2).
func readReply(r *bufio.Reader) (reply, error) {
	line, err := readLine(r)
	if err != nil {
		return reply{}, err
	}
	code, multi, err := replyCode(line)
	if err != nil {
		return reply{}, err
	}
	rep := reply{code: code, text: line}
	if !multi {
		return rep, nil
	}
	end := line[:3] + " "
	for {
		l, err := readLine(r)
		if err != nil {
			return reply{}, fmt.Errorf("reading rest of %d reply: %w", code, err)
		}
		rep.text += "\n" + l
		if strings.HasPrefix(l, end) {
			return rep, nil
		}
	}
}

func readLine(r *bufio.Reader) (string, error) {
	line, err := r.ReadString('\n')
	if err != nil {
		if errors.Is(err, io.EOF) && line != "" {
			err = io.ErrUnexpectedEOF
		}
		return "", fmt.Errorf("reading reply: %w", err)
	}
	return strings.TrimRight(line, "\r\n"), nil
}

// replyCode parses the three-digit code of a reply's first line and
// whether a hyphen opens a multi-line reply.
func replyCode(line string) (code int, multi bool, err error) {
	if len(line) < 3 {
		return 0, false, fmt.Errorf("reply %q: %w", line, ErrReply)
	}
	code, err = strconv.Atoi(line[:3])
	if err != nil || code < 100 || code > 599 {
		return 0, false, fmt.Errorf("reply %q: %w", line, ErrReply)
	}
	if len(line) == 3 {
		return code, false, nil
	}
	switch line[3] {
	case ' ':
		return code, false, nil
	case '-':
		return code, true, nil
	}
	return 0, false, fmt.Errorf("reply %q: %w", line, ErrReply)
}

// parse227 extracts the address of a "227 Entering Passive Mode
// (h1,h2,h3,h4,p1,p2)." reply. It searches for the six numbers after the
// first '(' and, as RFC 1123 4.1.2.6 advises, tolerates a reply without
// parentheses by taking the first run of digits and commas.
func parse227(text string) (netip.AddrPort, error) {
	s := text
	if i := strings.IndexByte(s, '('); i >= 0 {
		s = s[i+1:]
	} else if len(s) > 4 {
		s = s[4:]
		i := strings.IndexAny(s, "0123456789")
		if i < 0 {
			return netip.AddrPort{}, fmt.Errorf("227 reply %q: %w", text, ErrReply)
		}
		s = s[i:]
	}
	if i := strings.IndexFunc(s, func(c rune) bool { return c != ',' && (c < '0' || c > '9') }); i >= 0 {
		s = s[:i]
	}
	f := strings.Split(s, ",")
	if len(f) != 6 {
		return netip.AddrPort{}, fmt.Errorf("227 reply %q: %w", text, ErrReply)
	}
	var b [6]byte
	for i, x := range f {
		n, err := strconv.ParseUint(x, 10, 8)
		if err != nil {
			return netip.AddrPort{}, fmt.Errorf("227 reply %q: %w", text, ErrReply)
		}
		b[i] = byte(n)
	}
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[:4])), uint16(b[4])<<8|uint16(b[5])), nil
}

// portArg formats an IPv4 endpoint as a PORT argument "h1,h2,h3,h4,p1,p2".
func portArg(ap netip.AddrPort) (string, error) {
	a := ap.Addr().Unmap()
	if !a.Is4() {
		return "", fmt.Errorf("PORT for %s: not IPv4: %w", ap, ErrReply)
	}
	b := a.As4()
	p := ap.Port()
	return fmt.Sprintf("%d,%d,%d,%d,%d,%d", b[0], b[1], b[2], b[3], p>>8, p&0xff), nil
}

// client is a minimal FTP client: just what the workloads send, with
// every step's reply checked so a measurement never counts a failure.
type client struct {
	env   netEnv
	local netip.Addr // address to listen on for PORT
	conn  net.Conn
	r     *bufio.Reader
	buf   []byte // data-connection read buffer
}

// dial connects to server and reads its greeting.
func dial(ctx context.Context, env netEnv, server netip.AddrPort, local netip.Addr) (*client, error) {
	conn, err := env.DialContext(ctx, "tcp", server.String())
	if err != nil {
		return nil, fmt.Errorf("connecting to FTP server %s: %w", server, err)
	}
	c := &client{env: env, local: local, conn: conn, r: bufio.NewReader(conn)}
	if _, err := c.expect(220); err != nil {
		conn.Close()
		return nil, fmt.Errorf("greeting of %s: %w", server, err)
	}
	return c, nil
}

// Close closes the control connection without QUIT.
func (c *client) Close() error { return c.conn.Close() }

// expect reads a reply and requires its code to be one of codes.
func (c *client) expect(codes ...int) (reply, error) {
	if err := c.conn.SetReadDeadline(time.Now().Add(opTimeout)); err != nil {
		return reply{}, err
	}
	rep, err := readReply(c.r)
	if err != nil {
		return rep, err
	}
	for _, want := range codes {
		if rep.code == want {
			return rep, nil
		}
	}
	return rep, fmt.Errorf("got %q, want %v: %w", rep.text, codes, ErrReply)
}

// send writes one command line.
func (c *client) send(cmd string) error {
	if err := c.conn.SetWriteDeadline(time.Now().Add(opTimeout)); err != nil {
		return err
	}
	if _, err := io.WriteString(c.conn, cmd+"\r\n"); err != nil {
		return fmt.Errorf("sending %s: %w", verb(cmd), err)
	}
	return nil
}

// cmd sends a command and expects one of codes in reply.
func (c *client) cmd(cmd string, codes ...int) (reply, error) {
	if err := c.send(cmd); err != nil {
		return reply{}, err
	}
	rep, err := c.expect(codes...)
	if err != nil {
		return rep, fmt.Errorf("%s: %w", verb(cmd), err)
	}
	return rep, nil
}

func verb(cmd string) string { v, _, _ := strings.Cut(cmd, " "); return v }

// login logs in anonymously and switches to binary. A server configured
// not to ask for the anonymous password answers USER with 230 directly.
func (c *client) login() error {
	rep, err := c.cmd("USER anonymous", 230, 331)
	if err != nil {
		return err
	}
	if rep.code == 331 {
		if _, err := c.cmd("PASS bench@example.com", 230); err != nil {
			return err
		}
	}
	_, err = c.cmd("TYPE I", 200)
	return err
}

// quit says goodbye and closes the connection.
func (c *client) quit() error {
	_, err := c.cmd("QUIT", 221)
	return errors.Join(err, c.conn.Close())
}

// retr fetches name over a data connection set up with m and returns the
// bytes received. want >= 0 is the expected size.
func (c *client) retr(ctx context.Context, m mode, name string, want int64) (int64, error) {
	var data net.Conn
	switch m {
	case pasv:
		rep, err := c.cmd("PASV", 227)
		if err != nil {
			return 0, err
		}
		ap, err := parse227(rep.text)
		if err != nil {
			return 0, err
		}
		dctx, cancel := context.WithTimeout(ctx, opTimeout)
		data, err = c.env.DialContext(dctx, "tcp", ap.String())
		cancel()
		if err != nil {
			return 0, fmt.Errorf("PASV data connection to %s: %w", ap, err)
		}
		if _, err := c.cmd("RETR "+name, 150, 125); err != nil {
			data.Close()
			return 0, err
		}
	case port:
		ln, err := c.env.Listen("tcp4", netip.AddrPortFrom(c.local, 0).String())
		if err != nil {
			return 0, err
		}
		defer ln.Close()
		arg, err := portArg(netip.MustParseAddrPort(ln.Addr().String()))
		if err != nil {
			return 0, err
		}
		if _, err := c.cmd("PORT "+arg, 200); err != nil {
			return 0, err
		}
		if err := c.send("RETR " + name); err != nil {
			return 0, err
		}
		// vsftpd connects before it answers 150, so accept first; a
		// refusal (425) arrives instead of the connection.
		acc := make(chan net.Conn, 1)
		go func() {
			if tl, ok := ln.(*net.TCPListener); ok {
				_ = tl.SetDeadline(time.Now().Add(opTimeout))
			}
			conn, err := ln.Accept()
			if err != nil {
				conn = nil
			}
			acc <- conn
		}()
		rep, err := c.expect(150, 125)
		if err != nil {
			ln.Close()
			if conn := <-acc; conn != nil {
				conn.Close()
			}
			return 0, fmt.Errorf("RETR %s: %w", name, err)
		}
		if data = <-acc; data == nil {
			return 0, fmt.Errorf("RETR %s: server said %q but no PORT data connection arrived: %w", name, rep.text, ErrReply)
		}
	default:
		return 0, fmt.Errorf("mode %q: %w", m, ErrReply)
	}
	n, err := c.drain(data)
	data.Close()
	if err != nil {
		return n, fmt.Errorf("RETR %s data: %w", name, err)
	}
	if _, err := c.expect(226); err != nil {
		return n, fmt.Errorf("RETR %s: %w", name, err)
	}
	if want >= 0 && n != want {
		return n, fmt.Errorf("RETR %s: got %d bytes, want %d: %w", name, n, want, ErrShort)
	}
	return n, nil
}

// drain reads the data connection to EOF; each read must make progress
// within opTimeout.
func (c *client) drain(data net.Conn) (int64, error) {
	if c.buf == nil {
		c.buf = make([]byte, 1<<20)
	}
	var n int64
	for {
		if err := data.SetReadDeadline(time.Now().Add(opTimeout)); err != nil {
			return n, err
		}
		k, err := data.Read(c.buf)
		n += int64(k)
		if errors.Is(err, io.EOF) {
			return n, nil
		}
		if err != nil {
			return n, err
		}
	}
}
