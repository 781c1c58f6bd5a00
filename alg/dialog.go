package alg

import (
	"math"
	"net/netip"
	"strconv"
)

// Side is the sender of a control-connection line.
type Side uint8

const (
	Client Side = iota // client to server: commands
	Server             // server to client: replies
)

func (s Side) String() string {
	switch s {
	case Client:
		return "client"
	case Server:
		return "server"
	}
	return "Side(" + strconv.Itoa(int(s)) + ")"
}

// Kind says what an address-bearing line is.
type Kind uint8

const (
	KindNone Kind = iota // not an address-bearing line
	KindPORT             // client PORT h1,h2,h3,h4,p1,p2 (RFC 959)
	KindEPRT             // client EPRT |af|addr|port| (RFC 2428)
	KindLPRT             // client LPRT af,hal,h...,pal,p1,p2 (RFC 1639)
	Kind227              // server reply to PASV (RFC 959)
	Kind228              // server reply to LPSV (RFC 1639)
	Kind229              // server reply to EPSV (RFC 2428), port only
)

func (k Kind) String() string {
	switch k {
	case KindNone:
		return "none"
	case KindPORT:
		return "PORT"
	case KindEPRT:
		return "EPRT"
	case KindLPRT:
		return "LPRT"
	case Kind227:
		return "227"
	case Kind228:
		return "228"
	case Kind229:
		return "229"
	}
	return "Kind(" + strconv.Itoa(int(k)) + ")"
}

// DefaultMaxLine is the line length limit used when Config.MaxLine is not
// positive.
const DefaultMaxLine = 4096

// queueLen bounds the commands remembered while their replies are pending.
// Clients that pipeline (lftp, some libraries) rarely have more than a
// handful in flight; see Dialog for what happens beyond it.
const queueLen = 16

// Config configures a Dialog.
type Config struct {
	// MaxLine is the longest line, without its terminator, that the engine
	// passes to ClientLine/ServerLine; longer lines go to the Overlong
	// hooks. Not positive means DefaultMaxLine; values above MaxUint32 are
	// clamped.
	MaxLine int
}

// cmd is what the dialog remembers of a client command while its reply is
// pending: only what decides how a reply is read.
type cmd uint8

const (
	cmdNone  cmd = iota // nothing outstanding (only returned by pop/peek)
	cmdOther            // any command that needs no special reply handling
	cmdPASV
	cmdEPSV
	cmdLPSV
	cmdAUTH
	cmdUSER
	cmdPASS
	// cmdCut is what a final reply answers when nothing is outstanding
	// but flagCut is set: a command a resumed dialog knows only the end
	// of, which any passive reply may answer (see Dialog.Cut). It is
	// never queued.
	cmdCut
)

// Verb names a client command as far as ftpalg's policy cares. Found
// reports it for client lines (Verb) and, for the terminating line of a
// server reply, the command that reply answers (Answers).
type Verb uint8

const (
	VerbNone  Verb = iota // not a command, or not a terminating reply
	VerbOther             // any other command
	VerbAUTH              // AUTH (RFC 2228): TLS or another protection may follow
	VerbUSER
	VerbPASS
	VerbPASV // PASV, EPSV or LPSV
)

func (c cmd) verb() Verb {
	switch c {
	case cmdNone:
		return VerbNone
	case cmdAUTH:
		return VerbAUTH
	case cmdUSER:
		return VerbUSER
	case cmdPASS:
		return VerbPASS
	case cmdPASV, cmdEPSV, cmdLPSV:
		return VerbPASV
	}
	return VerbOther // cmdCut too: its verb is unknown
}

const (
	flagGreeted  = 1 << iota // the first final reply has been seen
	flagOpaque               // AUTH was accepted with 234: TLS follows
	flagDesync               // the lost counter overflowed; never trust a passive reply again
	flagLoggedIn             // a 230 or 232 answered USER or PASS
	flagCut                  // Dialog.Cut: until the next final reply, an empty queue answers cmdCut
	// flagResumedAnswer: the queue's head is the passive command a
	// resumed dialog's labels say the next final reply answers (see
	// Resume), until a reply that can answer it comes.
	flagResumedAnswer
)

