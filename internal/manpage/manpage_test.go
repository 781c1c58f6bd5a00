package manpage

import (
	"flag"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/internal/testenv"
)

func TestFlagsOf(t *testing.T) {
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	fs.Bool("ipv4", true, "handle IPv4")
	fs.Duration("pinhole-timeout", 30*time.Second, "close after this `duration`")
	fs.String("config", "", "read this TOML `file`")
	fs.Uint("queue-num", 21, "NFQUEUE number") // no back-quoted name: the type's
	want := []Flag{
		{Name: "config", Arg: "file", Default: "", Usage: "read this TOML file"},
		{Name: "ipv4", Arg: "", Default: "true", Usage: "handle IPv4"},
		{Name: "pinhole-timeout", Arg: "duration", Default: "30s", Usage: "close after this duration"},
		{Name: "queue-num", Arg: "uint", Default: "21", Usage: "NFQUEUE number"},
	}
	got := FlagsOf(fs)
	if len(got) != len(want) {
		t.Fatalf("got %+v", got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("flag %d: got %+v, want %+v", i, got[i], want[i])
		}
	}
}

func TestEscape(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"plain", "plain"},
		{"--install-rules=false", `\-\-install\-rules=false`},
		{`a\b`, `a\eb`},
		{".TH injected", `\&.TH injected`}, // would be a request
		{"'br injected", `\&'br injected`}, // the other control character
		{"two\nlines", "two lines"},        // stays one text line
		{`"quoted"`, `"quoted"`},           // quotes matter only in arguments
		{"", ""},
	} {
		if got := escape(tc.in); got != tc.want {
			t.Errorf("escape(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
	if got := quote(`say "hi"`); got != `"say \(dqhi\(dq"` {
		t.Errorf("quote: %q", got)
	}
}

func testPage() Page {
	return Page{
		Name: "tool", Section: "8", Date: "2026-12-06", Source: "tool 1.0", Manual: "System Administration",
		Summary:     "does things",
		Description: []string{"First paragraph,\nwrapped for a terminal.", ".starts with a dot"},
		Commands: []Command{
			{Name: "run", Args: "[flags]", Summary: "Run it.", Flags: []Flag{
				{Name: "queue-num", Arg: "number", Default: "21", Usage: "the queue"},
				{Name: "fail-open", Default: "false", Usage: "accept when full"},
				{Name: "config", Arg: "file", Usage: "a file"},
			}},
			{Name: "version", Summary: "Print the version."},
		},
		Sections: []Section{
			{Title: "Files", Items: []Item{{Tag: "/etc/tool.toml", Text: "settings", Literal: true}}},
			{Title: "Examples", Lines: []string{"tool run --queue-num 3"}},
		},
	}
}

func TestRender(t *testing.T) {
	got := string(Render(testPage()))
	for _, want := range []string{
		`.TH "TOOL" "8" "2026\-12\-06" "tool 1.0" "System Administration"` + "\n",
		".SH NAME\ntool \\- does things\n",
		".SH SYNOPSIS\n.B \"tool run\"\n.I \"[flags]\"\n.br\n.B \"tool version\"\n.SH DESCRIPTION\n",
		"First paragraph, wrapped for a terminal.\n.PP\n\\&.starts with a dot\n",
		".SS \"tool run [flags]\"\nRun it.\n",
		".TP\n.BI \"\\-\\-queue\\-num \" \"number\"\nthe queue (default: 21)\n",
		".TP\n.B \"\\-\\-fail\\-open\"\naccept when full (default: false)\n",
		".BI \"\\-\\-config \" \"file\"\na file (default: empty)\n",
		".SS \"tool version\"\nPrint the version.\n",
		".SH \"FILES\"\n.TP\n.B \"/etc/tool.toml\"\nsettings\n",
		".nf\ntool run \\-\\-queue\\-num 3\n.fi\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("page lacks %q:\n%s", want, got)
		}
	}
	// No text line may start a request by accident.
	for _, l := range strings.Split(got, "\n") {
		if strings.HasPrefix(l, ".") && !strings.HasPrefix(l, ".\\\"") {
			if m := strings.Fields(l)[0]; !strings.Contains(" .TH .SH .SS .B .I .BI .TP .PP .br .nh .ad .RS .RE .nf .fi ", " "+m+" ") {
				t.Errorf("unexpected request %q", l)
			}
		}
	}
}

// The rendered page is valid man(7) for groff: no warning at all.
func TestRenderGroff(t *testing.T) {
	testenv.RequireTool(t, "groff")
	cmd := exec.Command("groff", "-man", "-Tutf8", "-ww", "-z")
	cmd.Stdin = strings.NewReader(string(Render(testPage())))
	if out, err := cmd.CombinedOutput(); err != nil || len(out) > 0 {
		t.Fatalf("groff: %v\n%s", err, out)
	}
}
