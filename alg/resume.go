package alg

// Answer says what the next final server reply answers, as far as a process
// that takes a connection over needs to know: whether it may be a passive
// reply to rewrite, and of which kind. It is what ftpalg keeps of a Dialog
// in the connection's conntrack labels (2 bits), so its values are fixed.
type Answer uint8

const (
	AnswerNone Answer = iota // nothing outstanding, or a command whose reply carries no address
	AnswerPASV               // a 227 answers it
	AnswerEPSV               // a 229 answers it
	AnswerLPSV               // a 228 answers it
)

func (a Answer) String() string {
	switch a {
	case AnswerNone:
		return "none"
	case AnswerPASV:
		return "PASV"
	case AnswerEPSV:
		return "EPSV"
	case AnswerLPSV:
		return "LPSV"
	}
	return "Answer(?)"
}

// Answer returns what the next final server reply answers.
func (d *Dialog) Answer() Answer {
	switch d.peek() {
	case cmdPASV:
		return AnswerPASV
	case cmdEPSV:
		return AnswerEPSV
	case cmdLPSV:
		return AnswerLPSV
	}
	return AnswerNone
}

// Resume returns the dialog of a connection that another process tracked,
// known only by what that process kept in the connection's conntrack entry:
// whether the server accepted a login, and what the next final reply
// answers. The greeting is taken as seen; any further outstanding commands
// are unknown, and their replies answer nothing (they pop an empty queue,
// which keeps later replies aligned once the client sends its next command).
// An unknown Answer is taken as AnswerNone: a passive reply then counts as
// unsolicited (fail closed).
//
// The labels' next final reply is the next one after what the previous
// process had released when it wrote them. A reply it released before (the
// 200 to a PORT, the 226 of a transfer) comes again when the server's
// retransmission timeout fires before the client's ACK of it reaches the
// server, and it may be the first segment the new process sees: taken as
// the answer, it used up the passive command, and the real 227 that
// followed was refused as unsolicited and passed unrewritten
// (conntrack.TestRestartRegressions, seed 4002). Replies come in the order
// of the commands (RFC 959), so until one that can answer the passive
// command comes (its own 227, 228 or 229, or a 4xx or 5xx refusal), a final
// reply answers nothing. A refusal sent again is still taken as the
// answer: the passive reply after it is then refused (fail closed).
func Resume(cfg Config, loggedIn bool, next Answer) Dialog {
	d := NewDialog(cfg)
	d.flags |= flagGreeted
	if loggedIn {
		d.flags |= flagLoggedIn
	}
	switch next {
	case AnswerPASV:
		d.push(cmdPASV)
	case AnswerEPSV:
		d.push(cmdEPSV)
	case AnswerLPSV:
		d.push(cmdLPSV)
	}
	if d.n > 0 {
		d.flags |= flagResumedAnswer
	}
	return d
}

// Replay parses a line that d has already accounted for: a retransmission
// of a line the previous process rewrote, arriving at a process that
// resumed the connection after it. The dialog is not changed. A client line
// is parsed as the command it is; a server line as a terminating reply to
// the passive command its code answers (227 to PASV, 228 to LPSV, 229 to
// EPSV), since the previous process only rewrote such a reply when it did
// answer one. Any other line gives what ServerLine would say now.
func (d Dialog) Replay(side Side, line []byte) Found {
	if side == Client {
		return d.ClientLine(line)
	}
	if len(line) >= 3 {
		if want := wantCmd(replyKind([3]byte(line[:3]))); want != cmdNone && (len(line) == 3 || line[3] == ' ') {
			d.multi = [3]byte{}
			d.head, d.n, d.lost = 0, 0, 0
			d.flags &^= flagDesync
			d.flags |= flagGreeted
			d.push(want)
		}
	}
	return d.ServerLine(line)
}

// LineStart reports whether b, the first bytes a process sees of a
// connection it resumed, can begin a line from side: a client command starts
// with a letter, a server reply line with three digits and a space or a
// hyphen. Real clients and servers write each command and each reply line in
// one piece, so the first segment after a takeover starts at a line; this
// check keeps a segment that obviously does not (the middle of a long
// multi-line reply) from being read as one. Text lines inside a multi-line
// reply pass it and are read as reply lines, which the dialog ignores.
func LineStart(side Side, b []byte) bool {
	if len(b) == 0 {
		return false
	}
	if side == Client {
		return commandStart(b)
	}
	return len(b) >= 4 && b[0] >= '1' && b[0] <= '6' && isDigit(b[1]) && isDigit(b[2]) && (b[3] == ' ' || b[3] == '-')
}

// commandStart reports whether b starts with a word of 3 or 4 letters (every
// FTP verb) that ends at a space, a line end or the end of b, and is not the
// tail of a verb whose start ftpalg may have held back (PORT, EPRT, LPRT,
// AUTH cut after "P", "E", "L" or "A": "ORT", "PRT", "UTH"). A shorter
// word could be any verb's tail ("T" of "POR" + "T").
func commandStart(b []byte) bool {
	w := 0
	for w < len(b) && (b[w]|0x20 >= 'a' && b[w]|0x20 <= 'z') {
		w++
	}
	if w < 3 || w > 4 || w < len(b) && b[w] != ' ' && b[w] != '\r' && b[w] != '\n' {
		return false
	}
	var word [4]byte
	for i := range w {
		word[i] = b[i] &^ 0x20
	}
	switch string(word[:w]) {
	case "ORT", "PRT", "UTH":
		return false
	}
	return true
}

// MayStartLine is LineStart for bytes that start exactly where the receiver's
// acknowledgement says it is, so that nothing held back can precede them: it also accepts a segment too short to tell, whose bytes so far
// begin a line ("2", "22", "227").
func MayStartLine(side Side, b []byte) bool {
	if side == Client {
		c := b[0] | 0x20
		return len(b) > 0 && c >= 'a' && c <= 'z'
	}
	if len(b) >= 4 {
		return LineStart(side, b)
	}
	for i, c := range b {
		if !isDigit(c) || i == 0 && (c < '1' || c > '6') {
			return false
		}
	}
	return len(b) > 0
}

// Cut tells a resumed dialog that the client's first line was cut by the
// takeover: its start went through the previous process, which may not have
// seen it end (then the labels could not say what it was). If nothing else
// is outstanding when the next final reply comes, that reply answers the cut
// line, and may be any passive reply: had the line been PASV, EPSV or LPSV,
// its 227/229/228 must still be rewritten. Such a reply is checked like any
// other (the address must be the server's own), so at worst a pinhole opens
// from the client to the server. If the previous process did see the line
// end (a duplicate of its last bytes), its reply has passed already: the
// next final reply answers the next command as usual, and ends the cut.
func (d *Dialog) Cut() { d.flags |= flagCut }

// ClientFirstLine is ClientLine for the first client line a resumed dialog
// gets, which may be the tail of a line whose start went through the
// previous process ("V" of an "EPSV" cut after "EPS"). A line that is none
// of the commands ftpalg acts on counts as cut (see Cut), not as a command
// of its own: the reply that answers it may be passive. The passive command
// the labels say is outstanding, sent again, is taken as a retransmission of
// it, not as a second command.
func (d *Dialog) ClientFirstLine(line []byte) Found { return d.clientLine(line, true) }
