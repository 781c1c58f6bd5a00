package alg

import "bytes"

// Telnet command bytes (RFC 854) that may precede an FTP command.
const (
	telnetSE   = 240
	telnetSB   = 250
	telnetWILL = 251
	telnetDONT = 254
)

// skipTelnet skips the spaces and telnet commands that may precede a verb:
// IAC followed by a two-byte command (IP, DM, NOP, ...), IAC WILL/WONT/DO/
// DONT <option>, and IAC SB ... IAC SE. It returns the index of the first
// other byte. IAC IAC (a data byte 255) and IAC followed by a byte that is
// not a command end the prefix with rSyntax: no verb starts with 255. In
// partial mode a prefix cut inside a sequence returns rMore.
func skipTelnet(b []byte, partial bool) (int, reason) {
	i := 0
	for {
		i = skipSpaces(b, i)
		if i == len(b) || b[i] != iac {
			return i, rOK
		}
		if i+1 == len(b) {
			return i, more(partial, rSyntax)
		}
		switch c := b[i+1]; {
		case c == telnetSB:
			j := i + 2
			for {
				if j+1 >= len(b) {
					return i, more(partial, rSyntax)
				}
				if b[j] == iac && b[j+1] == telnetSE {
					break
				}
				j++
			}
			i = j + 2
		case c >= telnetWILL && c <= telnetDONT:
			if i+2 >= len(b) {
				return i, more(partial, rSyntax)
			}
			i += 3
		case c >= telnetSE && c < telnetSB:
			i += 2
		default:
			return i, rSyntax
		}
	}
}

// lookupVerb classifies a verb, case-insensitively (RFC 959 5.3): the
// address kind it announces and what its reply depends on.
func lookupVerb(v []byte) (Kind, cmd) {
	if len(v) != 4 {
		return KindNone, cmdOther
	}
	var u [4]byte
	for i := range u {
		u[i] = upper(v[i])
	}
	switch string(u[:]) {
	case "PORT":
		return KindPORT, cmdOther
	case "EPRT":
		return KindEPRT, cmdOther
	case "LPRT":
		return KindLPRT, cmdOther
	case "PASV":
		return KindNone, cmdPASV
	case "EPSV":
		return KindNone, cmdEPSV
	case "LPSV":
		return KindNone, cmdLPSV
	case "AUTH":
		return KindNone, cmdAUTH
	case "USER":
		return KindNone, cmdUSER
	case "PASS":
		return KindNone, cmdPASS
	}
	return KindNone, cmdOther
}

// addressVerbPrefix reports whether v could be the start of an address
// verb.
func addressVerbPrefix(v []byte) bool {
	for _, name := range [...]string{"PORT", "EPRT", "LPRT"} {
		if len(v) <= len(name) && equalFold(v, name[:len(v)]) {
			return true
		}
	}
	return false
}

// upper folds ASCII letters to upper case.
func upper(c byte) byte {
	if 'a' <= c && c <= 'z' {
		return c - 'a' + 'A'
	}
	return c
}

func equalFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range b {
		if upper(b[i]) != s[i] {
			return false
		}
	}
	return true
}

// splitVerb finds the verb of a command line: after the telnet prefix and
// spaces, up to the next space or end of line. It returns the verb's
// bounds; ok is false if the telnet prefix is broken.
func splitVerb(line []byte) (start, end int, ok bool) {
	start, r := skipTelnet(line, false)
	if r != rOK {
		return 0, 0, false
	}
	end = start
	for end < len(line) && line[end] != ' ' {
		end++
	}
	return start, end, true
}

// verbOf classifies the verb of a command line.
func verbOf(line []byte) (Kind, cmd) {
	start, end, ok := splitVerb(line)
	if !ok {
		return KindNone, cmdOther
	}
	return lookupVerb(line[start:end])
}

// parseCommand classifies a complete client line and parses the argument
// of PORT, EPRT and LPRT.
//
// A command is "<telnet prefix><spaces><verb>[ <spaces><argument>]<spaces>".
// PASV and LPSV count as passive requests only without an argument, EPSV
// only with none, "1" or "2" (EPSV ALL expects a 200, not a 229); anything
// else is an ordinary command whose 227/228/229 reply would be unsolicited.
// An empty line, or one whose telnet prefix is broken, still counts as a
// command: servers answer it (usually 500).
func parseCommand(line []byte) (cmd, Found) {
	start, end, ok := splitVerb(line)
	if !ok {
		return cmdOther, Found{}
	}
	kind, c := lookupVerb(line[start:end])
	arg := skipSpaces(line, end)
	switch c {
	case cmdPASV, cmdLPSV:
		if arg != len(line) {
			c = cmdOther
		}
	case cmdEPSV:
		a := trimSpaces(line[arg:])
		if !(len(a) == 0 || len(a) == 1 && (a[0] == '1' || a[0] == '2')) {
			c = cmdOther
		}
	}
	if kind == KindNone {
		return c, Found{}
	}
	p, r := parseArg(kind, line, arg, false)
	if r != rOK {
		return c, Found{Kind: kind, Err: newLineError(kind, r)}
	}
	return c, p.found(kind)
}

func trimSpaces(b []byte) []byte {
	i, j := 0, len(b)
	for i < j && b[i] == ' ' {
		i++
	}
	for j > i && b[j-1] == ' ' {
		j--
	}
	return b[i:j]
}

// parseArg parses the argument of an address command of kind k that starts
// at line[arg:] and runs to the end of line. The span is made absolute.
func parseArg(k Kind, line []byte, arg int, partial bool) (parsed, reason) {
	// NUL anywhere in the line; IAC in the argument (IAC in the telnet
	// prefix before the verb is legitimate).
	if hasByte(line, 0) {
		return parsed{}, rNUL
	}
	if hasByte(line[arg:], iac) {
		return parsed{}, rTelnet
	}
	b := line[arg:]
	if len(b) == 0 {
		return parsed{}, more(partial, rMissing)
	}
	var p parsed
	var r reason
	switch k {
	case KindEPRT:
		p, r = parseEPRT(b, partial)
	default:
		if !isDigit(b[0]) {
			return parsed{}, rSyntax
		}
		if k == KindPORT {
			p, r = parseShort(b, partial)
		} else {
			p, r = parseLong(b, partial)
		}
		if r == rOK && !allSpaces(b[p.end:]) {
			r = rJunk
		}
	}
	if r != rOK {
		return parsed{}, r
	}
	p.start += arg
	p.end += arg
	return p, rOK
}

func hasByte(b []byte, c byte) bool { return bytes.IndexByte(b, c) >= 0 }

// mayRewriteCommand is MayRewrite for the client side: the verb so far must
// be a prefix of PORT, EPRT or LPRT and the argument so far viable.
func mayRewriteCommand(p []byte) bool {
	if hasByte(p, 0) {
		return false
	}
	start, r := skipTelnet(p, true)
	switch {
	case r == rMore:
		return true
	case r != rOK:
		return false
	case start == len(p):
		return true
	}
	end := start
	for end < len(p) && p[end] != ' ' {
		end++
	}
	verb := p[start:end]
	if end == len(p) {
		return addressVerbPrefix(verb) // the verb may still grow
	}
	kind, _ := lookupVerb(verb)
	if kind == KindNone {
		return false
	}
	_, r = parseArg(kind, p, skipSpaces(p, end), true)
	return r == rOK || r == rMore
}
