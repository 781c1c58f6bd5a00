package rig

import "errors"

// Sentinel errors; every error the package returns wraps one of these or
// an error from the operating system.
var (
	// ErrTopology reports an unknown Topology value.
	ErrTopology = errors.New("unknown topology")
	// ErrFamily reports an unknown address family.
	ErrFamily = errors.New("unknown address family")
	// ErrNode reports an unknown Node value.
	ErrNode = errors.New("unknown node")
	// ErrPrefix reports a namespace prefix that is empty, too long or not
	// made of lowercase letters and digits.
	ErrPrefix = errors.New("invalid namespace prefix")
	// ErrClosed reports use of a rig after Close.
	ErrClosed = errors.New("rig closed")
	// ErrCommand reports a setup or diagnostic command that failed; the
	// message carries its output.
	ErrCommand = errors.New("command failed")
	// ErrCounter reports firewall counter output that could not be parsed
	// or lacks the rule looked for.
	ErrCounter = errors.New("firewall counter not found")
	// ErrNotReady reports a server that did not accept connections in time
	// or exited during start-up.
	ErrNotReady = errors.New("server not ready")
	// ErrTransfer reports a client transfer that failed (non-zero exit).
	ErrTransfer = errors.New("transfer failed")
	// ErrModeNotUsed reports a transfer that did not use the requested
	// data-connection mode (for example curl falling back from EPSV to
	// PASV), so a test would not have tested what it claims.
	ErrModeNotUsed = errors.New("requested FTP mode not used")
	// ErrMode reports an unknown Mode value.
	ErrMode = errors.New("unknown FTP mode")
	// ErrConfig reports an invalid server option.
	ErrConfig = errors.New("invalid server configuration")
)
