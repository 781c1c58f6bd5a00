package ha

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/ftpalg/ftpalg/test/rig"
)

// ErrFTP reports an FTP reply other than the one a pending session
// expected.
var ErrFTP = errors.New("unexpected FTP reply")

// Pending is a PORT session from the LAN client whose PORT was answered
// (rewritten, its pinhole opened on the router that was master then) and
// whose RETR is not sent yet: the data connection it announced is
// pending. Sent after a failover, the RETR makes the server connect to
// the pinhole through the new master, which has it only if it was
// synced. curl cannot hold a session between PORT and RETR, so this is a
// small client of its own, running from the client's namespace.
type Pending struct {
	Index int
	ctrl  net.Conn
	r     *bufio.Reader
	data  net.Listener
}

// StartPending logs in to the PORT server as the LAN client and sends
// PORT for a listener of its own; it returns once the 200 arrived.
func (p *Pair) StartPending(ctx context.Context, i int) (_ *Pending, err error) {
	pd := &Pending{Index: i}
	err = rig.InNamespace(p.NS(Client), func() error {
		d := net.Dialer{Timeout: 10 * time.Second}
		var err error
		if pd.ctrl, err = d.DialContext(ctx, "tcp", PortServer+":21"); err != nil {
			return err
		}
		pd.data, err = net.Listen("tcp", ClientAddr+":0")
		return err
	})
	defer func() {
		if err != nil {
			pd.Close()
			err = fmt.Errorf("pending PORT session %d: %w", i, err)
		}
	}()
	if err != nil {
		return nil, err
	}
	pd.r = bufio.NewReader(pd.ctrl)
	if _, err := pd.expect("220"); err != nil {
		return nil, err
	}
	code, err := pd.cmd("USER anonymous", "230", "331")
	if err != nil {
		return nil, err
	}
	if code == "331" {
		if _, err := pd.cmd("PASS ftpalg@", "230"); err != nil {
			return nil, err
		}
	}
	if _, err := pd.cmd("TYPE I", "200"); err != nil {
		return nil, err
	}
	port := pd.data.Addr().(*net.TCPAddr).AddrPort().Port()
	a := netip.MustParseAddr(ClientAddr).As4()
	if _, err := pd.cmd(fmt.Sprintf("PORT %d,%d,%d,%d,%d,%d", a[0], a[1], a[2], a[3], port>>8, port&0xff), "200"); err != nil {
		return nil, err
	}
	return pd, nil
}

// Retr fetches name over the announced data connection and checks its
// SHA-256, then quits. A pinhole missing on the router the server's SYN
// meets shows as the server's 425.
func (pd *Pending) Retr(name, sum string) error {
	defer pd.Close()
	if _, err := pd.cmd("RETR "+name, "150"); err != nil {
		return fmt.Errorf("pending PORT session %d: %w", pd.Index, err)
	}
	if err := pd.data.(*net.TCPListener).SetDeadline(time.Now().Add(30 * time.Second)); err != nil {
		return err
	}
	c, err := pd.data.Accept()
	if err != nil {
		return fmt.Errorf("pending PORT session %d: data connection: %w", pd.Index, err)
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(60 * time.Second)); err != nil {
		return err
	}
	h := sha256.New()
	if _, err := io.Copy(h, c); err != nil {
		return fmt.Errorf("pending PORT session %d: reading %s: %w", pd.Index, name, err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != sum {
		return fmt.Errorf("pending PORT session %d: %s: sha256 %s, want %s", pd.Index, name, got, sum)
	}
	if _, err := pd.expect("226"); err != nil {
		return fmt.Errorf("pending PORT session %d: %w", pd.Index, err)
	}
	_, _ = pd.cmd("QUIT", "221")
	return nil
}

// Close ends the session's sockets.
func (pd *Pending) Close() {
	if pd.ctrl != nil {
		pd.ctrl.Close()
	}
	if pd.data != nil {
		pd.data.Close()
	}
}

// cmd sends one command and reads its reply, which must have one of the
// codes.
func (pd *Pending) cmd(line string, codes ...string) (string, error) {
	if err := pd.ctrl.SetDeadline(time.Now().Add(60 * time.Second)); err != nil {
		return "", err
	}
	if _, err := io.WriteString(pd.ctrl, line+"\r\n"); err != nil {
		return "", fmt.Errorf("sending %q: %w", line, err)
	}
	code, err := pd.expect(codes...)
	if err != nil {
		return "", fmt.Errorf("%q: %w", line, err)
	}
	return code, nil
}

// expect reads one reply (a multi-line one to its last line) and checks
// its code.
func (pd *Pending) expect(codes ...string) (string, error) {
	if err := pd.ctrl.SetDeadline(time.Now().Add(60 * time.Second)); err != nil {
		return "", err
	}
	var first string
	for {
		line, err := pd.r.ReadString('\n')
		if err != nil {
			return "", fmt.Errorf("reading reply: %w", err)
		}
		line = strings.TrimRight(line, "\r\n")
		if first == "" {
			first = line
		}
		if len(line) >= 4 && line[3] == ' ' && len(first) >= 3 && line[:3] == first[:3] {
			break
		}
	}
	for _, c := range codes {
		if strings.HasPrefix(first, c+" ") || strings.HasPrefix(first, c+"-") {
			return c, nil
		}
	}
	return "", fmt.Errorf("%w: %q, want %s", ErrFTP, first, strings.Join(codes, " or "))
}
