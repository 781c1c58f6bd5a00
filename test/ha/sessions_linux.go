package ha

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ftpalg/ftpalg/test/rig"
)

// FTPServer is a vsftpd in one of the pair's hosts, serving Files.
type FTPServer struct {
	Host Host
	Root string
	// Sums are the SHA-256 of each file by name.
	Sums map[string]string
	Proc *rig.Proc
}

// StartVsftpd runs vsftpd in host h with n random files of size bytes
// (f0.bin ...). Anonymous, PASV and PORT, no pasv_address: the stock
// server behind NAT, as in test/rig (connect_from_port_20=NO: active
// data connections come from an ephemeral port; isolate_network and
// seccomp_sandbox off for speed and current glibc).
//
// pasvAddress, when set, is vsftpd's pasv_address: the admin's classic fix
// that announces the public address itself, so no 227 is rewritten.
//
// rate is vsftpd's anon_max_rate (bytes per second per transfer): paced on
// the wire by the sender, so a data connection really spans a failover
// (a client-side limit lets the kernel buffer the whole file at once).
func (p *Pair) StartVsftpd(ctx context.Context, h Host, addr, pasvAddress string, n int, size int64, rate int) (*FTPServer, error) {
	dir, err := os.MkdirTemp(p.dir, "vsftpd-"+string(h)+"-")
	if err != nil {
		return nil, fmt.Errorf("vsftpd in %s: %w", h, err)
	}
	s := &FTPServer{Host: h, Root: filepath.Join(dir, "root"), Sums: map[string]string{}}
	empty := filepath.Join(dir, "empty")
	for _, d := range []string{s.Root, empty} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return nil, fmt.Errorf("vsftpd in %s: %w", h, err)
		}
		if err := os.Chmod(d, 0o755); err != nil {
			return nil, fmt.Errorf("vsftpd in %s: %w", h, err)
		}
	}
	for i := range n {
		name := fmt.Sprintf("f%d.bin", i)
		if s.Sums[name], err = rig.WriteRandomFile(filepath.Join(s.Root, name), size); err != nil {
			return nil, err
		}
	}
	conf := filepath.Join(dir, "vsftpd.conf")
	text := strings.Join([]string{
		"listen=YES", "listen_ipv6=NO", "listen_address=" + addr, "background=NO",
		"anonymous_enable=YES", "local_enable=NO", "no_anon_password=YES", "anon_root=" + s.Root,
		"write_enable=NO", "pasv_enable=YES", "port_enable=YES", "connect_from_port_20=NO",
		"connect_timeout=10", "accept_timeout=20", "data_connection_timeout=60", "idle_session_timeout=120",
		"max_clients=0", "max_per_ip=0", "seccomp_sandbox=NO", "isolate_network=NO",
		"secure_chroot_dir=" + empty, "ssl_enable=NO", "syslog_enable=NO",
		"xferlog_enable=YES", "log_ftp_protocol=YES", "xferlog_std_format=NO",
		"vsftpd_log_file=" + filepath.Join(dir, "vsftpd.log"),
	}, "\n") + "\n"
	text += "anon_max_rate=" + strconv.Itoa(rate) + "\n"
	if pasvAddress != "" {
		text += "pasv_address=" + pasvAddress + "\n"
	}
	if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
		return nil, fmt.Errorf("vsftpd in %s: %w", h, err)
	}
	if s.Proc, err = p.Start(p.NS(h), "vsftpd", conf); err != nil {
		return nil, err
	}
	// The banner, read with bash's /dev/tcp from the server's own
	// namespace.
	probe := "exec 3<>/dev/tcp/" + addr + "/21 && head -c 3 <&3"
	err = waitFor(ctx, 10*time.Second, func() bool {
		out, err := exec.CommandContext(ctx, "ip", "netns", "exec", p.NS(h), "timeout", "2", "bash", "-c", probe).Output()
		return err == nil && string(out) == "220"
	})
	if err != nil {
		return nil, fmt.Errorf("vsftpd in %s not ready: %w: %s", h, err, s.Proc.Output())
	}
	return s, nil
}

// Mode is the data connection mode of a session.
type Mode int

const (
	// PORT sessions run from the LAN client behind SNAT to the WAN
	// server: every PORT is rewritten (192,0,2,10 -> 198,51,100,1, two
	// bytes longer) and needs a pinhole with a DNAT.
	PORT Mode = iota
	// PASV sessions run from the WAN client to the port-forwarded LAN
	// server: every 227 is rewritten (192,0,2,20 -> 198,51,100,1).
	PASV
)