// Dialog is the FTP state of one control connection: which commands still
// await their reply (a bounded FIFO), whether a multi-line reply is open,
// and whether the channel has turned into TLS. It is a plain value of a few
// dozen bytes with no pointers, meant to be embedded in the engine's
// per-connection state; copying it snapshots the state. The zero value is
// usable and behaves like NewDialog(Config{}).
//
// Replies are matched to commands in order (RFC 959 allows no reordering):
// every client line is one command, every final server reply (a terminating
// line with code 2xx-6xx) answers the oldest outstanding command. A 227
// counts only if that command was PASV, a 228 only for LPSV, a 229 only for
// EPSV. The very first final reply is the greeting and answers nothing if
// its code is 220; any other first reply (a connection picked up in the
// middle) answers a command like every later one.
//
// The FIFO holds 16 commands. When it is full, further commands are counted
// but not remembered: their replies are matched to "some other command", so
// a passive reply among them is reported as ErrUnsolicited and not
// rewritten (fail closed). Counting keeps later replies aligned; once the
// count itself (65535) overflows, the dialog stops trusting any passive
// reply for the rest of the connection.
type Dialog struct {
	queue   [queueLen]cmd
	head    uint8
	n       uint8
	lost    uint16 // commands after the queued ones that did not fit
	maxLine uint32
	multi   [3]byte // code of the open multi-line reply; multi[0] == 0 when none
	flags   uint8
}

// NewDialog returns the state of a new control connection, as seen from
// its first byte.
func NewDialog(cfg Config) Dialog {
	var d Dialog
	switch {
	case cfg.MaxLine <= 0:
		d.maxLine = DefaultMaxLine
	case uint64(cfg.MaxLine) > math.MaxUint32:
		d.maxLine = math.MaxUint32
	default:
		d.maxLine = uint32(cfg.MaxLine)
	}
	return d
}

func (d *Dialog) limit() int {
	if d.maxLine == 0 {
		return DefaultMaxLine
	}
	return int(d.maxLine)
}

// Opaque reports that the control channel is no longer plain FTP text: the
// server accepted AUTH (RFC 2228/4217) with a 234 reply, so TLS follows.
// From then on every method returns the zero Found or false.
func (d *Dialog) Opaque() bool { return d.flags&flagOpaque != 0 }

// LoggedIn reports that the server accepted a login: a 230 or 232 reply
// answered USER or PASS. Until then nothing a client announces should open
// the firewall: a request smuggled into port 21 by a browser (NAT
// slipstreaming) or any other non-FTP client never gets that far, because
// the reply can only come after the lines that were sent with it.
func (d *Dialog) LoggedIn() bool { return d.flags&flagLoggedIn != 0 }

func (d *Dialog) push(c cmd) {
	if d.flags&flagDesync != 0 {
		return
	}
	if d.lost > 0 || int(d.n) == len(d.queue) {
		if d.lost == math.MaxUint16 {
			d.flags |= flagDesync
			d.n, d.lost = 0, 0
			return
		}
		d.lost++
		return
	}
	d.queue[(int(d.head)+int(d.n))%len(d.queue)] = c
	d.n++
}

// peek returns the command the next final reply answers.
func (d *Dialog) peek() cmd {
	switch {
	case d.flags&flagDesync != 0:
		return cmdOther
	case d.n > 0:
		return d.queue[int(d.head)%len(d.queue)]
	case d.lost > 0:
		return cmdOther
	}
	return cmdNone
}

func (d *Dialog) pop() cmd {
	c := d.peek()
	switch {
	case d.n > 0:
		d.head = uint8((int(d.head) + 1) % len(d.queue))
		d.n--
	case d.lost > 0:
		d.lost--
	}
	return c
}

// Pending returns how many client commands still await a final reply,
// including those that did not fit in the FIFO.
func (d *Dialog) Pending() int { return int(d.n) + int(d.lost) }

