package rig

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
)

// serverPackages are the Debian packages of the FTP servers that cannot be
// installed next to vsftpd (each provides ftp-server), so the rig unpacks
// them into a cache instead.
var serverPackages = []string{"proftpd-core", "pure-ftpd"}

// Packages locates FTP server binaries unpacked from Debian packages.
type Packages struct {
	// Root is where the packages were unpacked (dpkg -x).
	Root string
	// ProFTPD and PureFTPd are the server binaries; PurePw is pure-ftpd's
	// user database tool.
	ProFTPD, PureFTPd, PurePw string
	// LibPath is the LD_LIBRARY_PATH that finds the libraries unpacked
	// with them (those not installed on the machine).
	LibPath string
}

// Env returns the environment a binary of p runs with: os.Environ plus
// LD_LIBRARY_PATH.
func (p *Packages) Env() []string {
	return append(os.Environ(), "LD_LIBRARY_PATH="+p.LibPath)
}

// DefaultCacheDir returns where FetchPackages keeps what it downloads:
// $FTPALG_TEST_CACHE, else $XDG_CACHE_HOME/ftpalg-test, else
// /var/cache/ftpalg-test.
func DefaultCacheDir() string {
	if d := os.Getenv("FTPALG_TEST_CACHE"); d != "" {
		return d
	}
	if d := os.Getenv("XDG_CACHE_HOME"); d != "" {
		return filepath.Join(d, "ftpalg-test")
	}
	return "/var/cache/ftpalg-test"
}

// FetchPackages makes proftpd and pure-ftpd runnable from dir without
// installing them: it downloads proftpd-core and pure-ftpd with
// `apt-get download` (running `apt-get update` once if apt does not know
// them), adds every lib* package they depend on that is not installed,
// transitively, unpacks all of them with `dpkg -x` and checks with ldd
// that no library is missing. It is idempotent and safe to call from
// several processes at once (a lock file serialises them); a completed
// cache is reused without touching apt. Requires root on Debian.
func FetchPackages(ctx context.Context, dir string) (*Packages, error) {
	unlock, err := lockCache(dir)
	if err != nil {
		return nil, err
	}
	defer unlock()
	root := filepath.Join(dir, "root")
	p := &Packages{
		Root:     root,
		ProFTPD:  filepath.Join(root, "usr/sbin/proftpd"),
		PureFTPd: filepath.Join(root, "usr/sbin/pure-ftpd"),
		PurePw:   filepath.Join(root, "usr/bin/pure-pw"),
	}
	err = unpackOnce(ctx, dir, root, serverPackages, func() error {
		p.LibPath = libPath(root)
		return p.check(ctx)
	})
	if err != nil {
		return nil, err
	}
	return p, nil
}

// lockCache creates the package cache dir if needed and takes its lock,
// which serialises test processes that fill it.
func lockCache(dir string) (unlock func(), err error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("creating package cache %s: %w", dir, err)
	}
	lock, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("locking package cache %s: %w", dir, err)
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		lock.Close()
		return nil, fmt.Errorf("locking package cache %s: %w", dir, err)
	}
	return func() {
		syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)
		lock.Close()
	}, nil
}

// unpackOnce unpacks pkgs and the lib* packages they need into root,
// downloading them into dir/debs, unless dir's stamp says it was done; check
// then verifies the result. The caller holds dir's lock.
func unpackOnce(ctx context.Context, dir, root string, pkgs []string, check func() error) error {
	stamp := filepath.Join(dir, "complete")
	if _, err := os.Stat(stamp); err == nil {
		return check()
	}
	debs := filepath.Join(dir, "debs")
	if err := os.MkdirAll(debs, 0o755); err != nil {
		return fmt.Errorf("creating %s: %w", debs, err)
	}
	files, err := downloadClosure(ctx, debs, pkgs)
	if err != nil {
		return err
	}
	if err := os.RemoveAll(root); err != nil {
		return fmt.Errorf("clearing %s: %w", root, err)
	}
	for _, f := range files {
		if out, err := exec.CommandContext(ctx, "dpkg", "-x", f, root).CombinedOutput(); err != nil {
			return fmt.Errorf("unpacking %s: %w: %w: %s", f, ErrCommand, err, bytes.TrimSpace(out))
		}
	}
	if err := check(); err != nil {
		return err
	}
	if err := os.WriteFile(stamp, []byte(strings.Join(files, "\n")+"\n"), 0o644); err != nil {
		return fmt.Errorf("marking package cache complete: %w", err)
	}
	return nil
}

