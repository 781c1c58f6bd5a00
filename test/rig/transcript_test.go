package rig

import (
	"errors"
	"slices"
	"testing"
)

func TestParseTranscripts(t *testing.T) {
	tests := []struct {
		name  string
		tr    transcript
		cmds  []string
		reply []string
		ok    bool
	}{
		{
			name: "lftp",
			tr:   parseArrows("---- Connecting\n---> PORT 192,0,2,10,1,2\n<--- 200 PORT ok\n---> RETR f\n<--- 150 go\n<--- 226 done\n---> QUIT\n", false),
			cmds: []string{"PORT 192,0,2,10,1,2", "RETR f", "QUIT"}, reply: []string{"200 PORT ok", "150 go", "226 done"}, ok: true,
		},
		{
			name: "tnftp skips its byte counts",
			tr:   parseArrows("---> EPSV\n229 Entering (|||5000|)\n---> RETR f\n150 go\n226 done\n512 bytes received in 00:00 (1 MiB/s)\n---> QUIT\n221 bye\n", true),
			cmds: []string{"EPSV", "RETR f", "QUIT"}, reply: []string{"229 Entering (|||5000|)", "150 go", "226 done", "221 bye"}, ok: true,
		},
		{
			name: "tnftp failed transfer",
			tr:   parseArrows("---> PORT 192,0,2,10,1,2\n200 ok\n---> RETR f\n425 Failed to establish connection.\n---> QUIT\n", true),
			cmds: []string{"PORT 192,0,2,10,1,2", "RETR f", "QUIT"}, reply: []string{"200 ok", "425 Failed to establish connection."}, ok: false,
		},
		{
			name: "ftplib",
			tr:   parseFtplib("*cmd* 'PASV'\n*resp* '227 Entering Passive Mode (198,51,100,1,4,1).'\n*cmd* 'STOR upload/x'\n*resp* '150 ok'\n*resp* \"226 it's done\"\n"),
			cmds: []string{"PASV", "STOR upload/x"}, reply: []string{"227 Entering Passive Mode (198,51,100,1,4,1).", "150 ok", "226 it's done"}, ok: true,
		},
		{
			name: "no final reply",
			tr:   parseCurl("> LIST\n< 150 here\n"),
			cmds: []string{"LIST"}, reply: []string{"150 here"}, ok: false,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.tr.commands(); !slices.Equal(got, tc.cmds) {
				t.Errorf("commands %q, want %q", got, tc.cmds)
			}
			if got := tc.tr.replies(); !slices.Equal(got, tc.reply) {
				t.Errorf("replies %q, want %q", got, tc.reply)
			}
			err := tc.tr.transfersOK()
			if (err == nil) != tc.ok || (err != nil && !errors.Is(err, ErrTransfer)) {
				t.Errorf("transfersOK = %v, want ok=%v", err, tc.ok)
			}
		})
	}
}

func TestCheckMode(t *testing.T) {
	tests := []struct {
		mode Mode
		cmds []string
		ok   bool
	}{
		{EPSV, []string{"USER a", "EPSV", "RETR f"}, true},
		{EPSV, []string{"EPSV", "PASV", "RETR f"}, false},
		{EPRT, []string{"PORT 1,2,3,4,5,6", "RETR f"}, false},
		{PASV, []string{"EPSV", "PASV"}, false},
		{PORT, []string{"PORT 1,2,3,4,5,6"}, true},
	}
	for _, tc := range tests {
		err := checkMode(Curl, Result{Commands: tc.cmds}, tc.mode)
		if (err == nil) != tc.ok || (err != nil && !errors.Is(err, ErrModeNotUsed)) {
			t.Errorf("%v %q: err %v, want ok=%v", tc.mode, tc.cmds, err, tc.ok)
		}
	}
}

func TestLibDepends(t *testing.T) {
	got := libDepends("adduser, libc6 (>= 2.34), libhiredis0.14 (>= 0.14.0), openbsd-inetd | inet-superserver, libfoo:any | libbar, zlib1g")
	want := []string{"libc6", "libhiredis0.14", "libfoo"}
	if !slices.Equal(got, want) {
		t.Errorf("libDepends = %q, want %q", got, want)
	}
}
