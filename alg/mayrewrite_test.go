package alg

import (
	"strings"
	"testing"
)

func TestMayRewriteClient(t *testing.T) {
	tests := []struct {
		partial string
		want    bool
	}{
		{"", true},
		{"P", true},
		{"PO", true},
		{"POR", true},
		{"PORT", true},
		{"PORT ", true},
		{"PORT    ", true},
		{"PORT 1", true},
		{"PORT 192,0,2,10,4", true},
		{"PORT 192,0,2,10,4,", true},
		{"PORT 192,0,2,10,4,1", true},
		{"PORT 192,0,2,10,4,1  ", true},
		{"PORT 192,0,2,10,4,1\r", true}, // the CR of CRLF has arrived
		{"PORT 192,0,2,10,4,1\r\r", false},
		{"PORT\r", true},
		{"PORT 192,0,2,10,0,0", true}, // "0,0" may still become "0,01"
		{"  eP", true},
		{"po", true},
		{"E", true},
		{"L", true},
		{"lprt 4,4,192", true},
		{"LPRT 6,1", true}, // may become 6,16
		{"LPRT 6,16,32,1,13,184,0,0,0,0,0,0,0,0,0,0,0,1,2,25", true},
		{"EPRT |", true},
		{"EPRT |1|192.0.2", true},
		{"EPRT |2|2001:db8::", true},
		{"EPRT |1|192.0.2.10|64", true},
		{"EPRT |1|192.0.2.10|6446|", true},
		{"EPRT |1|192.0.2.10|6446|  ", true},
		{"\xff", true},
		{"\xff\xf4", true},
		{"\xff\xf4\xff\xf2", true},
		{"\xff\xf4\xff\xf2PO", true},
		{"\xff\xfa\x18", true},

		{"R", false},
		{"RE", false},
		{"RETR", false},
		{"PASV", false},
		{"PORTX", false},
		{"PORT\t", false},
		{"XPORT", false},
		{"PORT x", false},
		{"PORT 256", false},
		{"PORT 1922", false},
		{"PORT 192,0,2,10,4,1,7", false},
		{"PORT 192,0,2,10,4,1 x", false},
		{"PORT 192,0,2,10,0,0 ", false}, // terminated: port 0 for good
		{"PORT 192,0,2,10,4 ", false},
		{"PORT 192,,", false},
		{"PORT 192,0\x00", false},
		{"\x00PORT", false},
		{"PORT 192,0,2,10,4,1\xff", false},
		{"EPRT 1", false},
		{"EPRT |3", false},
		{"EPRT |12", false},
		{"EPRT |1|x", false},
		{"EPRT |1|2001:", false},
		{"EPRT |1|192.0.2.10|6446x", false},
		{"EPRT |1|192.0.2.10|123456", false},
		{"EPRT |1|192.0.2.10|0|", false},
		{"EPRT |1|192.0.2.10|6446| x", false},
		{"EPRT |1|192.0.2.010|", false},
		{"LPRT 5,", false},
		{"LPRT 4,16,", false},
		{"LPRT 4,4,192,0,2,10,3,", false},
		{"LPRT 4,4,192,0,2,10,2,4,1,1", false},
		{"\xff\x01PORT", false},
		{"\xff\xffPORT", false},
		{strings.Repeat(" ", DefaultMaxLine+1), false},
	}
	for _, tt := range tests {
		d := NewDialog(Config{})
		if got := d.MayRewrite(Client, []byte(tt.partial)); got != tt.want {
			t.Errorf("MayRewrite(Client, %q) = %v, want %v", tt.partial, got, tt.want)
		}
	}
}

