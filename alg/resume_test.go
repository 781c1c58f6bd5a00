package alg

import "testing"

func TestAnswerAndResume(t *testing.T) {
	tests := []struct {
		name     string
		script   []string // C: client line, S: server line
		answer   Answer
		loggedIn bool
	}{
		{"fresh", nil, AnswerNone, false},
		{"greeted", []string{"S220 hi"}, AnswerNone, false},
		{"logged in", []string{"S220 hi", "CUSER a", "S331 pw", "CPASS b", "S230 ok"}, AnswerNone, true},
		{"PASV outstanding", []string{"S220 hi", "CUSER a", "S230 ok", "CPASV"}, AnswerPASV, true},
		{"EPSV outstanding", []string{"S220 hi", "CUSER a", "S230 ok", "CEPSV"}, AnswerEPSV, true},
		{"LPSV outstanding", []string{"S220 hi", "CUSER a", "S230 ok", "CLPSV"}, AnswerLPSV, true},
		{"PASV answered", []string{"S220 hi", "CUSER a", "S230 ok", "CPASV", "S227 Entering Passive Mode (192,0,2,20,200,10)."}, AnswerNone, true},
		{"PORT outstanding", []string{"S220 hi", "CUSER a", "S230 ok", "CPORT 192,0,2,10,200,10"}, AnswerNone, true},
		{"PASV behind another command", []string{"S220 hi", "CNOOP", "CPASV"}, AnswerNone, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := NewDialog(Config{})
			for _, l := range tt.script {
				if l[0] == 'C' {
					d.ClientLine([]byte(l[1:]))
				} else {
					d.ServerLine([]byte(l[1:]))
				}
			}
			if got := d.Answer(); got != tt.answer {
				t.Errorf("Answer() = %v, want %v", got, tt.answer)
			}
			r := Resume(Config{}, d.LoggedIn(), d.Answer())
			if r.LoggedIn() != tt.loggedIn || r.Answer() != tt.answer {
				t.Errorf("Resume: logged in %v answer %v, want %v %v", r.LoggedIn(), r.Answer(), tt.loggedIn, tt.answer)
			}
		})
	}
}

// A 227/229/228 answering a passive command sent through the old process is
// accepted by the resumed dialog; one that answers nothing is not.
func TestResumeAcceptsAnswer(t *testing.T) {
	for _, tt := range []struct {
		answer Answer
		line   string
		usable bool
	}{
		{AnswerPASV, "227 Entering Passive Mode (192,0,2,20,200,10).", true},
		{AnswerEPSV, "229 Entering Extended Passive Mode (|||51210|)", true},
		{AnswerLPSV, "228 Entering Long Passive Mode (4,4,192,0,2,20,2,200,10)", true},
		{AnswerNone, "227 Entering Passive Mode (192,0,2,20,200,10).", false},
		{AnswerEPSV, "227 Entering Passive Mode (192,0,2,20,200,10).", false},
		{Answer(7), "227 Entering Passive Mode (192,0,2,20,200,10).", false},
	} {
		d := Resume(Config{}, true, tt.answer)
		f := d.ServerLine([]byte(tt.line))
		if f.Usable() != tt.usable {
			t.Errorf("answer %v, %q: usable %v (err %v), want %v", tt.answer, tt.line, f.Usable(), f.Err, tt.usable)
		}
	}
	// The first final reply of a resumed dialog is no greeting: a 220
	// answers an outstanding command like any other reply.
	d := Resume(Config{}, true, AnswerNone)
	d.ClientLine([]byte("NOOP"))
	d.ServerLine([]byte("220 again"))
	if d.Pending() != 0 {
		t.Errorf("a 220 after Resume did not answer the outstanding NOOP: %d pending", d.Pending())
	}
}