// downloadClosure downloads pkgs and, transitively, the lib* packages they
// depend on that are not installed, into dir. It returns the .deb paths.
func downloadClosure(ctx context.Context, dir string, pkgs []string) ([]string, error) {
	updated := false
	seen := map[string]bool{}
	queue := slices.Clone(pkgs)
	var files []string
	for len(queue) > 0 {
		pkg := queue[0]
		queue = queue[1:]
		if seen[pkg] {
			continue
		}
		seen[pkg] = true
		deb, err := findDeb(dir, pkg)
		if err != nil {
			if err := aptDownload(ctx, dir, pkg); err != nil {
				if updated {
					return nil, err
				}
				// A fresh machine may have empty package lists.
				if out, uerr := exec.CommandContext(ctx, "apt-get", "update", "-qq").CombinedOutput(); uerr != nil {
					return nil, fmt.Errorf("apt-get update: %w: %w: %s", ErrCommand, uerr, bytes.TrimSpace(out))
				}
				updated = true
				if err := aptDownload(ctx, dir, pkg); err != nil {
					return nil, err
				}
			}
			if deb, err = findDeb(dir, pkg); err != nil {
				return nil, err
			}
		}
		files = append(files, deb)
		out, err := exec.CommandContext(ctx, "dpkg-deb", "-f", deb, "Depends").Output()
		if err != nil {
			return nil, fmt.Errorf("reading dependencies of %s: %w", deb, err)
		}
		for _, dep := range libDepends(string(out)) {
			if !seen[dep] && !installed(ctx, dep) {
				queue = append(queue, dep)
			}
		}
	}
	return files, nil
}

// libDepends returns the lib* package names in a Depends field, taking
// the first of alternatives and dropping version constraints.
func libDepends(field string) []string {
	var out []string
	for _, d := range strings.Split(field, ",") {
		alt, _, _ := strings.Cut(d, "|")
		name, _, _ := strings.Cut(strings.TrimSpace(alt), " ")
		name, _, _ = strings.Cut(name, ":") // libfoo:any
		if strings.HasPrefix(name, "lib") {
			out = append(out, name)
		}
	}
	return out
}

func aptDownload(ctx context.Context, dir, pkg string) error {
	cmd := exec.CommandContext(ctx, "apt-get", "download", "-qq", pkg)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("apt-get download %s: %w: %w: %s", pkg, ErrCommand, err, bytes.TrimSpace(out))
	}
	return nil
}

// findDeb returns the downloaded .deb of pkg in dir (named pkg_version_arch.deb).
func findDeb(dir, pkg string) (string, error) {
	m, err := filepath.Glob(filepath.Join(dir, pkg+"_*.deb"))
	if err != nil || len(m) == 0 {
		return "", fmt.Errorf("no downloaded package %s in %s: %w", pkg, dir, os.ErrNotExist)
	}
	return m[len(m)-1], nil
}

// installed reports whether dpkg lists pkg as installed.
func installed(ctx context.Context, pkg string) bool {
	out, err := exec.CommandContext(ctx, "dpkg-query", "-W", "-f=${db:Status-Status}", pkg).Output()
	return err == nil && strings.TrimSpace(string(out)) == "installed"
}

// libPath lists the unpacked multiarch library directories.
func libPath(root string) string {
	var dirs []string
	for _, pat := range []string{"usr/lib/*-linux-gnu", "lib/*-linux-gnu", "usr/lib"} {
		m, _ := filepath.Glob(filepath.Join(root, pat))
		dirs = append(dirs, m...)
	}
	return strings.Join(dirs, ":")
}

// check verifies that the binaries exist and ldd finds all their libraries.
func (p *Packages) check(ctx context.Context) error {
	for _, bin := range []string{p.ProFTPD, p.PureFTPd, p.PurePw} {
		cmd := exec.CommandContext(ctx, "ldd", bin)
		cmd.Env = p.Env()
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("checking %s: %w: %w: %s", bin, ErrCommand, err, bytes.TrimSpace(out))
		}
		if bytes.Contains(out, []byte("not found")) {
			return fmt.Errorf("checking %s: %w: missing libraries:\n%s", bin, ErrCommand, out)
		}
	}
	return nil
}

// execEnv returns a command in the host context that runs name with p's
// libraries.
func execEnv(ctx context.Context, p *Packages, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = p.Env()
	return cmd
}
