package alg

import "testing"

func TestServerLine(t *testing.T) {
	const v4 = "192.0.2.10:1025"
	const v6 = "[2001:db8::1]:6446"
	const port = ":6446" // 229 carries only the port
	tests := []struct {
		name string
		cmd  string // the outstanding command
		line string
		kind Kind
		addr string
		err  error
	}{
		// 227, the forms seen in the wild.
		{"227 RFC 959", "PASV", "227 Entering Passive Mode (192,0,2,10,4,1).", Kind227, v4, nil},
		{"227 no dot", "PASV", "227 Entering Passive Mode (192,0,2,10,4,1)", Kind227, v4, nil},
		{"227 no parentheses", "PASV", "227 Entering Passive Mode 192,0,2,10,4,1", Kind227, v4, nil},
		{"227 equals", "PASV", "227 =192,0,2,10,4,1", Kind227, v4, nil},
		{"227 bare numbers", "PASV", "227 192,0,2,10,4,1", Kind227, v4, nil},
		{"227 text after", "PASV", "227 Entering Passive Mode (192,0,2,10,4,1). Have a nice day 2", Kind227, v4, nil},
		{"227 zero padded", "PASV", "227 Entering Passive Mode (192,000,002,010,004,001)", Kind227, v4, nil},
		{"227 no closing parenthesis", "PASV", "227 Entering Passive Mode (192,0,2,10,4,1", Kind227, v4, nil},
		{"227 double space", "PASV", "227  Entering passive mode (192,0,2,10,4,1)", Kind227, v4, nil},
		{"227 spaces after commas", "PASV", "227 Entering Passive Mode (192, 0, 2, 10, 4, 1)", Kind227, "", ErrMalformed},
		{"227 Logout", "PASV", "227 Logout.", Kind227, "", ErrMalformed},
		{"227 bare code", "PASV", "227", Kind227, "", ErrMalformed},
		{"227 digit in text", "PASV", "227 Entering Passive Mode v2 (192,0,2,10,4,1)", Kind227, "", ErrMalformed},
		{"227 number over 255", "PASV", "227 Entering Passive Mode (192,0,2,256,4,1)", Kind227, "", ErrMalformed},
		{"227 port 0", "PASV", "227 Entering Passive Mode (192,0,2,10,0,0)", Kind227, "", ErrMalformed},
		{"227 7 numbers", "PASV", "227 Entering Passive Mode (192,0,2,10,4,1,5)", Kind227, "", ErrMalformed},
		{"227 5 numbers", "PASV", "227 Entering Passive Mode (192,0,2,10,4)", Kind227, "", ErrMalformed},
		{"227 4 digits", "PASV", "227 Entering Passive Mode (1922,0,2,10,4,1)", Kind227, "", ErrMalformed},
		{"227 trailing comma", "PASV", "227 Entering Passive Mode (192,0,2,10,4,1,)", Kind227, "", ErrMalformed},
		{"227 NUL", "PASV", "227 Entering Passive Mode (192,0,2,10,4,1)\x00", Kind227, "", ErrMalformed},
		{"227 IAC", "PASV", "227 Entering \xff Passive Mode (192,0,2,10,4,1)", Kind227, "", ErrMalformed},
		{"227 tab instead of space", "PASV", "227\tEntering Passive Mode (192,0,2,10,4,1)", KindNone, "", nil},

		// 229.
		{"229 RFC 2428", "EPSV", "229 Entering Extended Passive Mode (|||6446|)", Kind229, port, nil},
		{"229 bang", "EPSV", "229 Entering Extended Passive Mode (!!!6446!)", Kind229, port, nil},
		{"229 tilde", "EPSV 2", "229 Entering Extended Passive Mode (~~~6446~)", Kind229, port, nil},
		{"229 text after", "EPSV", "229 Entering Extended Passive Mode (|||6446|). Go.", Kind229, port, nil},
		{"229 short text", "EPSV", "229 (|||6446|)", Kind229, port, nil},
		{"229 two delimiters", "EPSV", "229 Entering Extended Passive Mode (||6446|)", Kind229, "", ErrMalformed},
		{"229 mixed delimiters", "EPSV", "229 Entering Extended Passive Mode (|!|6446|)", Kind229, "", ErrMalformed},
		{"229 last delimiter differs", "EPSV", "229 Entering Extended Passive Mode (|||6446!)", Kind229, "", ErrMalformed},
		{"229 digit delimiter", "EPSV", "229 Entering Extended Passive Mode (1116446)", Kind229, "", ErrMalformed},
		{"229 with address", "EPSV", "229 Entering Extended Passive Mode (|1|192.0.2.10|6446|)", Kind229, "", ErrMalformed},
		{"229 port 0", "EPSV", "229 Entering Extended Passive Mode (|||0|)", Kind229, "", ErrMalformed},
		{"229 port 65536", "EPSV", "229 Entering Extended Passive Mode (|||65536|)", Kind229, "", ErrMalformed},
		{"229 port 6 digits", "EPSV", "229 Entering Extended Passive Mode (|||123456|)", Kind229, "", ErrMalformed},
		{"229 no port", "EPSV", "229 Entering Extended Passive Mode (||||)", Kind229, "", ErrMalformed},
		{"229 no closing parenthesis", "EPSV", "229 Entering Extended Passive Mode (|||6446|", Kind229, "", ErrMalformed},
		{"229 no parentheses", "EPSV", "229 Entering Extended Passive Mode |||6446|", Kind229, "", ErrMalformed},
		{"229 NUL", "EPSV", "229 Entering Extended Passive Mode (|||64\x0046|)", Kind229, "", ErrMalformed},

		// 228.
		{"228 v4", "LPSV", "228 Entering Long Passive Mode (4,4,192,0,2,10,2,4,1)", Kind228, v4, nil},
		{"228 v6", "LPSV", "228 Entering Long Passive Mode (6,16,32,1,13,184,0,0,0,0,0,0,0,0,0,0,0,1,2,25,46)", Kind228, v6, nil},
		{"228 no parentheses", "LPSV", "228 Entering Long Passive Mode 4,4,192,0,2,10,2,4,1", Kind228, v4, nil},
		{"228 port 0", "LPSV", "228 Entering Long Passive Mode (4,4,192,0,2,10,2,0,0)", Kind228, "", ErrMalformed},
		{"228 bad hal", "LPSV", "228 Entering Long Passive Mode (6,4,192,0,2,10,2,4,1)", Kind228, "", ErrMalformed},
		{"228 bad af", "LPSV", "228 Entering Long Passive Mode (5,4,192,0,2,10,2,4,1)", Kind228, "", ErrMalformed},
		{"228 too many", "LPSV", "228 Entering Long Passive Mode (4,4,192,0,2,10,2,4,1,1)", Kind228, "", ErrMalformed},

		// Other codes are never address lines, whatever their text.
		{"550 with 227 text", "PASV", "550 227 Entering Passive Mode (192,0,2,10,4,1)", KindNone, "", nil},
		{"200", "PASV", "200 (192,0,2,10,4,1)", KindNone, "", nil},
		{"2270", "PASV", "2270 Entering Passive Mode (192,0,2,10,4,1)", KindNone, "", nil},
		{"not a reply", "PASV", "Entering Passive Mode (192,0,2,10,4,1)", KindNone, "", nil},
		{"leading space", "PASV", " 227 Entering Passive Mode (192,0,2,10,4,1)", KindNone, "", nil},
		{"first line of multi-line", "PASV", "227-Entering Passive Mode (192,0,2,10,4,1)", KindNone, "", nil},

		// Unsolicited.
		{"227 after NOOP", "NOOP", "227 Entering Passive Mode (192,0,2,10,4,1)", Kind227, "", ErrUnsolicited},
		{"227 after QUIT", "QUIT", "227 Logout.", Kind227, "", ErrUnsolicited},
		{"227 after EPSV", "EPSV", "227 Entering Passive Mode (192,0,2,10,4,1)", Kind227, "", ErrUnsolicited},
		{"229 after PASV", "PASV", "229 Entering Extended Passive Mode (|||6446|)", Kind229, "", ErrUnsolicited},
		{"228 after PASV", "PASV", "228 Entering Long Passive Mode (4,4,192,0,2,10,2,4,1)", Kind228, "", ErrUnsolicited},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := greeted(t)
			d.ClientLine([]byte(tt.cmd))
			f := d.ServerLine([]byte(tt.line))
			checkFound(t, f, tt.kind, tt.addr, tt.err)
		})
	}
}
