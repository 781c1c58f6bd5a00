package conntrack

import (
	"fmt"

	"github.com/ftpalg/ftpalg/alg"
)

// Hook is where on the machine a packet was queued: forwarded, delivered
// to a local socket, or sent by one. With the side that sent the packet it
// decides the connection's Path.
//
// The engine keys flows by one view of the addresses, post-DNAT and
// pre-SNAT in both directions, and each of the three hooks gives that view:
// mangle FORWARD and mangle INPUT run after nat PREROUTING (DNAT, and the
// undoing of SNAT for replies) and before nat POSTROUTING / nat INPUT
// (SNAT, and the undoing of DNAT for replies); mangle OUTPUT runs before
// nat POSTROUTING as well. The one exception is a DNAT that nat OUTPUT
// applies to the control connection of a local client (a transparent
// redirect of the machine's own FTP traffic): mangle OUTPUT runs before it,
// so the two directions would name different servers. That case is not
// supported.
type Hook uint8

const (
	HookForward  Hook = iota // mangle FORWARD: neither end is this machine
	HookLocalIn              // mangle INPUT: the packet ends on this machine
	HookLocalOut             // mangle OUTPUT: the packet starts on this machine
)

func (h Hook) String() string {
	switch h {
	case HookForward:
		return "forward"
	case HookLocalIn:
		return "input"
	case HookLocalOut:
		return "output"
	}
	return fmt.Sprintf("hook(%d)", uint8(h))
}

// Path is which end of a control connection, if any, is this machine.
type Path uint8

const (
	PathForward     Path = iota // forwarded between two other machines
	PathLocalServer             // the FTP server runs on this machine
	PathLocalClient             // the FTP client runs on this machine
)

func (p Path) String() string {
	switch p {
	case PathForward:
		return "forward"
	case PathLocalServer:
		return "local-server"
	case PathLocalClient:
		return "local-client"
	}
	return fmt.Sprintf("path(%d)", uint8(p))
}

// pathOf tells the path of a connection from one of its packets: the hook
// it was queued at and the side that sent it. A client's packet arriving
// for a local socket, or a server's leaving one, means the server is local;
// the mirror cases mean the client is.
func pathOf(h Hook, from alg.Side) Path {
	switch {
	case h == HookLocalIn && from == alg.Client, h == HookLocalOut && from == alg.Server:
		return PathLocalServer
	case h == HookLocalIn && from == alg.Server, h == HookLocalOut && from == alg.Client:
		return PathLocalClient
	}
	return PathForward
}
