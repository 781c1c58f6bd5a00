package rig

import (
	"fmt"
	"net/netip"
)

// ServerKind names an FTP server program from Debian.
type ServerKind int

const (
	// Vsftpd is the installed vsftpd.
	Vsftpd ServerKind = iota + 1
	// ProFTPD is proftpd-core, unpacked by FetchPackages.
	ProFTPD
	// PureFTPd is pure-ftpd, unpacked by FetchPackages.
	PureFTPd
)

// Servers returns all server programs, for table tests.
func Servers() []ServerKind { return []ServerKind{Vsftpd, ProFTPD, PureFTPd} }

// String returns the program's name.
func (s ServerKind) String() string {
	switch s {
	case Vsftpd:
		return "vsftpd"
	case ProFTPD:
		return "proftpd"
	case PureFTPd:
		return "pure-ftpd"
	}
	return fmt.Sprintf("ServerKind(%d)", int(s))
}

// Credentials the servers accept. vsftpd and proftpd take any password
// for anonymous; pure-ftpd gets a virtual user with this name.
const (
	anonUser     = "anonymous"
	anonPassword = "ftpalg@"
	// VirtualUser and VirtualPassword log in to pure-ftpd.
	VirtualUser     = "ftpalg"
	VirtualPassword = "ftpalg-test"
)

// PortRange is an inclusive range of TCP ports.
type PortRange struct{ First, Last uint16 }

// IsZero reports whether the range is unset.
func (p PortRange) IsZero() bool { return p.First == 0 && p.Last == 0 }

// ServerOptions configures StartServer. The zero value is the stock
// server behind NAT: no passive address, passive ports from the whole
// ephemeral range, downloads only.
type ServerOptions struct {
	// Upload makes the FTP root's "upload" directory writable.
	Upload bool
	// MasqueradeAddress is the address announced in 227 replies instead
	// of the server's own (proftpd MasqueradeAddress, vsftpd pasv_address,
	// pure-ftpd -P): the admin's manual fix that an ALG makes
	// unnecessary, and must then leave alone.
	MasqueradeAddress netip.Addr
	// PassivePorts limits the passive data ports (proftpd PassivePorts,
	// vsftpd pasv_min_port/pasv_max_port, pure-ftpd -p), as admins do to
	// open a fixed range in the firewall.
	PassivePorts PortRange
}

func (o ServerOptions) validate() error {
	if !o.PassivePorts.IsZero() && (o.PassivePorts.First == 0 || o.PassivePorts.First > o.PassivePorts.Last) {
		return fmt.Errorf("passive ports %d-%d: %w", o.PassivePorts.First, o.PassivePorts.Last, ErrConfig)
	}
	return nil
}
