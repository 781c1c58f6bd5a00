// Package config reads ftpalg's optional configuration file: a flat TOML
// document whose keys mirror the flags of `ftpalg run` (--pinhole-timeout
// is pinhole_timeout). A router's settings then live in one reviewed file
// under /etc instead of a systemd Environment line, while a flag given on
// the command line still wins, so an admin can try a change without editing
// the file.
//
// Decoding is strict: a misspelt key is an error with its line number, not a
// setting silently ignored, because a firewall component that quietly runs
// with a default the admin thought was overridden is worse than one that
// refuses to start.
package config

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/pelletier/go-toml/v2"
	"github.com/pelletier/go-toml/v2/unstable"

	"github.com/ftpalg/ftpalg/rules"
)

// Errors, each wrapped with the file name, line and key concerned.
var (
	ErrSyntax     = errors.New("syntax error")
	ErrUnknownKey = errors.New("unknown key")
	ErrValue      = errors.New("invalid value")
)

// unknownError reads "unknown key ..." or "unknown table ..." and is
// ErrUnknownKey.
type unknownError struct{ what, detail string }

func (e *unknownError) Error() string        { return "unknown " + e.what + " " + e.detail }
func (e *unknownError) Is(target error) bool { return target == ErrUnknownKey }

// maxSize bounds the file read: a configuration is a few hundred bytes, and
// a mistyped path (a log, a device) must not be slurped.
const maxSize = 1 << 20

// File is a decoded configuration file. A nil field is a key the file does
// not set; Apply leaves the corresponding flag alone.
type File struct {
	OutsideIf      *string      `toml:"outside_if"`
	PublicIP       []netip.Addr `toml:"public_ip"`
	ControlPorts   []uint16     `toml:"control_ports"`
	QueueNum       *uint16      `toml:"queue_num"`
	PinholeTimeout *Duration    `toml:"pinhole_timeout"`
	DataPorts      *PortRange   `toml:"data_ports"`
	InstallRules   *bool        `toml:"install_rules"`
	FailOpen       *bool        `toml:"fail_open"`
	LogFormat      *LogFormat   `toml:"log_format"`
	LogLevel       *LogLevel    `toml:"log_level"`
	IPv4           *bool        `toml:"ipv4"`
	IPv6           *bool        `toml:"ipv6"`
	MetricsAddr    *HostPort    `toml:"metrics_addr"`
	StatusSocket   *SocketPath  `toml:"status_socket"`
	Role           *Role        `toml:"role"`

	name  string         // file name for messages
	lines map[string]int // key -> line, for errors found after decoding
}

// keys lists every key with its flag and what a value looks like, in the
// order of `ftpalg run -help`. The want text replaces go-toml's Go-typed
// message when a value has the wrong TOML type.
var keys = []struct {
	key, flag, want string
}{
	{"outside_if", "outside-if", `an interface name, like "eth0"`},
	{"public_ip", "public-ip", `an array of addresses, at most one per family, like ["203.0.113.7"]`},
	{"control_ports", "control-ports", `an array of TCP ports, like [21, 2121]`},
	{"queue_num", "queue-num", `an NFQUEUE number from 0 to 65535`},
	{"pinhole_timeout", "pinhole-timeout", `a positive duration, like "30s"`},
	{"data_ports", "data-ports", `a port range, like "1024-65535"`},
	{"install_rules", "install-rules", `true or false`},
	{"fail_open", "fail-open", `true or false`},
	{"log_format", "log-format", `"text" or "json"`},
	{"log_level", "log-level", `"debug", "info", "warn" or "error"`},
	{"ipv4", "ipv4", `true or false`},
	{"ipv6", "ipv6", `true or false`},
	{"metrics_addr", "metrics-addr", `a listen address, like "127.0.0.1:9121", or "" for none`},
	{"status_socket", "status-socket", `an absolute path, like "/run/ftpalg/status.sock", or "" for none`},
	{"role", "role", `"both", "router" or "host"`},
}

// Keys returns the configuration keys and the flag each one sets, so the
// command can check that every key still names one of its flags.
func Keys() map[string]string {
	m := make(map[string]string, len(keys))
	for _, k := range keys {
		m[k.key] = k.flag
	}
	return m
}