func (m Mode) String() string {
	if m == PASV {
		return "PASV"
	}
	return "PORT"
}

// Session is one control connection fetching files back to back.
type Session struct {
	Mode  Mode
	Index int
	// Done counts files that arrived with the right SHA-256.
	Done  int
	Files int
	Err   error
	// Transfers has curl's line for each transfer: exit code, new
	// connections, error.
	Transfers []string
	// Took is how long the session ran.
	Took time.Duration
}

// OK reports whether every file of the session arrived intact over the
// one control connection it started with.
func (s *Session) OK() bool { return s.Err == nil && s.Done == s.Files && s.Reconnects() == 0 }

// Reconnects counts the transfers after the first that opened a new
// control connection: curl reconnects silently when the one it reuses
// died, which would hide a broken session. A transfer opens one
// connection of its own in PASV mode (the data connection) and none in
// PORT mode (the server connects).
func (s *Session) Reconnects() int {
	own := 0
	if s.Mode == PASV {
		own = 1
	}
	n := 0
	for i, l := range s.Transfers {
		f := strings.Fields(l)
		if i == 0 || len(f) < 2 {
			continue
		}
		if c, err := strconv.Atoi(f[1]); err == nil && c > own {
			n++
		}
	}
	return n
}

// RunSession fetches every file of srv in order over one control
// connection (curl reuses it for the URLs of one invocation) and checks
// each file's SHA-256.
func (p *Pair) RunSession(ctx context.Context, m Mode, i int, srv *FTPServer, timeout time.Duration) *Session {
	s := &Session{Mode: m, Index: i, Files: len(srv.Sums)}
	start := time.Now()
	defer func() { s.Took = time.Since(start) }()
	dir, err := os.MkdirTemp(p.dir, fmt.Sprintf("s%s%d-", m, i))
	if err != nil {
		s.Err = err
		return s
	}
	host, target, args := Client, PortServer, []string{"-P", "-", "--disable-eprt"}
	if m == PASV {
		host, target, args = Remote, WANVIP, []string{"--disable-epsv", "--no-ftp-skip-pasv-ip"}
	}
	// One line per transfer: curl's exit status is only the last one's.
	args = append(args, "-w", "%{exitcode} %{num_connects} %{errormsg}\n")
	args = append(args, "-sS", "--max-time", strconv.Itoa(int(timeout.Seconds())))
	names := make([]string, 0, len(srv.Sums))
	for k := range len(srv.Sums) {
		name := fmt.Sprintf("f%d.bin", k)
		names = append(names, name)
		args = append(args, "ftp://"+target+"/"+name, "-o", filepath.Join(dir, name))
	}
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", p.NS(host), "curl"}, args...)...)
	out, err := cmd.Output()
	s.Transfers = strings.Split(strings.TrimSpace(string(out)), "\n")
	for _, name := range names {
		if got, err := rig.FileSHA256(filepath.Join(dir, name)); err == nil && got == srv.Sums[name] {
			s.Done++
		}
	}
	if err != nil {
		s.Err = fmt.Errorf("%s session %d: curl: %v: %d of %d files intact: %q", m, i, err, s.Done, s.Files, s.Transfers)
	} else if s.Done != s.Files || s.Reconnects() > 0 {
		s.Err = fmt.Errorf("%s session %d: %d of %d files intact: %q", m, i, s.Done, s.Files, s.Transfers)
	}
	os.RemoveAll(dir)
	return s
}

// RunSessions runs n sessions of each mode at once (PORT sessions to port,
// PASV sessions to pasv; a nil server runs none) and returns them when all
// have ended.
func (p *Pair) RunSessions(ctx context.Context, n int, port, pasv *FTPServer, timeout time.Duration) []*Session {
	var (
		mu  sync.Mutex
		out []*Session
		wg  sync.WaitGroup
	)
	for _, srv := range []struct {
		m Mode
		s *FTPServer
	}{{PORT, port}, {PASV, pasv}} {
		if srv.s == nil {
			continue
		}
		for i := range n {
			wg.Go(func() {
				s := p.RunSession(ctx, srv.m, i, srv.s, timeout)
				mu.Lock()
				out = append(out, s)
				mu.Unlock()
			})
		}
	}
	wg.Wait()
	return out
}
