package alg

import "testing"

func TestLoggedIn(t *testing.T) {
	tests := []struct {
		name  string
		lines []string // "C: ..." client, "S: ..." server
		want  bool
	}{
		{"user then pass", []string{"S: 220 hi", "C: USER a", "S: 331 pw", "C: PASS b", "S: 230 ok"}, true},
		{"anonymous without password", []string{"S: 220 hi", "C: user anonymous", "S: 230 ok"}, true},
		{"232 after security exchange", []string{"S: 220 hi", "C: USER a", "S: 232 ok"}, true},
		{"wrong password", []string{"S: 220 hi", "C: USER a", "S: 331 pw", "C: PASS b", "S: 530 no"}, false},
		{"230 answering something else", []string{"S: 220 hi", "C: NOOP", "S: 230 ok"}, false},
		{"230 as greeting", []string{"S: 230 welcome"}, false},
		{"pipelined: 230 not yet seen", []string{"S: 220 hi", "C: USER a", "C: PASS b", "S: 331 pw"}, false},
		{"230 continuation line does not count", []string{"S: 220 hi", "C: USER a", "S: 331-x", "S: 230 y", "S: 331 pw"}, false},
	}
	for _, tt := range tests {
		d := NewDialog(Config{})
		for _, l := range tt.lines {
			if l[0] == 'C' {
				d.ClientLine([]byte(l[3:]))
			} else {
				d.ServerLine([]byte(l[3:]))
			}
		}
		if d.LoggedIn() != tt.want {
			t.Errorf("%s: LoggedIn() = %v, want %v", tt.name, d.LoggedIn(), tt.want)
		}
	}
}

func TestVerbs(t *testing.T) {
	d := NewDialog(Config{})
	d.ServerLine([]byte("220 hi"))
	for line, want := range map[string]Verb{"AUTH TLS": VerbAUTH, "auth ssl": VerbAUTH, "USER x": VerbUSER, "PASS y": VerbPASS, "EPSV": VerbPASV, "NOOP": VerbOther, "\xff\xf4\xff\xf2AUTH TLS": VerbAUTH} {
		if got := d.ClientLine([]byte(line)).Verb; got != want {
			t.Errorf("ClientLine(%q).Verb = %v, want %v", line, got, want)
		}
	}
	d = NewDialog(Config{})
	d.ServerLine([]byte("220 hi"))
	d.ClientLine([]byte("AUTH TLS"))
	if f := d.ServerLine([]byte("504-not here")); f.Answers != VerbNone {
		t.Errorf("a continuation line answers %v", f.Answers)
	}
	if f := d.ServerLine([]byte("504 Unknown AUTH type")); f.Answers != VerbAUTH {
		t.Errorf("terminating reply answers %v, want AUTH", f.Answers)
	}
}