// ClientLine takes the next complete client line (its CRLF or LF removed)
// and records it as a command. For PORT, EPRT and LPRT it returns the
// announced endpoint; Err is set (wrapping ErrMalformed) when the verb is
// one of those but the argument is not exactly the grammar. A line longer
// than MaxLine is handled as ClientOverlong(line).
func (d *Dialog) ClientLine(line []byte) Found { return d.clientLine(line, false) }

// clientLine is ClientLine; first is ClientFirstLine's.
func (d *Dialog) clientLine(line []byte, first bool) Found {
	if d.Opaque() {
		return Found{}
	}
	if len(line) > d.limit() {
		return d.ClientOverlong(line)
	}
	c, f := parseCommand(line)
	f.Verb = c.verb()
	switch {
	case first && c == cmdOther && f.Kind == KindNone:
		d.Cut()
		return f
	case first && c.verb() == VerbPASV && c == d.peek() && d.Pending() == 1:
		// The passive command the labels said is outstanding, come
		// again: a retransmission, not a second one (a client waits
		// for the answer before it asks again).
		return f
	}
	d.push(c)
	return f
}

// ClientOverlong tells the dialog that the client sent a line longer than
// MaxLine, of which head is the start (as much as the engine kept; may be
// nil). The line counts as one command that expects an ordinary reply (an
// AUTH stays an AUTH, so a 234 still makes the dialog Opaque); its address,
// if any, is never used: for a PORT, EPRT or LPRT head the Found has Err
// wrapping ErrLineTooLong. Call it once per overlong line.
func (d *Dialog) ClientOverlong(head []byte) Found {
	if d.Opaque() {
		return Found{}
	}
	k, c := verbOf(head)
	if c != cmdAUTH {
		c = cmdOther
	}
	d.push(c)
	if k == KindNone {
		return Found{}
	}
	return Found{Kind: k, Err: newLineError(k, rTooLong)}
}

// ServerLine takes the next complete server line (its CRLF or LF removed).
// It tracks multi-line replies (RFC 959 4.2: a reply started by "ddd-"
// ends at a line that starts with the same code and a space; every line in
// between is text, whatever it looks like) and matches each final reply to
// the oldest outstanding command. For the terminating line of a 227, 228
// or 229 reply (single-line, or the last line of a multi-line reply) it
// returns the endpoint; Err wraps ErrUnsolicited when the reply does not
// answer a PASV, LPSV or EPSV respectively, and ErrMalformed when it does
// but its text is not usable. Every other line returns the zero Found. A
// line longer than MaxLine is handled as ServerOverlong(line).
func (d *Dialog) ServerLine(line []byte) Found {
	if d.Opaque() {
		return Found{}
	}
	if len(line) > d.limit() {
		return d.ServerOverlong(line)
	}
	code, ok := d.reply(line)
	if !ok {
		return Found{}
	}
	kind, answered := d.final(code)
	if kind == KindNone {
		return Found{Answers: answered.verb()}
	}
	f := parseReply(kind, line)
	f.Answers = answered.verb()
	if answered != wantCmd(kind) && answered != cmdCut {
		f.Err = newLineError(kind, rUnsolicited)
	}
	return f
}

// ServerOverlong tells the dialog that the server sent a line longer than
// MaxLine, of which head is the start. With at least the first 4 bytes the
// line is classified like any other (it may end a multi-line reply and
// answer a command); with fewer it is taken as reply text that ends
// nothing. A 227/228/229 never yields an address this way: its Found has
// Err wrapping ErrLineTooLong (or ErrUnsolicited). Call it once per
// overlong line.
func (d *Dialog) ServerOverlong(head []byte) Found {
	if d.Opaque() || len(head) < 4 {
		return Found{}
	}
	code, ok := d.reply(head)
	if !ok {
		return Found{}
	}
	kind, answered := d.final(code)
	switch {
	case kind == KindNone:
		return Found{}
	case answered != wantCmd(kind) && answered != cmdCut:
		return Found{Kind: kind, Err: newLineError(kind, rUnsolicited)}
	}
	return Found{Kind: kind, Err: newLineError(kind, rTooLong)}
}

