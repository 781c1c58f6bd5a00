package alg

import (
	"bytes"
	"net/netip"
)

// The parsers in this file share one convention. Each takes the bytes to
// scan and a partial flag. With partial false the input is a complete line
// (or the tail of one) and running out of input simply ends it. With partial
// true the input is a prefix of a line that is still arriving; wherever the
// input ends before the grammar is satisfied, the parser returns rMore
// ("still viable"), and it only reports another reason when no continuation
// could make the line valid. Checks that more bytes could undo (port 0 while
// the last number may still grow) are made only once the value is
// terminated, so partial mode never rejects a prefix of a valid line. The
// fuzz targets check that property.

const (
	iac = 0xff // telnet "interpret as command"

	maxTuple = 21 // numbers in the longest list: LPRT/228 af 6 (2+16+1+2)
)

// parsed is an address found by a parser, with the byte span (relative to
// the parser's input) of the text that Rewrite replaces.
type parsed struct {
	addr       netip.AddrPort
	start, end int
	delim      byte // EPRT/229 delimiter
	padded     bool // 227/228/PORT/LPRT numbers all zero-padded to 3 digits
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

// isDelim reports whether c may delimit EPRT and 229 fields (RFC 2428:
// printable ASCII 33-126; digits would be ambiguous with the numbers).
func isDelim(c byte) bool { return 33 <= c && c <= 126 && !isDigit(c) }

func isHex(c byte) bool {
	return isDigit(c) || ('a' <= c && c <= 'f') || ('A' <= c && c <= 'F')
}

func allSpaces(b []byte) bool {
	for _, c := range b {
		if c != ' ' {
			return false
		}
	}
	return true
}

func skipSpaces(b []byte, i int) int {
	for i < len(b) && b[i] == ' ' {
		i++
	}
	return i
}

// tuple is a comma-separated list of decimal bytes, as in PORT, LPRT, 227
// and 228.
type tuple struct {
	v      [maxTuple]byte
	n      int
	padded bool
}

// scanTuple scans "n(,n)*" from the start of b, where each n is 1-3 decimal
// digits with a value of at most 255, and at most max numbers. It returns the
// index just after the last number. The list ends at end of input or at the
// first byte after a number that is not a comma; the caller decides what may
// follow.
func scanTuple(b []byte, max int, t *tuple, partial bool) (int, reason) {
	i := 0
	t.n = 0
	allThree, anyLead := true, false
	for {
		start, v := i, 0
		for i < len(b) && isDigit(b[i]) {
			if i-start == 3 {
				return i, rNumber
			}
			v = v*10 + int(b[i]-'0')
			i++
		}
		if v > 255 {
			return i, rNumber
		}
		if i == start {
			if i == len(b) && partial {
				return i, rMore
			}
			// Empty field: a comma at the end or before a non-digit.
			return i, rFields
		}
		if t.n == max {
			return i, rFields
		}
		t.v[t.n] = byte(v)
		t.n++
		if i-start != 3 {
			allThree = false
		} else if b[start] == '0' {
			anyLead = true
		}
		if i == len(b) && partial {
			return i, rMore
		}
		if i == len(b) || b[i] != ',' {
			t.padded = allThree && anyLead
			return i, rOK
		}
		if t.n == max {
			return i, rFields // a comma after the last allowed number
		}
		i++ // comma
	}
}

// port combines the last two numbers of a tuple into a port.
func (t *tuple) port() uint16 { return uint16(t.v[t.n-2])<<8 | uint16(t.v[t.n-1]) }

// parseShort parses "h1,h2,h3,h4,p1,p2" (PORT and 227) from the start of b.
// What follows the list is the caller's business.
func parseShort(b []byte, partial bool) (parsed, reason) {
	var t tuple
	end, r := scanTuple(b, 6, &t, partial)
	if r != rOK {
		return parsed{}, r
	}
	if t.n != 6 {
		return parsed{}, rFields
	}
	port := t.port()
	if port == 0 {
		return parsed{}, rPortZero
	}
	a := netip.AddrFrom4([4]byte{t.v[0], t.v[1], t.v[2], t.v[3]})
	return parsed{addr: netip.AddrPortFrom(a, port), start: 0, end: end, padded: t.padded}, rOK
}

// parseLong parses RFC 1639 "af,hal,h1,...,hn,pal,p1,p2" (LPRT and 228)
// from the start of b: af 4 with hal 4, or af 6 with hal 16; pal 2.
func parseLong(b []byte, partial bool) (parsed, reason) {
	var t tuple
	end, r := scanTuple(b, maxTuple, &t, partial)
	if r == rMore {
		// A number that ends the input may still grow; judge only the
		// numbers already followed by a comma.
		final := t.n
		if len(b) > 0 && isDigit(b[len(b)-1]) {
			final--
		}
		if final >= 1 && t.v[0] != 4 && t.v[0] != 6 {
			return parsed{}, rFamily
		}
		if final >= 2 {
			hal := int(t.v[1])
			if !(t.v[0] == 4 && hal == 4 || t.v[0] == 6 && hal == 16) {
				return parsed{}, rFamily
			}
			if t.n > 2+hal+3 {
				return parsed{}, rFields
			}
			if final >= 3+hal && t.v[2+hal] != 2 {
				return parsed{}, rFields
			}
		}
		return parsed{}, rMore
	}
	if r != rOK {
		return parsed{}, r
	}
	if t.n < 2 {
		return parsed{}, rFields
	}
	af, hal := t.v[0], int(t.v[1])
	if !(af == 4 && hal == 4 || af == 6 && hal == 16) {
		return parsed{}, rFamily
	}
	if t.n != 2+hal+3 || t.v[2+hal] != 2 {
		return parsed{}, rFields
	}
	port := t.port()
	if port == 0 {
		return parsed{}, rPortZero
	}
	var a netip.Addr
	if af == 4 {
		a = netip.AddrFrom4([4]byte(t.v[2:6]))
	} else {
		a = netip.AddrFrom16([16]byte(t.v[2:18]))
		if a.Is4In6() {
			return parsed{}, rFamilyMismatch
		}
	}
	return parsed{addr: netip.AddrPortFrom(a, port), start: 0, end: end, padded: t.padded}, rOK
}

// nextField returns the bytes of b from i up to the next d, the index after
// that d, and whether a d was found.
func nextField(b []byte, i int, d byte) ([]byte, int, bool) {
	if k := bytes.IndexByte(b[i:], d); k >= 0 {
		return b[i : i+k], i + k + 1, true
	}
	return b[i:], len(b), false
}

// parseEPRT parses RFC 2428 "<d><af><d><addr><d><port><d>" from the start
// of b followed only by spaces. The span covers af through port, so a
// rewrite may change the family.
func parseEPRT(b []byte, partial bool) (parsed, reason) {
	if len(b) == 0 {
		if partial {
			return parsed{}, rMore
		}
		return parsed{}, rMissing
	}
	d := b[0]
	if !isDelim(d) {
		return parsed{}, rDelim
	}
	af, i, ok := nextField(b, 1, d)
	if !ok {
		if partial && (len(af) == 0 || len(af) == 1 && (af[0] == '1' || af[0] == '2')) {
			return parsed{}, rMore
		}
		if len(af) > 1 || len(af) == 1 && af[0] != '1' && af[0] != '2' {
			return parsed{}, rFamily
		}
		return parsed{}, rFields
	}
	if len(af) != 1 || af[0] != '1' && af[0] != '2' {
		return parsed{}, rFamily
	}
	text, i, ok := nextField(b, i, d)
	if !ok {
		if partial && viableAddrText(af[0], text) {
			return parsed{}, rMore
		}
		return parsed{}, rFields
	}
	a, r := parseEPRTAddr(af[0], text)
	if r != rOK {
		return parsed{}, r
	}
	ptext, i, ok := nextField(b, i, d)
	if !ok {
		if partial && len(ptext) <= 5 && allDigits(ptext) {
			return parsed{}, rMore
		}
		return parsed{}, rFields
	}
	port, r := parsePort(ptext)
	if r != rOK {
		return parsed{}, r
	}
	if !allSpaces(b[i:]) {
		return parsed{}, rJunk
	}
	return parsed{addr: netip.AddrPortFrom(a, port), start: 1, end: i - 1, delim: d}, rOK
}

func allDigits(b []byte) bool {
	for _, c := range b {
		if !isDigit(c) {
			return false
		}
	}
	return true
}

// viableAddrText reports whether text could be the start of an EPRT address
// of family af: the right alphabet and not longer than the longest form.
func viableAddrText(af byte, text []byte) bool {
	if af == '1' {
		if len(text) > len("255.255.255.255") {
			return false
		}
		for _, c := range text {
			if !isDigit(c) && c != '.' {
				return false
			}
		}
		return true
	}
	if len(text) > len("ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255") {
		return false
	}
	for _, c := range text {
		if !isHex(c) && c != ':' && c != '.' {
			return false
		}
	}
	return true
}

// parseEPRTAddr parses the address field of EPRT for family af ('1' or
// '2'). IPv4 must be strict dotted decimal (no leading zeros), IPv6 the RFC
// 4291 text form without a zone. An address of the other family, including
// an IPv4-mapped IPv6 address under af 2, is a family mismatch.
func parseEPRTAddr(af byte, text []byte) (netip.Addr, reason) {
	if af == '1' {
		if a, ok := parseIPv4(text); ok {
			return a, rOK
		}
		if _, ok := parseIPv6(text); ok {
			return netip.Addr{}, rFamilyMismatch
		}
		return netip.Addr{}, rAddress
	}
	if _, ok := parseIPv4(text); ok {
		return netip.Addr{}, rFamilyMismatch
	}
	a, ok := parseIPv6(text)
	if !ok {
		return netip.Addr{}, rAddress
	}
	if a.Is4In6() {
		return netip.Addr{}, rFamilyMismatch
	}
	return a, rOK
}

// parsePort parses 1-5 decimal digits with a value of 1-65535.
func parsePort(b []byte) (uint16, reason) {
	if len(b) == 0 || len(b) > 5 {
		return 0, rPort
	}
	v := 0
	for _, c := range b {
		if !isDigit(c) {
			return 0, rPort
		}
		v = v*10 + int(c-'0')
	}
	if v == 0 {
		return 0, rPortZero
	}
	if v > 65535 {
		return 0, rPort
	}
	return uint16(v), rOK
}

// parse229 parses the RFC 2428 EPSV reply text "(<d><d><d><port><d>)" found
// at the first '(' of b. Only the port is known; the span covers its digits.
func parse229(b []byte, partial bool) (parsed, reason) {
	p := bytes.IndexByte(b, '(')
	if p < 0 {
		if partial {
			return parsed{}, rMore
		}
		return parsed{}, rNoParen
	}
	i := p + 1
	if i == len(b) {
		return parsed{}, more(partial, rDelim)
	}
	d := b[i]
	if !isDelim(d) {
		return parsed{}, rDelim
	}
	for k := 1; k < 3; k++ {
		if i+k == len(b) {
			return parsed{}, more(partial, rDelim)
		}
		if b[i+k] != d {
			return parsed{}, rDelim
		}
	}
	start := i + 3
	j := start
	for j < len(b) && isDigit(b[j]) {
		j++
	}
	if j-start > 5 {
		return parsed{}, rPort
	}
	if j == len(b) {
		return parsed{}, more(partial, rDelim)
	}
	if b[j] != d {
		if j == start {
			return parsed{}, rPort
		}
		return parsed{}, rDelim
	}
	port, r := parsePort(b[start:j])
	if r != rOK {
		return parsed{}, r
	}
	if j+1 == len(b) {
		return parsed{}, more(partial, rParen)
	}
	if b[j+1] != ')' {
		return parsed{}, rParen
	}
	return parsed{addr: netip.AddrPortFrom(netip.Addr{}, port), start: start, end: j, delim: d}, rOK
}

// more returns rMore in partial mode and r otherwise, for parsers that ran
// out of input.
func more(partial bool, r reason) reason {
	if partial {
		return rMore
	}
	return r
}

// parsePassive parses the text of a 227 (long false) or 228 (long true)
// reply after its code. RFC 1123 4.1.2.6 warns that the 227 text is not
// standardised and tells clients to scan for the first digit; so does this
// parser: the numbers start at the first digit of the text, and must be
// followed by end of line or a byte that is neither a digit nor a comma.
// Any text before and after is kept.
func parsePassive(b []byte, long, partial bool) (parsed, reason) {
	i := 0
	for i < len(b) && !isDigit(b[i]) {
		i++
	}
	if i == len(b) {
		if partial {
			return parsed{}, rMore
		}
		return parsed{}, rNoNumbers
	}
	var p parsed
	var r reason
	if long {
		p, r = parseLong(b[i:], partial)
	} else {
		p, r = parseShort(b[i:], partial)
	}
	if r != rOK {
		return parsed{}, r
	}
	p.start += i
	p.end += i
	return p, rOK
}

// parseIPv4 parses strict dotted decimal: four fields of 1-3 digits, at
// most 255, no leading zeros (which some stacks read as octal).
func parseIPv4(b []byte) (netip.Addr, bool) {
	var v [4]byte
	field, i := 0, 0
	for field < 4 {
		start, n := i, 0
		for i < len(b) && isDigit(b[i]) {
			if i-start == 3 {
				return netip.Addr{}, false
			}
			n = n*10 + int(b[i]-'0')
			i++
		}
		if i == start || n > 255 || i-start > 1 && b[start] == '0' {
			return netip.Addr{}, false
		}
		v[field] = byte(n)
		field++
		if field < 4 {
			if i == len(b) || b[i] != '.' {
				return netip.Addr{}, false
			}
			i++
		}
	}
	if i != len(b) {
		return netip.Addr{}, false
	}
	return netip.AddrFrom4(v), true
}

// parseIPv6 parses the RFC 4291 text form of an IPv6 address (hex groups,
// at most one "::", an optional trailing dotted IPv4 part) without a zone.
// It accepts exactly what netip.ParseAddr accepts for zone-less IPv6 input
// (a fuzz test checks this) but works on bytes and never allocates.
func parseIPv6(s []byte) (netip.Addr, bool) {
	var ip [16]byte
	ellipsis := -1 // index in ip where "::" stands
	if len(s) >= 2 && s[0] == ':' && s[1] == ':' {
		ellipsis = 0
		s = s[2:]
		if len(s) == 0 {
			return netip.IPv6Unspecified(), true
		}
	}
	i := 0
	for i < 16 {
		off, acc := 0, 0
		for off < len(s) && isHex(s[off]) {
			if off == 4 {
				return netip.Addr{}, false
			}
			acc = acc<<4 | hexVal(s[off])
			off++
		}
		if off == 0 {
			return netip.Addr{}, false
		}
		if off < len(s) && s[off] == '.' {
			// Trailing IPv4 part: only in the last 32 bits.
			if ellipsis < 0 && i != 12 || i+4 > 16 {
				return netip.Addr{}, false
			}
			v4, ok := parseIPv4(s)
			if !ok {
				return netip.Addr{}, false
			}
			b4 := v4.As4()
			copy(ip[i:], b4[:])
			i += 4
			s = nil
			break
		}
		ip[i], ip[i+1] = byte(acc>>8), byte(acc)
		i += 2
		s = s[off:]
		if len(s) == 0 {
			break
		}
		if s[0] != ':' || len(s) == 1 {
			return netip.Addr{}, false
		}
		s = s[1:]
		if s[0] == ':' {
			if ellipsis >= 0 {
				return netip.Addr{}, false
			}
			ellipsis = i
			s = s[1:]
			if len(s) == 0 {
				break
			}
		}
	}
	if len(s) != 0 {
		return netip.Addr{}, false
	}
	if i < 16 {
		if ellipsis < 0 {
			return netip.Addr{}, false
		}
		n := 16 - i
		for j := i - 1; j >= ellipsis; j-- {
			ip[j+n] = ip[j]
		}
		for j := ellipsis + n - 1; j >= ellipsis; j-- {
			ip[j] = 0
		}
	} else if ellipsis >= 0 {
		// "::" must stand for at least one group.
		return netip.Addr{}, false
	}
	return netip.AddrFrom16(ip), true
}

func hexVal(c byte) int {
	switch {
	case isDigit(c):
		return int(c - '0')
	case 'a' <= c && c <= 'f':
		return int(c-'a') + 10
	}
	return int(c-'A') + 10
}
