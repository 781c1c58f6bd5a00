// Package manpage renders a command's manual page in man(7) roff from its
// definitions: the subcommands and their flag.FlagSets. The page is
// generated at build time (`ftpalg manpage`) instead of being written by
// hand, so a flag added to the code is on the page in the same commit and
// the two cannot drift.
//
// Rendering is pure: a Page in, roff bytes out. Every piece of text is
// escaped, so a usage string that happens to start with a dot or contain a
// backslash cannot turn into a roff request.
package manpage

import (
	"bytes"
	"flag"
	"fmt"
	"strings"
)

// Page is one manual page.
type Page struct {
	Name    string // "ftpalg"
	Section string // "8"
	Date    string // "2026-12-06"; the footer's centre
	Source  string // "ftpalg 1.2.3"; the footer's left
	Manual  string // "System Administration"; the header's centre
	Summary string // the NAME line after the dash

	Description []string // paragraphs
	Commands    []Command
	Sections    []Section // after COMMANDS: FILES, EXIT STATUS, ...
}

// Command is a subcommand with its flags.
type Command struct {
	Name    string // "run", or "config check"
	Args    string // "[flags]", "<file>"
	Summary string // what it does, one or more sentences
	Flags   []Flag
}

// Flag is one command-line flag.
type Flag struct {
	Name    string // without dashes
	Arg     string // the value's name ("duration"), "" for a boolean
	Default string // "" when the default is empty
	Usage   string
}

// Section is a free-form section of paragraphs and tagged items.
type Section struct {
	Title      string
	Paragraphs []string
	Items      []Item   // rendered after the paragraphs, one .TP each
	Lines      []string // rendered last, unfilled: commands to type
}

// Item is a tagged paragraph: a file name, an exit status, a key.
type Item struct {
	Tag, Text string
	Literal   bool // render Tag in bold as is (a path), not as text
}

// FlagsOf returns the flags of fs in its own (lexical) order. The value
// name is the back-quoted word of the usage text, as flag.PrintDefaults
// shows it; a boolean flag has none.
func FlagsOf(fs *flag.FlagSet) []Flag {
	var out []Flag
	fs.VisitAll(func(f *flag.Flag) {
		arg, usage := flag.UnquoteUsage(f)
		def := f.DefValue
		if b, ok := f.Value.(interface{ IsBoolFlag() bool }); ok && b.IsBoolFlag() {
			arg = ""
		}
		out = append(out, Flag{Name: f.Name, Arg: arg, Default: def, Usage: usage})
	})
	return out
}

// Render writes the page as man(7) roff.
func Render(p Page) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, ".\\\" Generated from %s's command and flag definitions; do not edit.\n", escape(p.Name))
	fmt.Fprintf(&b, ".TH %s %s %s %s %s\n", quote(strings.ToUpper(p.Name)), quote(p.Section), quote(p.Date), quote(p.Source), quote(p.Manual))
	// Paths and flags are long words: no hyphenation, no justification.
	b.WriteString(".nh\n.ad l\n")
	b.WriteString(".SH NAME\n")
	fmt.Fprintf(&b, "%s \\- %s\n", escape(p.Name), escape(p.Summary))

	b.WriteString(".SH SYNOPSIS\n")
	for i, c := range p.Commands {
		if i > 0 {
			b.WriteString(".br\n")
		}
		fmt.Fprintf(&b, ".B %s\n", quote(p.Name+" "+c.Name))
		if c.Args != "" {
			fmt.Fprintf(&b, ".I %s\n", quote(c.Args))
		}
	}
	if len(p.Description) > 0 {
		b.WriteString(".SH DESCRIPTION\n")
		paragraphs(&b, p.Description)
	}
	if len(p.Commands) > 0 {
		b.WriteString(".SH COMMANDS\n")
	}
	for _, c := range p.Commands {
		fmt.Fprintf(&b, ".SS %s\n", quote(strings.TrimSpace(p.Name+" "+c.Name+" "+c.Args)))
		text(&b, c.Summary)
		for _, f := range c.Flags {
			b.WriteString(".TP\n")
			if f.Arg == "" {
				fmt.Fprintf(&b, ".B %s\n", quote("--"+f.Name))
			} else {
				fmt.Fprintf(&b, ".BI %s %s\n", quote("--"+f.Name+" "), quote(f.Arg))
			}
			usage := f.Usage
			switch {
			case f.Default == "" && f.Arg != "":
				usage += " (default: empty)"
			case f.Default != "":
				usage += " (default: " + f.Default + ")"
			}
			text(&b, usage)
		}
	}
	for _, s := range p.Sections {
		fmt.Fprintf(&b, ".SH %s\n", quote(strings.ToUpper(s.Title)))
		paragraphs(&b, s.Paragraphs)
		for _, it := range s.Items {
			b.WriteString(".TP\n")
			if it.Literal {
				fmt.Fprintf(&b, ".B %s\n", quote(it.Tag))
			} else {
				text(&b, it.Tag)
			}
			text(&b, it.Text)
		}
		if len(s.Lines) > 0 {
			b.WriteString(".PP\n.RS 4\n.nf\n")
			for _, l := range s.Lines {
				b.WriteString(escape(l) + "\n")
			}
			b.WriteString(".fi\n.RE\n")
		}
	}
	return b.Bytes()
}

func paragraphs(b *bytes.Buffer, ps []string) {
	for i, p := range ps {
		if i > 0 {
			b.WriteString(".PP\n")
		}
		text(b, p)
	}
}

// text writes running text: line breaks in s (help texts are wrapped for
// a terminal) become spaces, roff fills the paragraph itself.
func text(b *bytes.Buffer, s string) {
	s = strings.Join(strings.Fields(s), " ")
	if s == "" {
		return
	}
	b.WriteString(escape(s))
	b.WriteByte('\n')
}

// escape makes s literal roff text on a line of its own: backslashes and
// dashes (a dash in an option must stay a plain minus when copied from
// the page) are escaped, and a leading control character is neutralised.
func escape(s string) string {
	s = strings.NewReplacer(`\`, `\e`, "-", `\-`, "\n", " ").Replace(s)
	if strings.HasPrefix(s, ".") || strings.HasPrefix(s, "'") {
		s = `\&` + s
	}
	return s
}

// quote makes s one macro argument.
func quote(s string) string {
	return `"` + strings.ReplaceAll(escape(s), `"`, `\(dq`) + `"`
}