// reply updates the multi-line state for line and reports whether it
// terminates a reply, and with which code.
func (d *Dialog) reply(line []byte) ([3]byte, bool) {
	if d.multi[0] != 0 {
		if len(line) >= 3 && [3]byte(line[:3]) == d.multi && (len(line) == 3 || line[3] == ' ') {
			code := d.multi
			d.multi = [3]byte{}
			return code, true
		}
		return [3]byte{}, false // continuation text
	}
	if len(line) < 3 || line[0] < '1' || line[0] > '6' || !isDigit(line[1]) || !isDigit(line[2]) {
		return [3]byte{}, false // not a reply line: ignore
	}
	code := [3]byte(line[:3])
	if len(line) == 3 || line[3] == ' ' {
		return code, true
	}
	if line[3] == '-' {
		d.multi = code
	}
	return [3]byte{}, false
}

// final accounts for a terminating reply line with the given code. It
// returns the address kind the code announces and the command it answers.
func (d *Dialog) final(code [3]byte) (Kind, cmd) {
	if code[0] == '1' {
		return KindNone, cmdNone // preliminary: the command stays outstanding
	}
	if d.flags&flagResumedAnswer != 0 && !canAnswer(code, d.peek()) {
		// Not the labels' passive command's answer: a reply the
		// previous process released before it wrote them, sent again
		// (see Resume). It answers nothing.
		return replyKind(code), cmdNone
	}
	d.flags &^= flagResumedAnswer
	var c cmd
	if d.flags&flagGreeted == 0 {
		d.flags |= flagGreeted
		if code != [3]byte{'2', '2', '0'} {
			c = d.pop()
		}
	} else {
		c = d.pop()
	}
	if c == cmdNone && d.flags&flagCut != 0 {
		c = cmdCut
	}
	d.flags &^= flagCut
	if code == [3]byte{'2', '3', '4'} && c == cmdAUTH {
		d.flags |= flagOpaque
		return KindNone, c
	}
	if (code == [3]byte{'2', '3', '0'} || code == [3]byte{'2', '3', '2'}) && (c == cmdUSER || c == cmdPASS) {
		d.flags |= flagLoggedIn
	}
	return replyKind(code), c
}

// canAnswer reports whether a final reply with code can answer passive
// command c: its own passive reply (227 to PASV, 228 to LPSV, 229 to EPSV)
// or a refusal (4xx, 5xx; 6xx, a protected reply, is not looked into). No
// other positive or intermediate reply answers a passive command (RFC 959
// 5.4, RFC 1639, RFC 2428).
func canAnswer(code [3]byte, c cmd) bool {
	if code[0] >= '4' {
		return true
	}
	k := replyKind(code)
	return k != KindNone && wantCmd(k) == c
}

func replyKind(code [3]byte) Kind {
	if code[0] != '2' || code[1] != '2' {
		return KindNone
	}
	switch code[2] {
	case '7':
		return Kind227
	case '8':
		return Kind228
	case '9':
		return Kind229
	}
	return KindNone
}

// wantCmd is the command a passive reply kind answers.
func wantCmd(k Kind) cmd {
	switch k {
	case Kind227:
		return cmdPASV
	case Kind228:
		return cmdLPSV
	case Kind229:
		return cmdEPSV
	}
	return cmdNone
}

// MayRewrite reports whether partial, the bytes so far of a line from side
// that has no terminator yet, could still become a line for which
// ClientLine/ServerLine returns a usable address (Kind != KindNone, Err ==
// nil). The engine holds such bytes back instead of releasing them. It never
// reports false for a prefix of a usable line (conservative; the fuzz
// targets check every prefix) and reports false as early as the grammar
// allows (tight): a client prefix must be on its way to PORT/EPRT/LPRT with
// an argument well-formed so far; a server prefix must be on its way to the
// code answering the oldest outstanding command (227 for PASV, 228 for
// LPSV, 229 for EPSV) with well-formed text so far, so the answer depends
// on the client lines already passed to ClientLine. Checks that later bytes
// could undo (port 0 while the last number may still grow) wait for the
// value to be terminated.
//
// A trailing CR is taken as the first byte of a CRLF terminator still in
// flight and ignored.
func (d *Dialog) MayRewrite(side Side, partial []byte) bool {
	if n := len(partial); n > 0 && partial[n-1] == '\r' {
		partial = partial[:n-1]
	}
	if d.Opaque() || len(partial) > d.limit() {
		return false
	}
	switch side {
	case Client:
		return mayRewriteCommand(partial)
	case Server:
		return d.mayRewriteReply(partial)
	}
	return false
}

