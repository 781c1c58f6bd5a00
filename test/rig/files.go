package rig

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
)

// WriteRandomFile creates path (mode 0644, world-readable so an anonymous
// FTP server may serve it) holding n random bytes and returns their
// SHA-256 in hex. Random content defeats compression and makes any
// corrupted or misplaced byte visible in the digest.
func WriteRandomFile(path string, n int64) (sum string, err error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return "", fmt.Errorf("creating random file %s: %w", path, err)
	}
	defer func() {
		if cerr := f.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("closing random file %s: %w", path, cerr)
		}
	}()
	h := sha256.New()
	if _, err := io.CopyN(io.MultiWriter(f, h), rand.Reader, n); err != nil {
		return "", fmt.Errorf("writing %d random bytes to %s: %w", n, path, err)
	}
	// OpenFile's mode is filtered by the umask; make the file readable
	// regardless.
	if err := f.Chmod(0o644); err != nil {
		return "", fmt.Errorf("chmod random file %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// FileSHA256 returns the hex SHA-256 of the file at path.
func FileSHA256(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("hashing %s: %w", path, err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("hashing %s: %w", path, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
