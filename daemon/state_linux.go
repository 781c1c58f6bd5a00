package daemon

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ftpalg/ftpalg/conntrack"
)

// RuntimePath returns base for the initial network namespace, or base with
// the namespace's cookie added before its extension, so that instances in
// different namespaces (a router's VRFs, a test rig) never share a socket
// or a state directory. The cookie (SO_NETNS_COOKIE) is unique for as long
// as the system runs, unlike the namespace's inode, which the kernel reuses
// after a namespace is deleted: a new namespace must never take over the
// state of an old one. `ftpalg status` finds its daemon the same way.
func RuntimePath(base string) string {
	id, initial := netnsID()
	if initial {
		return base
	}
	ext := filepath.Ext(base)
	return strings.TrimSuffix(base, ext) + "-" + id + ext
}

// netnsID names the calling thread's network namespace. The kernel gives
// the initial namespace cookie 1. Kernels without SO_NETNS_COOKIE (before
// 5.14) fall back to the inode, compared with PID 1's where that is
// readable.
func netnsID() (id string, initial bool) {
	if fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0); err == nil {
		cookie, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
		unix.Close(fd)
		if err == nil {
			return "c" + strconv.FormatUint(cookie, 10), cookie == 1
		}
	}
	self, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		return "", true
	}
	init, err := os.Readlink("/proc/1/ns/net")
	return strings.Trim(strings.TrimPrefix(self, "net:"), "[]"), err == nil && self == init
}

// stateStore keeps each rewritten control connection's state in a file of
// its own (session.json) under a directory on tmpfs, so that a restarted
// ftpalg can take the connection over. A file is written before the packet
// that changed a sequence mapping or the dialog is released (see
// conntrack.FlowState.Mapping); other changes are written within
// flushEvery; a file is removed when its connection ends.
//
// A file is overwritten in place by one pwrite at offset 0, padded with
// spaces (which JSON allows after a value) to the file's size when the new
// state is shorter: a process killed at any instant leaves either the old
// state or the new one, never a mix, because the kernel finishes a write
// it has begun. The former way, a temporary file renamed over the old
// one, took 31-36 µs a write on /dev/shm of the test VM (open, write,
// close, rename, and os.File's poller registration), and a PORT session
// writes several times a file; open, pwrite and close take a fraction.
type stateStore struct {
	dir     string
	log     *slog.Logger
	pending map[uint64]conntrack.FlowState // lazy writes
	sizes   map[uint64]int                 // file sizes written by this process
	writes  uint64
	errors  uint64
}

const flushEvery = 100 * time.Millisecond

func openStateStore(dir string, log *slog.Logger) (*stateStore, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating state directory %s: %w", dir, err)
	}
	var fs unix.Statfs_t
	// f_type is a 32-bit magic; Statfs_t.Type is int32 on 32-bit CPUs
	// (armv7, mips), where RAMFS_MAGIC does not fit in it as a constant.
	if err := unix.Statfs(dir, &fs); err == nil && uint32(fs.Type) != unix.TMPFS_MAGIC && uint32(fs.Type) != unix.RAMFS_MAGIC {
		// A rewrite waits for its state file before its packet is
		// released, and on a disk a write may wait for the device.
		log.Warn("state directory is not on tmpfs: every rewrite waits for a file write; use a directory under /run or /dev/shm",
			"state_dir", dir, "fs_magic", fmt.Sprintf("%#x", uint32(fs.Type)))
	}
	return &stateStore{dir: dir, log: log, pending: map[uint64]conntrack.FlowState{}, sizes: map[uint64]int{}}, nil
}

func (s *stateStore) path(session uint64) string {
	return filepath.Join(s.dir, strconv.FormatUint(session, 10)+".json")
}

// load reads the saved connections, skipping (and removing) files that
// are unreadable or older than maxAge.
func (s *stateStore) load(maxAge time.Duration) []conntrack.FlowState {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		s.log.Warn("reading saved connection state", "dir", s.dir, "err", err)
		return nil
	}
	var out []conntrack.FlowState
	for _, e := range entries {
		p := filepath.Join(s.dir, e.Name())
		if !strings.HasSuffix(e.Name(), ".json") {
			os.Remove(p) // an older version's temporary file, left by a crash
			continue
		}
		info, err := e.Info()
		if err != nil || time.Since(info.ModTime()) > maxAge {
			os.Remove(p)
			continue
		}
		b, err := os.ReadFile(p)
		var st conntrack.FlowState
		if err == nil {
			err = json.Unmarshal(b, &st)
		}
		if err != nil {
			s.log.Warn("ignoring unreadable saved connection state", "file", p, "err", err)
			os.Remove(p)
			continue
		}
		out = append(out, st)
	}
	return out
}

// save writes st now (mapping changes) or schedules it (dialog changes).
func (s *stateStore) save(st conntrack.FlowState) {
	if !st.Mapping {
		s.pending[st.Session] = st
		return
	}
	delete(s.pending, st.Session)
	s.write(st)
}

func (s *stateStore) write(st conntrack.FlowState) {
	b, err := json.Marshal(st)
	if err == nil {
		err = s.overwrite(st.Session, b)
	}
	if err != nil {
		s.errors++
		s.log.Error("saving connection state; a restart would lose this connection's sequence offsets",
			"session", st.Session, "conn", st.Conn.String(), "err", err)
		return
	}
	s.writes++
}

// overwrite replaces the content of session's file with b in one pwrite
// (see stateStore), creating the file if need be.
func (s *stateStore) overwrite(session uint64, b []byte) error {
	p := s.path(session)
	fd, err := unix.Open(p, unix.O_WRONLY|unix.O_CREAT|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return &os.PathError{Op: "open", Path: p, Err: err}
	}
	defer unix.Close(fd)
	size, ok := s.sizes[session]
	if !ok {
		// Not written by this process yet: a new file (size 0), or one a
		// previous process left for a connection taken over.
		var stat unix.Stat_t
		if err := unix.Fstat(fd, &stat); err != nil {
			return &os.PathError{Op: "fstat", Path: p, Err: err}
		}
		size = int(stat.Size)
	}
	if pad := size - len(b); pad > 0 {
		b = append(b, bytes.Repeat([]byte{' '}, pad)...)
	}
	n, err := unix.Pwrite(fd, b, 0)
	if err == nil && n < len(b) {
		err = io.ErrShortWrite
	}
	if err != nil {
		delete(s.sizes, session) // the size is unknown now
		return &os.PathError{Op: "write", Path: p, Err: err}
	}
	s.sizes[session] = len(b) // padded to size above, never shorter
	return nil
}

// flush writes the scheduled states.
func (s *stateStore) flush() {
	for id, st := range s.pending {
		s.write(st)
		delete(s.pending, id)
	}
}

func (s *stateStore) remove(session uint64) {
	delete(s.pending, session)
	delete(s.sizes, session)
	if err := os.Remove(s.path(session)); err != nil && !errors.Is(err, os.ErrNotExist) {
		s.log.Warn("removing saved connection state", "session", session, "err", err)
	}
}
