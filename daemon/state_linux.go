package daemon

import (
	"encoding/json"
	"errors"
	"fmt"
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
type stateStore struct {
	dir     string
	log     *slog.Logger
	pending map[uint64]conntrack.FlowState // lazy writes
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
		// released: 6 µs on tmpfs, 95 µs on the ext4 of a test VM.
		log.Warn("state directory is not on tmpfs: every rewrite waits for a file write; use a directory under /run or /dev/shm",
			"state_dir", dir, "fs_magic", fmt.Sprintf("%#x", uint32(fs.Type)))
	}
	return &stateStore{dir: dir, log: log, pending: map[uint64]conntrack.FlowState{}}, nil
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
			os.Remove(p) // a write interrupted by a crash
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
		tmp := s.path(st.Session) + ".tmp"
		if err = os.WriteFile(tmp, b, 0o600); err == nil {
			err = os.Rename(tmp, s.path(st.Session))
		}
	}
	if err != nil {
		s.errors++
		s.log.Error("saving connection state; a restart would lose this connection's sequence offsets",
			"session", st.Session, "conn", st.Conn.String(), "err", err)
		return
	}
	s.writes++
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
	if err := os.Remove(s.path(session)); err != nil && !errors.Is(err, os.ErrNotExist) {
		s.log.Warn("removing saved connection state", "session", session, "err", err)
	}
}
