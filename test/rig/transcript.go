package rig

import (
	"fmt"
	"net"
	"regexp"
	"strconv"
	"strings"
	"sync"
)

// entry is one line of a control-channel transcript.
type entry struct {
	cmd  bool // sent by the client; else a server reply line
	text string
}

// transcript is a control-channel exchange in the order a client logged it.
type transcript []entry

func (t transcript) commands() []string { return t.pick(true) }
func (t transcript) replies() []string  { return t.pick(false) }

func (t transcript) pick(cmd bool) []string {
	var out []string
	for _, e := range t {
		if e.cmd == cmd {
			out = append(out, e.text)
		}
	}
	return out
}

// transferVerbs are the commands that use a data connection.
var transferVerbs = map[string]bool{"RETR": true, "STOR": true, "APPE": true, "LIST": true, "NLST": true, "MLSD": true}

// transfersOK checks that every data-transfer command got a final 2xx
// reply (the last reply before the client's next command). Some clients
// (tnftp) exit 0 after a failed transfer; this catches them.
func (t transcript) transfersOK() error {
	for i, e := range t {
		verb, _, _ := strings.Cut(e.text, " ")
		if !e.cmd || !transferVerbs[strings.ToUpper(verb)] {
			continue
		}
		last := ""
		for _, f := range t[i+1:] {
			if f.cmd {
				break
			}
			last = f.text
		}
		if !strings.HasPrefix(last, "2") {
			return fmt.Errorf("%w: %q answered %q", ErrTransfer, e.text, last)
		}
	}
	return nil
}

// transfers counts the data-transfer commands sent.
func (t transcript) transfers() int {
	n := 0
	for _, e := range t {
		verb, _, _ := strings.Cut(e.text, " ")
		if e.cmd && transferVerbs[strings.ToUpper(verb)] {
			n++
		}
	}
	return n
}

// parseCurl reads curl -v output ("> CMD", "< reply", after an optional
// --trace-time stamp).
func parseCurl(out string) transcript {
	var t transcript
	for line := range strings.Lines(out) {
		line = strings.TrimRight(line, "\r\n")
		if stamp, rest, ok := strings.Cut(line, " "); ok && isTraceTime(stamp) {
			line = rest
		}
		switch {
		case strings.HasPrefix(line, "> "):
			t = append(t, entry{true, line[2:]})
		case strings.HasPrefix(line, "< "):
			t = append(t, entry{false, line[2:]})
		}
	}
	return t
}

// replyLine matches a server reply as tnftp prints it in verbose mode.
var replyLine = regexp.MustCompile(`^[1-5][0-9][0-9][ -]`)

// parseArrows reads lftp -d and tnftp -d output: "---> CMD" for sent
// commands; lftp marks replies "<--- reply", tnftp prints them bare
// (plainReplies), next to its own messages such as
// "512 bytes received in 00:00", which are skipped.
func parseArrows(out string, plainReplies bool) transcript {
	var t transcript
	for line := range strings.Lines(out) {
		line = strings.TrimRight(line, "\r\n")
		switch {
		case strings.HasPrefix(line, "---> "):
			t = append(t, entry{true, line[5:]})
		case strings.HasPrefix(line, "<--- "):
			t = append(t, entry{false, line[5:]})
		case plainReplies && replyLine.MatchString(line) &&
			!strings.Contains(line, " bytes received in ") && !strings.Contains(line, " bytes sent in "):
			t = append(t, entry{false, line})
		}
	}
	return t
}

// parseFtplib reads ftplib's debug output: *cmd* 'CMD' and *resp* 'reply'
// with Python string literals.
func parseFtplib(out string) transcript {
	var t transcript
	for line := range strings.Lines(out) {
		line = strings.TrimRight(line, "\r\n")
		for _, k := range []struct {
			tag string
			cmd bool
		}{{"*cmd* ", true}, {"*resp* ", false}} {
			if rest, ok := strings.CutPrefix(line, k.tag); ok {
				t = append(t, entry{k.cmd, unquotePython(rest)})
			}
		}
	}
	return t
}

// unquotePython undoes repr() of a simple str: surrounding quotes and
// backslash escapes (approximated by Go's rules, enough for FTP lines).
func unquotePython(s string) string {
	if len(s) >= 2 && (s[0] == '\'' || s[0] == '"') && s[len(s)-1] == s[0] {
		inner := s[1 : len(s)-1]
		if u, err := strconv.Unquote(`"` + strings.ReplaceAll(inner, `"`, `\"`) + `"`); err == nil {
			return u
		}
		return inner
	}
	return s
}

// recordingConn records the lines written to and read from a control
// connection.
type recordingConn struct {
	net.Conn
	mu     sync.Mutex
	tr     *transcript
	rb, wb []byte // partial lines
}

func (c *recordingConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.record(&c.rb, b[:n], false)
	return n, err
}

func (c *recordingConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.record(&c.wb, b[:n], true)
	return n, err
}

func (c *recordingConn) record(buf *[]byte, b []byte, cmd bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	*buf = append(*buf, b...)
	for {
		i := strings.IndexByte(string(*buf), '\n')
		if i < 0 {
			return
		}
		*c.tr = append(*c.tr, entry{cmd, strings.TrimRight(string((*buf)[:i]), "\r")})
		*buf = (*buf)[i+1:]
	}
}