// A reply that cannot answer the passive command the labels say is
// outstanding is one the previous process released before it wrote them,
// sent again by the server: it leaves the passive command outstanding, so
// that the real 227 after it is still accepted. A refusal does answer it.
func TestResumeSkipsEarlierReplies(t *testing.T) {
	for _, tt := range []struct {
		answer  Answer
		earlier []string
		line    string
		usable  bool
	}{
		{AnswerPASV, []string{"200 PORT command successful. Consider using PASV."}, "227 Entering Passive Mode (192,0,2,20,200,10).", true},
		{AnswerPASV, []string{"150 Opening", "226 Transfer complete.", "220 again", "331 pw", "230 ok"}, "227 Entering Passive Mode (192,0,2,20,200,10).", true},
		{AnswerEPSV, []string{"226-Transfer", "complete", "226 Done"}, "229 Entering Extended Passive Mode (|||51210|)", true},
		{AnswerLPSV, []string{"229 Entering Extended Passive Mode (|||51210|)"}, "228 Entering Long Passive Mode (4,4,192,0,2,20,2,200,10)", true},
		{AnswerPASV, []string{"425 Cannot open data connection."}, "227 Entering Passive Mode (192,0,2,20,200,10).", false},
		{AnswerEPSV, []string{"500 Unknown command."}, "229 Entering Extended Passive Mode (|||51210|)", false},
	} {
		d := Resume(Config{}, true, tt.answer)
		for _, l := range tt.earlier {
			if f := d.ServerLine([]byte(l)); f.Usable() {
				t.Errorf("%v: %q usable", tt.answer, l)
			}
		}
		f := d.ServerLine([]byte(tt.line))
		if f.Usable() != tt.usable {
			t.Errorf("answer %v after %q, %q: usable %v (err %v), want %v", tt.answer, tt.earlier, tt.line, f.Usable(), f.Err, tt.usable)
		}
		if d.Answer() != AnswerNone {
			t.Errorf("answer %v after %q, %q: still %v outstanding", tt.answer, tt.earlier, tt.line, d.Answer())
		}
		// Once answered, replies answer the commands after it as usual.
		d.ClientLine([]byte("NOOP"))
		d.ServerLine([]byte("200 NOOP ok."))
		if d.Pending() != 0 {
			t.Errorf("answer %v after %q: %d pending after a NOOP's reply", tt.answer, tt.earlier, d.Pending())
		}
	}
}

func TestReplay(t *testing.T) {
	// After the 227 was seen the dialog answers nothing, but a
	// retransmission of that 227 is still parsed as the PASV answer.
	d := Resume(Config{}, true, AnswerNone)
	before := d
	for _, tt := range []struct {
		side   Side
		line   string
		kind   Kind
		usable bool
	}{
		{Server, "227 Entering Passive Mode (192,0,2,20,200,10).", Kind227, true},
		{Server, "229 Entering Extended Passive Mode (|||51210|)", Kind229, true},
		{Server, "228 Entering Long Passive Mode (4,4,192,0,2,20,2,200,10)", Kind228, true},
		{Server, "227-multi-line start", KindNone, false},
		{Server, "200 PORT ok", KindNone, false},
		{Server, "22", KindNone, false},
		{Client, "PORT 192,0,2,10,200,10", KindPORT, true},
		{Client, "EPRT |1|192.0.2.10|51210|", KindEPRT, true},
		{Client, "NOOP", KindNone, false},
	} {
		f := d.Replay(tt.side, []byte(tt.line))
		if f.Kind != tt.kind || f.Usable() != tt.usable {
			t.Errorf("Replay(%v, %q) = kind %v usable %v (err %v), want %v %v", tt.side, tt.line, f.Kind, f.Usable(), f.Err, tt.kind, tt.usable)
		}
		if d != before {
			t.Fatalf("Replay(%v, %q) changed the dialog", tt.side, tt.line)
		}
	}
	// In the middle of a multi-line reply the retransmitted final line is
	// still taken as the answer.
	m := NewDialog(Config{})
	m.ServerLine([]byte("220 hi"))
	m.ClientLine([]byte("PASV"))
	m.ServerLine([]byte("227-x"))
	m.ServerLine([]byte("227 Entering Passive Mode (192,0,2,20,200,10)."))
	if f := m.Replay(Server, []byte("227 Entering Passive Mode (192,0,2,20,200,10).")); !f.Usable() {
		t.Errorf("replayed 227 after a multi-line reply: %v", f.Err)
	}
}

func TestLineStart(t *testing.T) {
	for _, tt := range []struct {
		side Side
		b    string
		want bool
	}{
		{Client, "PORT 1", true}, {Client, "port", true}, {Client, "", false}, {Client, "1,2", false}, {Client, " PORT", false},
		{Client, "\xff\xf4", false}, {Client, "PASV\r\n", true}, {Client, "POR", true}, {Client, "RETR file", true},
		// tails of a verb whose start may have been held back
		{Client, "T 192,0,2,10,40,88\r\n", false}, {Client, "RT 192", false}, {Client, "ORT 192", false},
		{Client, "PRT |1|", false}, {Client, "uth TLS", false}, {Client, "V\r\n", false}, {Client, "STORE x", false},
		{Server, "227 x", true}, {Server, "230-", true}, {Server, "227", false}, {Server, "22 x", false},
		{Server, "700 x", false}, {Server, "2a7 x", false}, {Server, "ntering", false}, {Server, "", false},
	} {
		if got := LineStart(tt.side, []byte(tt.b)); got != tt.want {
			t.Errorf("LineStart(%v, %q) = %v, want %v", tt.side, tt.b, got, tt.want)
		}
	}
}

