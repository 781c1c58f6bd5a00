package daemon

import (
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/ftpalg/ftpalg/metrics"
	"github.com/ftpalg/ftpalg/pinsync"
	"github.com/ftpalg/ftpalg/rules"
)

// PinSync is ftpalg's side of the pinhole sync between the two routers of
// a pair: it opens the pinholes the other router sends (checked against
// this router's policy), answers a resync request with this router's own
// pinholes, and counts and logs what it refused. The link itself
// (pinsync.Link) calls Message and Refused from its reader.
//
// When a pinhole is used or closed on the sender, the receiver is not
// told: its copy admits only the data connection the sender's admitted,
// and expires by itself within --pinhole-timeout (its public port stays
// reserved that long). A "closed" message would save that, but could be
// lost like any datagram, so correctness could not rest on it anyway.
type PinSync struct {
	pins   *Pinholes
	policy pinsync.Policy
	log    *slog.Logger

	refusals, sendFailures logLimit
}

// logLimit lets one line through per refusalLogEvery and counts the rest.
type logLimit struct {
	mu         sync.Mutex
	last       time.Time
	suppressed int
}

// allow reports whether to log now, and how many were suppressed since
// the last line.
func (l *logLimit) allow(now time.Time) (bool, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Sub(l.last) < refusalLogEvery {
		l.suppressed++
		return false, 0
	}
	n := l.suppressed
	l.last, l.suppressed = now, 0
	return true, n
}

// refusalLogEvery bounds refusal log lines: a peer (or a stranger) that
// floods the port gets one line per interval and a count of the rest.
const refusalLogEvery = time.Second

// NewPinSync returns the handler for pins, whose pinhole timeout is the
// longest a received pinhole may have.
func NewPinSync(pins *Pinholes, log *slog.Logger) *PinSync {
	return &PinSync{pins: pins, policy: pinsync.Policy{MaxTimeout: pins.timeout}, log: log}
}

// Message handles one decoded datagram from the peer.
func (s *PinSync) Message(from netip.AddrPort, m pinsync.Message) {
	switch m.Type {
	case pinsync.TypeResync:
		n := s.pins.Resend()
		s.log.Info("pinhole resync requested by the other router", "from", from.String(), "sent", n)
		return
	}
	if err := pinsync.Check(m, s.policy); err != nil {
		s.Refused(from, err)
		return
	}
	p := rules.Pinhole{Peer: m.Peer, Public: m.Public, Target: m.Target}
	if err := s.pins.OpenSynced(m.Session, p, m.Timeout); err != nil {
		s.Refused(from, err)
		return
	}
	s.pins.countSync(metrics.SyncReceived)
	// peer_session, not session: the number is the sender's, and the same
	// number names another connection in this router's own lines.
	s.log.Info("synced pinhole opened", "peer_session", m.Session, "from", from.String(), "pinhole", p.String(), "timeout", m.Timeout.String())
}

// Refused counts and logs (rate-limited) a datagram that was not opened.
func (s *PinSync) Refused(from netip.AddrPort, err error) {
	s.pins.countSync(metrics.SyncRefused)
	if ok, n := s.refusals.allow(time.Now()); ok {
		s.log.Warn("synced pinhole refused", "from", from.String(), "err", err, "suppressed_since_last", n)
	}
}

// SendFailed counts a datagram the link could not send, logged at most
// once per interval (the peer router is down: every pinhole fails).
func (s *PinSync) SendFailed(err error) {
	s.pins.countSync(metrics.SyncSendFailed)
	if ok, n := s.sendFailures.allow(time.Now()); ok {
		s.log.Warn("pinhole not synced to the other router", "err", err, "suppressed_since_last", n)
	}
}