// Load reads and validates the configuration file at path.
func Load(path string) (File, error) {
	f, err := os.Open(path)
	if err != nil {
		return File{}, fmt.Errorf("reading config: %w", err)
	}
	defer f.Close()
	data, err := readLimited(f, maxSize)
	if err != nil {
		return File{}, fmt.Errorf("reading config %s: %w", path, err)
	}
	return Parse(path, data)
}

func readLimited(r io.Reader, limit int64) ([]byte, error) {
	data, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("larger than %d bytes", limit)
	}
	return data, nil
}

// Parse decodes and validates a configuration document; name is used in
// messages (`name:line: ...`).
func Parse(name string, data []byte) (File, error) {
	f := File{name: filepath.Clean(name)}
	dec := toml.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return File{}, f.decodeError(err)
	}
	f.lines = keyLines(data)
	if err := f.validate(); err != nil {
		return File{}, err
	}
	return f, nil
}

// decodeError turns go-toml's errors into `name:line: key: problem` lines.
func (f *File) decodeError(err error) error {
	var strict *toml.StrictMissingError
	if errors.As(err, &strict) {
		errs := make([]error, 0, len(strict.Errors))
		for i := range strict.Errors {
			de := &strict.Errors[i]
			line, _ := de.Position()
			key := strings.Join(de.Key(), ".")
			what := "key"
			if strings.Contains(de.Error(), "table") {
				what = "table"
			}
			msg := fmt.Sprintf("%q", key)
			if s := suggest(key); s != "" {
				msg += fmt.Sprintf(" (did you mean %q?)", s)
			}
			errs = append(errs, fmt.Errorf("%s:%d: %w", f.name, line, &unknownError{what, msg}))
		}
		return errors.Join(errs...)
	}
	var de *toml.DecodeError
	if errors.As(err, &de) {
		line, _ := de.Position()
		key := strings.Join(de.Key(), ".")
		msg := strings.TrimPrefix(de.Error(), "toml: ")
		if key == "" {
			return fmt.Errorf("%s:%d: %w: %s", f.name, line, ErrSyntax, msg)
		}
		if strings.HasPrefix(msg, "key ") && strings.HasSuffix(msg, "already defined") {
			return fmt.Errorf("%s:%d: %w: %s is set twice", f.name, line, ErrSyntax, key)
		}
		if want := wantOf(key); want != "" && (strings.HasPrefix(msg, "cannot decode") || strings.Contains(msg, "cannot be stored")) {
			msg = "want " + want
		}
		return fmt.Errorf("%s:%d: %w: %s: %s", f.name, line, ErrValue, key, msg)
	}
	return fmt.Errorf("%s: %w: %w", f.name, ErrSyntax, err)
}

func wantOf(key string) string {
	for _, k := range keys {
		if k.key == key {
			return k.want
		}
	}
	return ""
}

// keyLines maps each top-level key of a document that already decoded to
// the line it is on. The document is flat (anything else fails the strict
// decode), so only key/value expressions matter.
func keyLines(data []byte) map[string]int {
	lines := make(map[string]int)
	var p unstable.Parser
	p.Reset(data)
	for p.NextExpression() {
		e := p.Expression()
		if e.Kind != unstable.KeyValue {
			continue
		}
		it := e.Key()
		if !it.Next() {
			continue
		}
		k := it.Node()
		lines[string(k.Data)] = p.Shape(k.Raw).Start.Line
	}
	return lines
}

// errorf reports a problem with key found after decoding.
func (f *File) errorf(key, format string, args ...any) error {
	return fmt.Errorf("%s:%d: %w: %s: %s", f.name, f.lines[key], ErrValue, key, fmt.Sprintf(format, args...))
}