func TestMayRewriteServer(t *testing.T) {
	tests := []struct {
		name    string
		setup   []step
		partial string
		want    bool
	}{
		{"nothing outstanding", []step{s("220 ready")}, "22", false},
		{"nothing outstanding empty", []step{s("220 ready")}, "", false},
		{"NOOP outstanding", []step{s("220 ready"), c("NOOP")}, "2", false},
		{"PASV outstanding empty", []step{s("220 ready"), c("PASV")}, "", true},
		{"PASV outstanding 2", []step{s("220 ready"), c("PASV")}, "2", true},
		{"PASV outstanding 22", []step{s("220 ready"), c("PASV")}, "22", true},
		{"PASV outstanding 227", []step{s("220 ready"), c("PASV")}, "227", true},
		{"PASV outstanding 227 text", []step{s("220 ready"), c("PASV")}, "227 Entering Passive Mode (192,0,2", true},
		{"PASV outstanding full line", []step{s("220 ready"), c("PASV")}, pasvReply, true},
		{"PASV outstanding full line and CR", []step{s("220 ready"), c("PASV")}, pasvReply + "\r", true},
		{"PASV outstanding 5", []step{s("220 ready"), c("PASV")}, "5", false},
		{"PASV outstanding 228", []step{s("220 ready"), c("PASV")}, "228", false},
		{"PASV outstanding 229", []step{s("220 ready"), c("PASV")}, "229", false},
		{"PASV outstanding 227-", []step{s("220 ready"), c("PASV")}, "227-", false},
		{"PASV outstanding 227 tab", []step{s("220 ready"), c("PASV")}, "227\t", false},
		{"PASV outstanding bad number", []step{s("220 ready"), c("PASV")}, "227 Entering Passive Mode (256", false},
		{"PASV outstanding NUL", []step{s("220 ready"), c("PASV")}, "227 \x00", false},
		{"PASV outstanding port 0 terminated", []step{s("220 ready"), c("PASV")}, "227 (192,0,2,10,0,0)", false},
		{"PASV behind USER", []step{s("220 ready"), c("USER x"), c("PASV")}, "22", false},
		{"PASV before greeting", []step{c("PASV")}, "227 (", true},
		{"EPSV outstanding", []step{s("220 ready"), c("EPSV")}, "229 Entering Extended Passive Mode (|||", true},
		{"EPSV outstanding 227", []step{s("220 ready"), c("EPSV")}, "227", false},
		{"EPSV outstanding bad delimiters", []step{s("220 ready"), c("EPSV")}, "229 (|1", false},
		{"EPSV outstanding no paren yet", []step{s("220 ready"), c("EPSV")}, "229 Entering Extended Passive Mode", true},
		{"LPSV outstanding", []step{s("220 ready"), c("LPSV")}, "228 (4,4", true},
		{"LPSV outstanding bad af", []step{s("220 ready"), c("LPSV")}, "228 (5,", false},
		{"in multi-line 227", []step{s("220 ready"), c("PASV"), s("227-here it comes")}, "227 (1", true},
		{"in multi-line 227 continuation", []step{s("220 ready"), c("PASV"), s("227-here it comes")}, "227-", false},
		{"in multi-line 230", []step{s("220 ready"), c("PASV"), s("230-motd")}, "22", false},
		{"too long", []step{s("220 ready"), c("PASV")}, "227 " + strings.Repeat("x", DefaultMaxLine), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := NewDialog(Config{})
			run(t, &d, tt.setup)
			if got := d.MayRewrite(Server, []byte(tt.partial)); got != tt.want {
				t.Fatalf("MayRewrite(Server, %q) = %v, want %v", tt.partial, got, tt.want)
			}
		})
	}
	d := NewDialog(Config{})
	if d.MayRewrite(Side(7), []byte("PORT")) {
		t.Fatal("MayRewrite with unknown side = true")
	}
}

// TestMayRewritePrefixes checks the conservative half of the contract on
// every line of the table tests: each prefix of a usable line must be held.
func TestMayRewritePrefixes(t *testing.T) {
	lines := []struct {
		cmd, line string
	}{
		{"", "PORT 192,0,2,10,4,1"},
		{"", "  port  192,000,002,010,004,001  "},
		{"", "\xff\xf4\xff\xf2PORT 192,0,2,10,4,1"},
		{"", "\xff\xfa\x18\x01\xff\xf0EPRT |1|192.0.2.10|1025|"},
		{"", "EPRT |2|2001:db8::192.0.2.1|6446|  "},
		{"", "LPRT 6,16,32,1,13,184,0,0,0,0,0,0,0,0,0,0,0,1,2,25,46"},
		{"PASV", pasvReply},
		{"PASV", "227 =192,0,2,10,4,1"},
		{"EPSV", epsvReply},
		{"LPSV", "228 Entering Long Passive Mode (6,16,32,1,13,184,0,0,0,0,0,0,0,0,0,0,0,1,2,25,46)"},
	}
	for _, l := range lines {
		d := greeted(t)
		side := Client
		if l.cmd != "" {
			side = Server
			d.ClientLine([]byte(l.cmd))
		}
		before := d
		var f Found
		if side == Client {
			f = d.ClientLine([]byte(l.line))
		} else {
			f = d.ServerLine([]byte(l.line))
		}
		if !f.Usable() {
			t.Fatalf("%q not usable: %v", l.line, f.Err)
		}
		for i := 0; i <= len(l.line); i++ {
			if !before.MayRewrite(side, []byte(l.line[:i])) {
				t.Errorf("MayRewrite(%v, %q) = false, but %q is usable", side, l.line[:i], l.line)
			}
		}
	}
}
