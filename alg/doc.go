// Package alg is the FTP control-channel language of the ftpalg gateway:
// it reads the lines of one control connection, finds the lines that
// announce a data-connection endpoint, tracks just enough dialog state to
// know which of them are genuine, and rewrites the endpoint text in place.
//
// It is pure: no I/O, no system calls, no logging, no allocation on the
// parse path, and no panic on any input. The packet engine reassembles each
// TCP direction into lines and feeds them to a Dialog in stream order.
//
// # Grammar
//
// Client commands (verbs case-insensitive; spaces before the verb, between
// verb and argument, and after the argument are tolerated; a telnet prefix
// such as IAC IP IAC DM before the verb is skipped):
//
//	PORT h1,h2,h3,h4,p1,p2                      RFC 959
//	EPRT <d>1<d>a.b.c.d<d>port<d>               RFC 2428, IPv4
//	EPRT <d>2<d>ipv6-text<d>port<d>             RFC 2428, IPv6
//	LPRT 4,4,h1,h2,h3,h4,2,p1,p2                RFC 1639, IPv4
//	LPRT 6,16,h1,...,h16,2,p1,p2                RFC 1639, IPv6
//	PASV, LPSV (no argument), EPSV [1|2]        passive requests
//	AUTH <mechanism>                            may turn the channel into TLS
//
// Server replies (only the terminating line of a reply counts):
//
//	227 <text>h1,h2,h3,h4,p1,p2<text>           answers PASV
//	228 <text>af,hal,h...,pal,p1,p2<text>       answers LPSV
//	229 <text>(<d><d><d>port<d>)<text>          answers EPSV
//
// Numbers in the comma lists are decimal 0-255 of 1 to 3 digits (so "007"
// is accepted and "0007" is not); the port p1*256+p2 must not be 0. The
// EPRT/229 delimiter <d> is any byte 33-126 except a digit, the same byte
// in every position; the EPRT port and the 229 port are 1-5 digits, 1-65535.
// EPRT IPv4 text is strict dotted decimal without leading zeros, IPv6 text
// is RFC 4291 form without a zone; an address that does not match its
// family field (IPv6 under 1, IPv4 or IPv4-mapped IPv6 under 2 or in LPRT
// af 6) is malformed.
//
// In 227 and 228 the numbers start at the first digit of the reply text,
// as RFC 1123 4.1.2.6 tells clients to scan, so "227 Entering Passive Mode
// (h1,...,p2).", "227 Entering Passive Mode h1,...,p2" and "227 =h1,...,p2"
// are all read; the list must be followed by end of line or a byte that is
// neither a digit nor a comma. Spaces inside the list ("h1, h2") are not
// accepted (a decision): vsftpd, proftpd and pure-ftpd print the list
// without spaces, the kernel helper's number scanner stops at them too, and
// accepting them would mean guessing how to write the replacement. Such a
// reply is reported malformed and passes unchanged. In 229 the port sits inside the first '(' of the
// text and the closing ')' must follow the last delimiter (RFC 2428).
//
// Anything else on an address line is malformed: a wrong field count, a
// number above 255 or longer than 3 digits, port 0, a bad delimiter,
// trailing text after a client argument, a NUL byte anywhere, or a telnet
// IAC byte in a client argument or anywhere in a reply line.
//
// # Dialog
//
// A reply is matched to the command it answers by order: Dialog keeps the
// outstanding commands in a bounded FIFO (see Dialog for overflow), every
// client line is a command, and every final reply (a terminating line with
// code 2xx to 6xx; 1xx replies are preliminary) answers the oldest one. The
// first final reply is the greeting when its code is 220 and answers
// nothing. A 227 counts only when it answers a PASV, a 228 an LPSV, a 229 an
// EPSV; any other 227/228/229 is reported with ErrUnsolicited and never
// rewritten, and any other reply code is not an address line at all
// (a "550 ... 227 ..." text is just text). Replies never stall: a line that
// is not an address line is reported as such at once.
//
// Multi-line replies follow RFC 959 4.2: a reply that starts with "ddd-"
// ends at the first later line that starts with the same code followed by a
// space (or is just the code). Lines in between are text and are never
// addresses, whatever they look like. The terminating line of a multi-line
// 227/228/229 is the reply's status line and counts like a single-line
// reply; the first "227-" line does not.
//
// AUTH answered by 234 makes the dialog Opaque (RFC 4217: TLS starts right
// after the 234); from then on nothing is parsed.
//
// Lines longer than Config.MaxLine are never parsed for addresses; the
// ClientOverlong and ServerOverlong hooks keep the FIFO aligned.
//
// # Security stance
//
// Fail closed. The gateway opens pinholes and rewrites payloads on the word
// of this package, so it never guesses: a line that is not exactly the
// grammar is reported with an error and must be passed through untouched,
// with no pinhole. Every ambiguity (unsolicited replies, FIFO overflow,
// overlong lines, broken telnet prefixes) resolves towards "not an
// address". Whether an announced endpoint is acceptable (for example that a
// PORT names the client's own address) is the engine's policy, not this
// package's.
package alg
