package nlsock

import (
	"errors"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestOpenTimesOut(t *testing.T) {
	fd, err := Open(50 * time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	start := time.Now()
	_, _, err = unix.Recvfrom(fd, make([]byte, 64), 0) // nothing was asked
	if !errors.Is(err, unix.EAGAIN) {
		t.Fatalf("read with nothing to answer: %v, want EAGAIN", err)
	}
	if took := time.Since(start); took < 40*time.Millisecond || took > time.Second {
		t.Errorf("read gave up after %v, want about 50ms", took)
	}
	if e := Err("recvfrom", 50*time.Millisecond, err); !errors.Is(e, os.ErrDeadlineExceeded) {
		t.Errorf("Err(EAGAIN) = %v, want os.ErrDeadlineExceeded", e)
	}
	var se *os.SyscallError
	if e := Err("write", time.Second, unix.EPERM); !errors.As(e, &se) || !errors.Is(e, unix.EPERM) {
		t.Errorf("Err(EPERM) = %v, want an *os.SyscallError wrapping EPERM", e)
	}
}

func TestRetry(t *testing.T) {
	calls := 0
	err := Retry(time.Second, func() error {
		calls++
		if calls < 3 {
			return unix.EINTR
		}
		return unix.EPERM
	})
	if !errors.Is(err, unix.EPERM) || calls != 3 {
		t.Errorf("Retry: err %v after %d calls, want EPERM after 3", err, calls)
	}
	start := time.Now()
	err = Retry(20*time.Millisecond, func() error { return unix.EINTR })
	if !errors.Is(err, unix.EINTR) || time.Since(start) > time.Second {
		t.Errorf("endless EINTR: err %v after %v, want EINTR after about 20ms", err, time.Since(start))
	}
}