// validate checks what the value types cannot: list contents and
// combinations.
func (f *File) validate() error {
	if f.ControlPorts != nil {
		if len(f.ControlPorts) == 0 {
			return f.errorf("control_ports", "empty; want at least one port")
		}
		if slices.Contains(f.ControlPorts, 0) {
			return f.errorf("control_ports", "port 0")
		}
	}
	var fam [2]bool
	for _, a := range f.PublicIP {
		i := 0
		if a.Is6() && !a.Is4In6() {
			i = 1
		}
		if fam[i] {
			return f.errorf("public_ip", "more than one address of one family")
		}
		fam[i] = true
		if a.Zone() != "" {
			return f.errorf("public_ip", "%s: zoned address", a)
		}
	}
	checks := []struct {
		key string
		set bool
		chk func() error
	}{
		{"log_format", f.LogFormat != nil, func() error { return f.LogFormat.check() }},
		{"log_level", f.LogLevel != nil, func() error { return f.LogLevel.check() }},
		{"metrics_addr", f.MetricsAddr != nil, func() error { return f.MetricsAddr.check() }},
		{"status_socket", f.StatusSocket != nil, func() error { return f.StatusSocket.check() }},
		{"role", f.Role != nil, func() error { return f.Role.check() }},
	}
	for _, c := range checks {
		if c.set {
			if err := c.chk(); err != nil {
				return f.errorf(c.key, "%v", err)
			}
		}
	}
	if f.IPv4 != nil && f.IPv6 != nil && !*f.IPv4 && !*f.IPv6 {
		return f.errorf("ipv6", "ipv4 and ipv6 are both false")
	}
	return nil
}

// Apply sets every flag of fs that the file sets and the command line did
// not: a flag given explicitly overrides the file. Keys whose flag fs does
// not define (a subcommand with fewer flags) are skipped. Call it after
// fs.Parse.
func (f File) Apply(fs *flag.FlagSet) error {
	explicit := make(map[string]bool)
	fs.Visit(func(fl *flag.Flag) { explicit[fl.Name] = true })
	for _, k := range keys {
		val, ok := f.value(k.key)
		if !ok || explicit[k.flag] || fs.Lookup(k.flag) == nil {
			continue
		}
		if err := fs.Set(k.flag, val); err != nil {
			return fmt.Errorf("%s:%d: %w: %s: flag --%s rejects %q: %w", f.name, f.lines[k.key], ErrValue, k.key, k.flag, val, err)
		}
	}
	return nil
}

// value renders the setting of key as its flag's text, and whether the file
// sets it.
func (f *File) value(key string) (string, bool) {
	str := func(p *string) (string, bool) {
		if p == nil {
			return "", false
		}
		return *p, true
	}
	boolean := func(p *bool) (string, bool) {
		if p == nil {
			return "", false
		}
		return strconv.FormatBool(*p), true
	}
	text := func(s fmt.Stringer, set bool) (string, bool) {
		if !set {
			return "", false
		}
		return s.String(), true
	}
	switch key {
	case "outside_if":
		return str(f.OutsideIf)
	case "public_ip":
		if f.PublicIP == nil {
			return "", false
		}
		s := make([]string, len(f.PublicIP))
		for i, a := range f.PublicIP {
			s[i] = a.String()
		}
		return strings.Join(s, ","), true
	case "control_ports":
		if f.ControlPorts == nil {
			return "", false
		}
		s := make([]string, len(f.ControlPorts))
		for i, p := range f.ControlPorts {
			s[i] = strconv.Itoa(int(p))
		}
		return strings.Join(s, ","), true
	case "queue_num":
		if f.QueueNum == nil {
			return "", false
		}
		return strconv.Itoa(int(*f.QueueNum)), true
	case "pinhole_timeout":
		return text(f.PinholeTimeout, f.PinholeTimeout != nil)
	case "data_ports":
		return text(f.DataPorts, f.DataPorts != nil)
	case "install_rules":
		return boolean(f.InstallRules)
	case "fail_open":
		return boolean(f.FailOpen)
	case "log_format":
		return text(f.LogFormat, f.LogFormat != nil)
	case "log_level":
		return text(f.LogLevel, f.LogLevel != nil)
	case "ipv4":
		return boolean(f.IPv4)
	case "ipv6":
		return boolean(f.IPv6)
	case "metrics_addr":
		return text(f.MetricsAddr, f.MetricsAddr != nil)
	case "status_socket":
		return text(f.StatusSocket, f.StatusSocket != nil)
	case "role":
		return text(f.Role, f.Role != nil)
	}
	return "", false
}

