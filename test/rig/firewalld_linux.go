package rig

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// firewalldPackages are unpacked into the package cache, not installed:
// an installed firewalld is a system service, and on a machine with
// systemd its package starts it, owning the host namespace's ruleset. The
// Python modules they need besides these (dbus, gi) and dbus-daemon come
// from test/deps.sh.
var firewalldPackages = []string{"firewalld", "python3-firewall", "python3-nftables"}

// systemPython is Debian's interpreter, whose dist-packages hold python3-dbus
// and python3-gi (a python3 earlier on PATH, such as pyenv's, lacks them).
const systemPython = "/usr/bin/python3"

// Firewalld is a firewalld daemon (1.3, nftables backend, its default
// configuration) managing the firewall host's namespace, on a D-Bus
// system bus of its own.
type Firewalld struct {
	r      *Rig
	root   string   // the unpacked packages
	env    []string // PYTHONPATH and DBUS_SYSTEM_BUS_ADDRESS
	daemon *Proc
}

// StartFirewalld runs firewalld in the router namespace, its packages
// unpacked under cacheDir/firewalld (fetched once), with a private
// dbus-daemon and its configuration in the rig's directory, and waits
// until `firewall-cmd --state` says running. firewalld replaces nothing
// by itself: flush the rig's own ruleset first. Both processes stop with
// the rig.
func (r *Rig) StartFirewalld(ctx context.Context, cacheDir string) (*Firewalld, error) {
	dir := filepath.Join(cacheDir, "firewalld")
	root := filepath.Join(dir, "root")
	unlock, err := lockCache(dir)
	if err != nil {
		return nil, err
	}
	err = unpackOnce(ctx, dir, root, firewalldPackages, func() error {
		_, err := os.Stat(filepath.Join(root, "usr/sbin/firewalld"))
		return err
	})
	unlock()
	if err != nil {
		return nil, fmt.Errorf("unpacking firewalld: %w", err)
	}
	sock := filepath.Join(r.dir, "system_bus.sock")
	conf := filepath.Join(r.dir, "dbus.conf")
	if err := os.WriteFile(conf, []byte(busConfig(sock)), 0o644); err != nil {
		return nil, err
	}
	if _, err := r.StartCmd(exec.Command("dbus-daemon", "--nofork", "--config-file", conf)); err != nil {
		return nil, err
	}
	etc := filepath.Join(r.dir, "firewalld-etc")
	if out, err := exec.CommandContext(ctx, "cp", "-r", filepath.Join(root, "etc/firewalld"), etc).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("copying firewalld's configuration: %w: %w: %s", ErrCommand, err, out)
	}
	f := &Firewalld{r: r, root: root, env: append(os.Environ(),
		"PYTHONPATH="+filepath.Join(root, "usr/lib/python3/dist-packages"),
		"DBUS_SYSTEM_BUS_ADDRESS=unix:path="+sock)}
	if err := waitFor(ctx, 10*time.Second, func() error { _, err := os.Stat(sock); return err }); err != nil {
		return nil, fmt.Errorf("dbus-daemon did not create %s: %w", sock, err)
	}
	cmd := r.Exec(Router, systemPython, filepath.Join(root, "usr/sbin/firewalld"), "--nofork", "--nopid",
		"--system-config", etc, "--default-config", filepath.Join(root, "usr/lib/firewalld"),
		"--log-target", "file", "--log-file", filepath.Join(r.dir, "firewalld.log"))
	cmd.Env = f.env
	if f.daemon, err = r.StartCmd(cmd); err != nil {
		return nil, err
	}
	err = waitFor(ctx, 60*time.Second, func() error {
		select {
		case <-f.daemon.Done():
			return fmt.Errorf("%w: firewalld exited: %v: %s", errStop, f.daemon.Err(), f.daemon.Output())
		default:
		}
		out, err := f.Cmd(ctx, "--state")
		if err == nil && strings.TrimSpace(out) != "running" {
			err = fmt.Errorf("firewall-cmd --state: %s", out)
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("firewalld did not start: %w", err)
	}
	return f, nil
}

// Cmd runs firewall-cmd with args against the rig's firewalld and returns
// its output.
func (f *Firewalld) Cmd(ctx context.Context, args ...string) (string, error) {
	cmd := f.r.ExecContext(ctx, Router, systemPython, append([]string{filepath.Join(f.root, "usr/bin/firewall-cmd")}, args...)...)
	cmd.Env = f.env
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("firewall-cmd %s: %w: %w: %s", strings.Join(args, " "), ErrCommand, err, out)
	}
	return string(out), nil
}

// errStop ends waitFor at once.
var errStop = errors.New("giving up")

// waitFor calls check until it returns nil, an error wrapping errStop, or
// timeout passes, and returns its last error.
func waitFor(ctx context.Context, timeout time.Duration, check func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil || errors.Is(err, errStop) || time.Now().After(deadline) || ctx.Err() != nil {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// busConfig is a system bus that lets root own and call any name, as the
// Debian system bus lets root with firewalld's policy file; polkit is not
// on it, and firewalld (1.3) then authorises root's calls.
func busConfig(sock string) string {
	return `<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path=` + sock + `</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="root"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
`
}
