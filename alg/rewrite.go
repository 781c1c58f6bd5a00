package alg

import (
	"bytes"
	"fmt"
	"net/netip"
	"strconv"
)

// Rewrite appends to dst the line f was found in, with only the address
// text replaced so that it announces to, and returns the extended slice.
// Everything outside the address text stays byte-identical: the verb or
// code, spaces, parentheses, the EPRT/229 delimiter, and the reply text.
// Numbers keep their style: a 227/228/PORT/LPRT list whose numbers were all
// zero-padded to three digits is written padded. For 229 only the port
// changes and to.Addr() is ignored. EPRT and LPRT/228 may change family
// (the af field is rewritten with the address); PORT and 227 only hold
// IPv4.
//
// line must be the bytes f was found in; dst must not overlap it. Rewrite
// re-reads the address text in line and refuses (ErrNoAddress) if it does
// not announce f.Addr. It returns dst unchanged and an error wrapping
// ErrNoAddress if f is not usable, ErrFamily if to's family or zone cannot
// be expressed in this kind of line (IPv6 into PORT or 227, an IPv4-mapped
// IPv6 address, any zone), or ErrBadTarget if to is invalid, has port 0,
// or its text would contain the EPRT delimiter. It does not allocate when
// cap(dst) suffices. The result may be longer than Config.MaxLine (a
// change from IPv4 to IPv6 in LPRT/228 adds up to 57 bytes).
func (f Found) Rewrite(dst, line []byte, to netip.AddrPort) ([]byte, error) {
	if f.Kind == KindNone {
		return dst, ErrNoAddress
	}
	if f.Err != nil {
		return dst, fmt.Errorf("alg: refusing to rewrite %v line: %w (%w)", f.Kind, ErrNoAddress, f.Err)
	}
	if !f.matches(line) {
		return dst, fmt.Errorf("alg: rewriting %v line: line does not announce %v: %w", f.Kind, f.Addr, ErrNoAddress)
	}
	if err := f.check(to); err != nil {
		return dst, fmt.Errorf("alg: rewriting %v line to %v: %w", f.Kind, to, err)
	}
	orig := len(dst)
	dst = append(dst, line[:f.start]...)
	mark := len(dst)
	dst = f.appendAddr(dst, to)
	// In EPRT the delimiter may appear only where appendAddr wrote it:
	// after the family and after the address.
	if f.Kind == KindEPRT && bytes.Count(dst[mark:], []byte{f.delim}) != 2 {
		return dst[:orig], fmt.Errorf("alg: rewriting EPRT line to %v: address text contains delimiter %q: %w", to, f.delim, ErrBadTarget)
	}
	return append(dst, line[f.end:]...), nil
}

// check reports whether to can be written into a line of f's kind.
func (f Found) check(to netip.AddrPort) error {
	if to.Port() == 0 {
		return ErrBadTarget
	}
	if f.Kind == Kind229 {
		return nil
	}
	a := to.Addr()
	switch {
	case !a.IsValid():
		return ErrBadTarget
	case a.Zone() != "", a.Is4In6():
		return ErrFamily
	case a.Is6() && (f.Kind == KindPORT || f.Kind == Kind227):
		return ErrFamily
	}
	return nil
}

// appendAddr appends the address text for to in f's format.
func (f Found) appendAddr(dst []byte, to netip.AddrPort) []byte {
	port := to.Port()
	switch f.Kind {
	case Kind229:
		return strconv.AppendUint(dst, uint64(port), 10)
	case KindEPRT:
		a := to.Addr()
		if a.Is4() {
			dst = append(dst, '1', f.delim)
		} else {
			dst = append(dst, '2', f.delim)
		}
		dst = a.AppendTo(dst)
		dst = append(dst, f.delim)
		return strconv.AppendUint(dst, uint64(port), 10)
	case KindPORT, Kind227:
		b := to.Addr().As4()
		for _, v := range b {
			dst = f.appendNum(dst, v)
			dst = append(dst, ',')
		}
	default: // KindLPRT, Kind228
		a := to.Addr()
		if a.Is4() {
			dst = append(dst, "4,4,"...)
			b := a.As4()
			for _, v := range b {
				dst = f.appendNum(dst, v)
				dst = append(dst, ',')
			}
		} else {
			dst = append(dst, "6,16,"...)
			b := a.As16()
			for _, v := range b {
				dst = f.appendNum(dst, v)
				dst = append(dst, ',')
			}
		}
		dst = append(dst, "2,"...)
	}
	dst = f.appendNum(dst, byte(port>>8))
	dst = append(dst, ',')
	return f.appendNum(dst, byte(port))
}

func (f Found) appendNum(dst []byte, v byte) []byte {
	if f.padded {
		return append(dst, '0'+v/100, '0'+v/10%10, '0'+v%10)
	}
	return strconv.AppendUint(dst, uint64(v), 10)
}

// matches reports whether line[f.start:f.end] still announces f.Addr, so
// that a Found is never applied to the wrong line.
func (f Found) matches(line []byte) bool {
	if f.start < 0 || f.end > len(line) || f.start >= f.end {
		return false
	}
	span := line[f.start:f.end]
	var p parsed
	var r reason
	switch f.Kind {
	case KindPORT, Kind227:
		p, r = parseShort(span, false)
	case KindLPRT, Kind228:
		p, r = parseLong(span, false)
	case KindEPRT:
		if f.start < 1 || f.end >= len(line) || line[f.start-1] != f.delim || line[f.end] != f.delim {
			return false
		}
		p, r = parseEPRT(line[f.start-1:f.end+1], false)
	case Kind229:
		var port uint16
		port, r = parsePort(span)
		p.addr = netip.AddrPortFrom(netip.Addr{}, port)
		p.end = len(span)
	default:
		return false
	}
	return r == rOK && p.addr == f.Addr && p.end-p.start == len(span)
}
