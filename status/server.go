package status

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// Errors of the status socket.
var (
	ErrInUse      = errors.New("another process is serving this status socket")
	ErrNotSocket  = errors.New("exists and is not a socket")
	ErrPathLength = errors.New("socket path too long")
	ErrNotRunning = errors.New("ftpalg is not running, or runs without a status socket")
	ErrResponse   = errors.New("unexpected response")
)

const (
	// SnapshotPath is the URL path of the snapshot.
	SnapshotPath = "/v1/snapshot"
	// socketMode keeps the view to root: it lists every FTP client and
	// server through the router.
	socketMode = 0o600
	// maxPath is sun_path's capacity without the terminating NUL.
	maxPath = 107
	// maxBody bounds a snapshot read by Fetch: 65536 tracked connections
	// (the engine's default limit) and as many pinholes fit with room.
	maxBody = 64 << 20
)

// Listener is a status socket being served.
type Listener struct {
	path string
	ln   *net.UnixListener
	fi   os.FileInfo // the socket file created, so only it is removed
}

// Listen creates the status socket at path, mode 0600, replacing a stale
// one that a crashed daemon left (nothing accepts on it), and refusing to
// touch a live one or a file that is not a socket. The parent directory is
// created if missing. Call it at start-up so a bad path stops the daemon
// with a clear error; then Serve.
func Listen(path string) (*Listener, error) {
	tmp := path + ".new"
	if len(tmp) > maxPath {
		return nil, fmt.Errorf("status socket %s: %w (at most %d bytes)", path, ErrPathLength, maxPath-len(".new"))
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("status socket %s: %w", path, err)
	}
	for _, p := range []string{path, tmp} {
		if err := removeStale(p); err != nil {
			return nil, fmt.Errorf("status socket %s: %w", p, err)
		}
	}
	// Bind under a temporary name, set the mode, then rename into place:
	// the socket is never reachable at path with the umask's mode.
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("status socket %s: %w", path, err)
	}
	ln.SetUnlinkOnClose(false)
	fail := func(err error) (*Listener, error) {
		ln.Close()
		os.Remove(tmp)
		return nil, fmt.Errorf("status socket %s: %w", path, err)
	}
	if err := os.Chmod(tmp, socketMode); err != nil {
		return fail(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fail(err)
	}
	fi, err := os.Lstat(path)
	if err != nil {
		return fail(err)
	}
	return &Listener{path: path, ln: ln, fi: fi}, nil
}

// removeStale removes the socket at p if nothing accepts connections on it.
func removeStale(p string) error {
	fi, err := os.Lstat(p)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.Mode().Type() != os.ModeSocket {
		return fmt.Errorf("%w (%s)", ErrNotSocket, fi.Mode().Type())
	}
	c, err := net.DialTimeout("unix", p, time.Second)
	if err == nil {
		c.Close()
		return ErrInUse
	}
	if !errors.Is(err, syscall.ECONNREFUSED) && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("checking for a live server: %w", err)
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("removing stale socket: %w", err)
	}
	return nil
}

// Path returns the socket's path.
func (l *Listener) Path() string { return l.path }

// Close stops listening and removes the socket, unless another process has
// replaced it since.
func (l *Listener) Close() error {
	err := l.ln.Close()
	if fi, serr := os.Lstat(l.path); serr == nil && os.SameFile(fi, l.fi) {
		if rerr := os.Remove(l.path); rerr != nil {
			err = errors.Join(err, rerr)
		}
	}
	if err != nil && !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("closing status socket %s: %w", l.path, err)
	}
	return nil
}

// Serve answers snapshot requests until ctx is done, then closes the
// listener and removes the socket. snapshot is called once per request,
// possibly from several goroutines at once. It returns nil after ctx ends.
func (l *Listener) Serve(ctx context.Context, snapshot func() Snapshot) error {
	srv := &http.Server{
		Handler:           Handler(snapshot),
		ReadHeaderTimeout: 5 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       30 * time.Second,
		ErrorLog:          log.New(io.Discard, "", 0), // stay quiet: the daemon logs through slog
		BaseContext:       func(net.Listener) context.Context { return ctx },
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(l.ln) }()
	var err error
	select {
	case err = <-done:
		err = fmt.Errorf("serving status socket %s: %w", l.path, err)
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		if serr := srv.Shutdown(sctx); serr != nil {
			srv.Close()
		}
		cancel()
		<-done
	}
	return errors.Join(err, l.Close())
}

// Serve listens on path (see Listen) and serves snapshots until ctx is done.
func Serve(ctx context.Context, path string, snapshot func() Snapshot) error {
	l, err := Listen(path)
	if err != nil {
		return err
	}
	return l.Serve(ctx, snapshot)
}

// Handler serves GET SnapshotPath with snapshot() as JSON.
func Handler(snapshot func() Snapshot) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+SnapshotPath, func(w http.ResponseWriter, r *http.Request) {
		s := snapshot()
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		// An error here is the client going away; nothing to tell it.
		_ = enc.Encode(s)
	})
	return mux
}

// Fetch asks the daemon behind the socket at path for a snapshot.
func Fetch(ctx context.Context, path string) (Snapshot, error) {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
		DisableKeepAlives: true,
	}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://ftpalg"+SnapshotPath, nil)
	if err != nil {
		return Snapshot{}, fmt.Errorf("status socket %s: %w", path, err)
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED) {
			return Snapshot{}, fmt.Errorf("status socket %s: %w: %w", path, ErrNotRunning, err)
		}
		return Snapshot{}, fmt.Errorf("status socket %s: %w", path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return Snapshot{}, fmt.Errorf("status socket %s: %w: %s", path, ErrResponse, resp.Status)
	}
	var s Snapshot
	body := io.LimitReader(resp.Body, maxBody)
	if err := json.NewDecoder(body).Decode(&s); err != nil {
		return Snapshot{}, fmt.Errorf("status socket %s: %w: decoding snapshot: %w", path, ErrResponse, err)
	}
	return s, nil
}