func (d *Dialog) mayRewriteReply(p []byte) bool {
	if d.peek() == cmdNone && d.flags&flagCut != 0 {
		for _, c := range [...]cmd{cmdPASV, cmdEPSV, cmdLPSV} {
			e := *d
			e.flags &^= flagCut
			e.push(c)
			if e.mayRewriteReply(p) {
				return true
			}
		}
		return false
	}
	var code [3]byte
	var kind Kind
	switch d.peek() {
	case cmdPASV:
		code, kind = [3]byte{'2', '2', '7'}, Kind227
	case cmdLPSV:
		code, kind = [3]byte{'2', '2', '8'}, Kind228
	case cmdEPSV:
		code, kind = [3]byte{'2', '2', '9'}, Kind229
	default:
		return false
	}
	if d.multi[0] != 0 && d.multi != code {
		return false
	}
	for i := 0; i < 3; i++ {
		if i == len(p) {
			return true
		}
		if p[i] != code[i] {
			return false
		}
	}
	if len(p) == 3 {
		return true
	}
	if p[3] != ' ' {
		return false
	}
	_, r := parseReplyText(kind, p, true)
	return r == rOK || r == rMore
}

// parseReply parses a terminating 227/228/229 line.
func parseReply(k Kind, line []byte) Found {
	p, r := parseReplyText(k, line, false)
	if r != rOK {
		return Found{Kind: k, Err: newLineError(k, r)}
	}
	return p.found(k)
}

// parseReplyText parses the address in a reply line of kind k whose code
// (3 bytes) starts the line.
func parseReplyText(k Kind, line []byte, partial bool) (parsed, reason) {
	if r := badBytes(line); r != rOK {
		return parsed{}, r
	}
	if len(line) < 4 {
		return parsed{}, more(partial, rNoNumbers)
	}
	var p parsed
	var r reason
	switch k {
	case Kind227:
		p, r = parsePassive(line[4:], false, partial)
	case Kind228:
		p, r = parsePassive(line[4:], true, partial)
	default:
		p, r = parse229(line[4:], partial)
	}
	if r != rOK {
		return parsed{}, r
	}
	p.start += 4
	p.end += 4
	return p, rOK
}

// badBytes rejects bytes that never belong in an address line: NUL, which
// C servers read as end of string, and the telnet IAC byte.
func badBytes(b []byte) reason {
	switch {
	case hasByte(b, 0):
		return rNUL
	case hasByte(b, iac):
		return rTelnet
	}
	return rOK
}

// Found is what ClientLine/ServerLine report about one line.
type Found struct {
	// Kind is KindNone for lines that carry no address.
	Kind Kind
	// Addr is the announced endpoint when Err is nil (and, for logging
	// only, when an unsolicited reply parses). For 229 only the port is
	// known and Addr.Addr() is the zero netip.Addr.
	Addr netip.AddrPort
	// Err is non-nil when the line is of this Kind but must not be used:
	// it wraps ErrMalformed, ErrUnsolicited or ErrLineTooLong.
	Err error
	// Verb is, for a client line, the command it is.
	Verb Verb
	// Answers is, for the terminating line of a final server reply, the
	// command the reply answers (VerbNone for every other server line).
	Answers Verb

	start, end int  // span of the address text in the line
	delim      byte // EPRT/229 delimiter
	padded     bool // numbers zero-padded to 3 digits
}

func (p parsed) found(k Kind) Found {
	return Found{Kind: k, Addr: p.addr, start: p.start, end: p.end, delim: p.delim, padded: p.padded}
}

// Usable reports whether f carries an address that may be acted on and
// rewritten.
func (f Found) Usable() bool { return f.Kind != KindNone && f.Err == nil }