func TestMayStartLine(t *testing.T) {
	for _, tt := range []struct {
		side Side
		b    string
		want bool
	}{
		{Server, "2", true}, {Server, "22", true}, {Server, "227", true}, {Server, "227 x", true},
		{Server, "7", false}, {Server, "2,", false}, {Server, "", false}, {Server, "22x ", false},
		{Client, "P", true}, {Client, "1", false},
	} {
		if got := MayStartLine(tt.side, []byte(tt.b)); got != tt.want {
			t.Errorf("MayStartLine(%v, %q) = %v, want %v", tt.side, tt.b, got, tt.want)
		}
	}
}

func TestCut(t *testing.T) {
	for _, line := range []string{
		"227 Entering Passive Mode (192,0,2,20,200,10).",
		"229 Entering Extended Passive Mode (|||51210|)",
		"228 Entering Long Passive Mode (4,4,192,0,2,20,2,200,10)",
	} {
		d := Resume(Config{}, true, AnswerNone)
		d.Cut()
		for i := 1; i <= 4; i++ {
			if !d.MayRewrite(Server, []byte(line[:i])) {
				t.Errorf("MayRewrite(%q) after Cut = false", line[:i])
			}
		}
		if f := d.ServerLine([]byte(line)); !f.Usable() {
			t.Errorf("%q after Cut: %v", line, f.Err)
		}
		if d.Pending() != 0 {
			t.Errorf("the passive reply did not answer the cut command")
		}
	}
	d := Resume(Config{}, true, AnswerNone)
	d.Cut()
	if d.MayRewrite(Server, []byte("200 ")) {
		t.Error("MayRewrite(200) after Cut")
	}
	if f := d.ServerLine([]byte("200 ok")); f.Kind != KindNone || d.Pending() != 0 {
		t.Errorf("200 after Cut: %+v, pending %d", f, d.Pending())
	}
	// A cut line whose reply passed already: the next command's reply
	// answers that command, and ends the cut.
	d = Resume(Config{}, true, AnswerNone)
	d.Cut()
	d.ClientLine([]byte("NOOP"))
	d.ServerLine([]byte("200 ok"))
	d.ClientLine([]byte("RETR x"))
	if f := d.ServerLine([]byte("227 Entering Passive Mode (192,0,2,20,200,10).")); f.Usable() {
		t.Error("a 227 answering RETR accepted after a cut was answered")
	}
}

func TestClientFirstLine(t *testing.T) {
	d := Resume(Config{}, true, AnswerNone)
	d.ClientFirstLine([]byte("V")) // the end of an EPSV cut after "EPS"
	if f := d.ServerLine([]byte("229 Entering Extended Passive Mode (|||51210|)")); !f.Usable() {
		t.Errorf("229 after a cut first line: %v", f.Err)
	}
	d = Resume(Config{}, true, AnswerNone)
	if f := d.ClientFirstLine([]byte("PORT 192,0,2,10,200,10")); !f.Usable() || d.Pending() != 1 {
		t.Errorf("PORT as first line: %+v, pending %d", f, d.Pending())
	}
	d = Resume(Config{}, true, AnswerNone)
	d.ClientFirstLine([]byte("PASV"))
	if d.Answer() != AnswerPASV {
		t.Errorf("PASV as first line not queued")
	}
	// The EPSV the labels said is outstanding, retransmitted: one answer.
	d = Resume(Config{}, true, AnswerEPSV)
	d.ClientFirstLine([]byte("EPSV"))
	if d.Pending() != 1 {
		t.Errorf("a retransmitted EPSV counted twice: %d pending", d.Pending())
	}
	d = Resume(Config{}, true, AnswerEPSV)
	d.ClientFirstLine([]byte("PASV"))
	if d.Pending() != 2 {
		t.Errorf("a PASV after an outstanding EPSV not queued: %d pending", d.Pending())
	}
}