// Duration is a positive time.Duration written as a string ("30s").
type Duration time.Duration

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("want a duration like \"30s\": %w", err)
	}
	if v <= 0 {
		return fmt.Errorf("duration %q is not positive", b)
	}
	*d = Duration(v)
	return nil
}

// MarshalText implements encoding.TextMarshaler.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

func (d Duration) String() string { return time.Duration(d).String() }

// PortRange is an inclusive range of ports written "lo-hi" (or one port),
// checked exactly as --data-ports is.
type PortRange struct{ Lo, Hi uint16 }

// UnmarshalText implements encoding.TextUnmarshaler.
func (r *PortRange) UnmarshalText(b []byte) error {
	lo, hi, err := rules.ParsePortRange(string(b))
	if err != nil {
		return fmt.Errorf("want a range like \"1024-65535\": %w", err)
	}
	*r = PortRange{lo, hi}
	return nil
}

// MarshalText implements encoding.TextMarshaler.
func (r PortRange) MarshalText() ([]byte, error) { return []byte(r.String()), nil }

func (r PortRange) String() string { return fmt.Sprintf("%d-%d", r.Lo, r.Hi) }

// LogFormat is "text" or "json".
type LogFormat string

// Role is which control connections ftpalg handles, as --role spells it.
type Role string

func (r Role) check() error {
	switch r {
	case "both", "router", "host":
		return nil
	}
	return fmt.Errorf("role %q: want \"both\", \"router\" or \"host\"", string(r))
}

func (r Role) String() string { return string(r) }

// String-kinded types are decoded by go-toml without UnmarshalText, so
// they are checked after decoding.

func (l LogFormat) check() error {
	switch l {
	case "text", "json":
		return nil
	}
	return fmt.Errorf("log format %q: want \"text\" or \"json\"", string(l))
}

func (l LogFormat) String() string { return string(l) }

// LogLevel is a slog level name, accepted exactly as --log-level accepts it.
type LogLevel string

func (l LogLevel) check() error {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(l)); err != nil {
		return fmt.Errorf("log level %q: want \"debug\", \"info\", \"warn\" or \"error\"", string(l))
	}
	return nil
}

func (l LogLevel) String() string { return string(l) }

// HostPort is a TCP listen address ("127.0.0.1:9121", "[2001:db8::1]:9121",
// ":9121"), or empty for none.
type HostPort string

func (h HostPort) check() error {
	if b := string(h); len(b) > 0 {
		host, port, err := net.SplitHostPort(string(b))
		if err != nil {
			return fmt.Errorf("listen address %q: %w", b, err)
		}
		if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
			return fmt.Errorf("listen address %q: bad port %q", b, port)
		}
		if host != "" {
			if _, err := netip.ParseAddr(host); err != nil && !validHostname(host) {
				return fmt.Errorf("listen address %q: bad host %q", b, host)
			}
		}
	}
	return nil
}

func (h HostPort) String() string { return string(h) }

func validHostname(s string) bool {
	if len(s) == 0 || len(s) > 253 {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.') {
			return false
		}
	}
	return true
}

// SocketPath is an absolute path for a unix socket, or empty for none.
type SocketPath string

func (p SocketPath) check() error {
	if s := string(p); s != "" {
		if !filepath.IsAbs(s) {
			return fmt.Errorf("socket path %q is not absolute", s)
		}
		// sockaddr_un.sun_path holds 108 bytes including the NUL.
		if len(s) > 107 {
			return fmt.Errorf("socket path %q is longer than 107 bytes", s)
		}
	}
	return nil
}

func (p SocketPath) String() string { return string(p) }

// suggest returns the known key closest to an unknown one, if it is close
// enough to be a typo.
func suggest(key string) string {
	best, bestDist := "", 3
	norm := strings.ReplaceAll(strings.ToLower(key), "-", "_")
	for _, k := range keys {
		if d := distance(norm, k.key); d < bestDist {
			best, bestDist = k.key, d
		}
	}
	return best
}

// distance is the Levenshtein distance between a and b.
func distance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
