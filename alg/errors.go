package alg

import "errors"

// Sentinel errors. Found.Err and the errors returned by Found.Rewrite wrap
// exactly one of them; test with errors.Is.
var (
	// ErrMalformed: the line is of an address-bearing kind (its verb or
	// reply code says so) but its address text does not follow the grammar.
	// Such a line must be passed through unchanged and must not open a
	// pinhole.
	ErrMalformed = errors.New("alg: malformed address line")

	// ErrUnsolicited: a 227, 228 or 229 reply that does not answer an
	// outstanding PASV, LPSV or EPSV (respectively) on this connection.
	ErrUnsolicited = errors.New("alg: passive reply answers no outstanding passive command")

	// ErrLineTooLong: an address-bearing line exceeded Config.MaxLine; its
	// address was never seen in full.
	ErrLineTooLong = errors.New("alg: line too long")

	// ErrFamily: the rewrite target's address family (or zone) cannot be
	// expressed in the kind of line being rewritten, for example an IPv6
	// address into PORT or 227.
	ErrFamily = errors.New("alg: address family cannot be expressed in this line")

	// ErrBadTarget: the rewrite target is not a usable endpoint (invalid
	// address, port 0) or its text would contain the line's EPRT delimiter.
	ErrBadTarget = errors.New("alg: target endpoint cannot be written into this line")

	// ErrNoAddress: Rewrite was called with a Found that carries no
	// rewritable address, or with a line that is not the one it was found in.
	ErrNoAddress = errors.New("alg: no rewritable address in line")
)

// reason says why an address-bearing line is unusable.
type reason uint8

const (
	rOK reason = iota
	// rMore is internal: the input ended where more bytes could still make
	// it valid. It is only produced in partial (MayRewrite) mode.
	rMore
	rMissing
	rSyntax
	rNumber
	rFields
	rPortZero
	rPort
	rJunk
	rDelim
	rFamily
	rFamilyMismatch
	rAddress
	rNUL
	rTelnet
	rNoParen
	rParen
	rNoNumbers
	rUnsolicited
	rTooLong
	numReasons
)

func (r reason) String() string {
	switch r {
	case rOK:
		return "ok"
	case rMore:
		return "incomplete"
	case rMissing:
		return "no address argument"
	case rSyntax:
		return "unexpected character"
	case rNumber:
		return "number above 255 or longer than 3 digits"
	case rFields:
		return "wrong number of fields"
	case rPortZero:
		return "port 0"
	case rPort:
		return "port not a decimal 1-65535"
	case rJunk:
		return "trailing text after the address"
	case rDelim:
		return "invalid delimiter"
	case rFamily:
		return "unknown address family or length"
	case rFamilyMismatch:
		return "address does not match its family field"
	case rAddress:
		return "invalid address text"
	case rNUL:
		return "NUL byte"
	case rTelnet:
		return "telnet IAC byte in argument"
	case rNoParen:
		return "no opening parenthesis"
	case rParen:
		return "missing closing parenthesis"
	case rNoNumbers:
		return "no address numbers"
	case rUnsolicited:
		return "no outstanding passive command"
	case rTooLong:
		return "line longer than MaxLine"
	}
	return "unknown reason"
}

// lineError is the error stored in Found.Err. It packs the line kind (3
// bits) and the reason (5 bits) into one byte so that storing it in an
// error interface never allocates (the runtime keeps single-byte values in
// a static table): a flood of malformed or unsolicited lines costs no
// garbage.
type lineError uint8

func newLineError(k Kind, r reason) lineError { return lineError(uint8(r)<<3 | uint8(k)&7) }

func (e lineError) kind() Kind     { return Kind(e & 7) }
func (e lineError) reason() reason { return reason(e >> 3) }

func (e lineError) Unwrap() error {
	switch e.reason() {
	case rUnsolicited:
		return ErrUnsolicited
	case rTooLong:
		return ErrLineTooLong
	}
	return ErrMalformed
}

func (e lineError) Error() string {
	return e.Unwrap().Error() + ": " + e.kind().String() + ": " + e.reason().String()
}
