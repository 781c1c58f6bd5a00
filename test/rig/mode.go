package rig

import "fmt"

// Mode is an FTP data-connection mode, named after the command that sets
// it up.
type Mode int

const (
	// PORT is active mode with the IPv4-only PORT command.
	PORT Mode = iota + 1
	// EPRT is active mode with the RFC 2428 EPRT command.
	EPRT
	// PASV is passive mode with PASV and its 227 reply.
	PASV
	// EPSV is passive mode with RFC 2428 EPSV and its 229 reply.
	EPSV
)

// Modes returns all modes, for table tests.
func Modes() []Mode { return []Mode{PORT, EPRT, PASV, EPSV} }

// String returns the mode's command name.
func (m Mode) String() string {
	switch m {
	case PORT:
		return "PORT"
	case EPRT:
		return "EPRT"
	case PASV:
		return "PASV"
	case EPSV:
		return "EPSV"
	}
	return fmt.Sprintf("Mode(%d)", int(m))
}

// Active reports whether the server opens the data connection.
func (m Mode) Active() bool { return m == PORT || m == EPRT }

// curlArgs returns the curl options that force mode m.
//
// curl uses EPSV (then PASV) by default and, with -P, EPRT (then PORT); the
// --disable-* flags stop the extended command so the classic one is used.
// For PASV, --no-ftp-skip-pasv-ip matters: since 7.74 curl by default
// ignores the address in a 227 reply and reuses the control connection's,
// which would hide exactly the private address an ALG has to rewrite.
func curlArgs(m Mode) ([]string, error) {
	switch m {
	case PORT:
		return []string{"--ftp-port", "-", "--disable-eprt"}, nil
	case EPRT:
		return []string{"--ftp-port", "-"}, nil
	case PASV:
		return []string{"--ftp-pasv", "--disable-epsv", "--no-ftp-skip-pasv-ip"}, nil
	case EPSV:
		return []string{"--ftp-pasv"}, nil
	}
	return nil, fmt.Errorf("curl flags for %v: %w", m, ErrMode)
}

// fallbacks lists, per mode, the data-connection commands curl may try
// instead when the requested one is refused. A transcript containing one
// of them means the transfer did not test the requested mode.
func (m Mode) fallbacks() []string {
	switch m {
	case EPRT:
		return []string{"PORT", "LPRT"}
	case EPSV:
		return []string{"PASV"}
	}
	return nil
}
