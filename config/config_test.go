package config

import (
	"errors"
	"flag"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name string
		doc  string
		want error
		msg  string // exact error text
	}{
		{"typo with suggestion", "queue_num = 21\n\n# comment\npinhole_timout = \"10s\"\n", ErrUnknownKey,
			`config.toml:4: unknown key "pinhole_timout" (did you mean "pinhole_timeout"?)`},
		{"dashes instead of underscores", "control-ports = [21]\n", ErrUnknownKey,
			`config.toml:1: unknown key "control-ports" (did you mean "control_ports"?)`},
		{"unrelated key", "colour = \"blue\"\n", ErrUnknownKey, `config.toml:1: unknown key "colour"`},
		{"every unknown key reported", "a = 1\nqueue_num = 3\nb = 2\n", ErrUnknownKey,
			"config.toml:1: unknown key \"a\"\nconfig.toml:3: unknown key \"b\""},
		{"table", "\n[metrics]\naddr = \":9121\"\n", ErrUnknownKey, `config.toml:2: unknown table "metrics"`},
		{"dotted key", "log.level = \"info\"\n", ErrUnknownKey, `config.toml:1: unknown key "log.level" (did you mean "log_level"?)`},
		{"wrong type for bool", "fail_open = \"yes\"\n", ErrValue, `config.toml:1: invalid value: fail_open: want true or false`},
		{"string for array", "\npublic_ip = \"203.0.113.7\"\n", ErrValue,
			`config.toml:2: invalid value: public_ip: want an array of addresses, at most one per family, like ["203.0.113.7"]`},
		{"port out of range", "control_ports = [21, 70000]\n", ErrValue,
			`config.toml:1: invalid value: control_ports: want an array of TCP ports, like [21, 2121]`},
		{"negative queue", "queue_num = -1\n", ErrValue,
			`config.toml:1: invalid value: queue_num: want an NFQUEUE number from 0 to 65535`},
		{"bad duration", "pinhole_timeout = \"30\"\n", ErrValue,
			`config.toml:1: invalid value: pinhole_timeout: want a duration like "30s": time: missing unit in duration "30"`},
		{"zero duration", "pinhole_timeout = \"0s\"\n", ErrValue,
			`config.toml:1: invalid value: pinhole_timeout: duration "0s" is not positive`},
		{"inverted range", "data_ports = \"9-1\"\n", ErrValue,
			`config.toml:1: invalid value: data_ports: want a range like "1024-65535": invalid port range: "9-1"`},
		{"bad address", "public_ip = [\"203.0.113.300\"]\n", ErrValue, ""},
		{"two of one family", "ipv4 = true\npublic_ip = [\"203.0.113.7\", \"198.51.100.1\"]\n", ErrValue,
			`config.toml:2: invalid value: public_ip: more than one address of one family`},
		{"empty port list", "\n\ncontrol_ports = []\n", ErrValue,
			`config.toml:3: invalid value: control_ports: empty; want at least one port`},
		{"port zero", "queue_num = 1\ncontrol_ports = [0]\n", ErrValue, `config.toml:2: invalid value: control_ports: port 0`},
		{"no family", "ipv4 = false\nipv6 = false\n", ErrValue,
			`config.toml:2: invalid value: ipv6: ipv4 and ipv6 are both false`},
		{"log format", "log_format = \"xml\"\n", ErrValue,
			`config.toml:1: invalid value: log_format: log format "xml": want "text" or "json"`},
		{"log level", "log_level = \"loud\"\n", ErrValue,
			`config.toml:1: invalid value: log_level: log level "loud": want "debug", "info", "warn" or "error"`},
		{"metrics addr without port", "metrics_addr = \"127.0.0.1\"\n", ErrValue, ""},
		{"metrics addr port 0", "metrics_addr = \"127.0.0.1:0\"\n", ErrValue, ""},
		{"role", "role = \"firewall\"\n", ErrValue,
			`config.toml:1: invalid value: role: role "firewall": want "both", "router" or "host"`},
		{"relative socket", "status_socket = \"status.sock\"\n", ErrValue,
			`config.toml:1: invalid value: status_socket: socket path "status.sock" is not absolute`},
		{"socket too long", "status_socket = \"/" + strings.Repeat("x", 120) + "\"\n", ErrValue, ""},
		{"set twice", "queue_num = 1\nqueue_num = 2\n", ErrSyntax, `config.toml:2: syntax error: queue_num is set twice`},
		{"syntax", "queue_num = \n", ErrSyntax, ""},
		{"unterminated string", "outside_if = \"eth0\n", ErrSyntax, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("config.toml", []byte(tt.doc))
			if !errors.Is(err, tt.want) {
				t.Fatalf("error %v, want %v", err, tt.want)
			}
			if tt.msg != "" && err.Error() != tt.msg {
				t.Errorf("error\n%s\nwant\n%s", err, tt.msg)
			}
			if !strings.HasPrefix(err.Error(), "config.toml:") {
				t.Errorf("error %q does not start with the file name", err)
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }

func TestParse(t *testing.T) {
	doc := `# every key
outside_if = "eth0"
public_ip = ["203.0.113.7", "2001:db8::7"]
control_ports = [21, 2121]
queue_num = 7
pinhole_timeout = "1m30s"
data_ports = "40000-40999"
install_rules = false
fail_open = true
log_format = "json"
log_level = "debug"
ipv4 = true
ipv6 = false
metrics_addr = "[2001:db8::1]:9121"
status_socket = "/run/ftpalg/status.sock"
`
	got, err := Parse("x.toml", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	want := File{
		OutsideIf:      ptr("eth0"),
		PublicIP:       []netip.Addr{netip.MustParseAddr("203.0.113.7"), netip.MustParseAddr("2001:db8::7")},
		ControlPorts:   []uint16{21, 2121},
		QueueNum:       ptr(uint16(7)),
		PinholeTimeout: ptr(Duration(90 * time.Second)),
		DataPorts:      &PortRange{40000, 40999},
		InstallRules:   ptr(false),
		FailOpen:       ptr(true),
		LogFormat:      ptr(LogFormat("json")),
		LogLevel:       ptr(LogLevel("debug")),
		IPv4:           ptr(true),
		IPv6:           ptr(false),
		MetricsAddr:    ptr(HostPort("[2001:db8::1]:9121")),
		StatusSocket:   ptr(SocketPath("/run/ftpalg/status.sock")),
	}
	got.name, got.lines = "", nil
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %+v\nwant %+v", got, want)
	}

	empty, err := Parse("empty.toml", []byte("# nothing set\n"))
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if v, ok := empty.value(k.key); ok {
			t.Errorf("empty file sets %s = %q", k.key, v)
		}
	}
}

// runFlags defines flags of the same names and types as `ftpalg run`.
func runFlags() *flag.FlagSet {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(new(strings.Builder))
	fs.String("outside-if", "", "")
	fs.String("public-ip", "", "")
	fs.String("control-ports", "21", "")
	fs.Uint("queue-num", 21, "")
	fs.Duration("pinhole-timeout", 30*time.Second, "")
	fs.String("data-ports", "1024-65535", "")
	fs.Bool("install-rules", true, "")
	fs.Bool("fail-open", false, "")
	fs.String("log-format", "text", "")
	fs.String("log-level", "info", "")
	fs.Bool("ipv4", true, "")
	fs.Bool("ipv6", true, "")
	fs.String("metrics-addr", "", "")
	fs.String("status-socket", "/run/ftpalg/status.sock", "")
	fs.String("role", "both", "")
	return fs
}

func TestApply(t *testing.T) {
	const doc = `
public_ip = ["203.0.113.7", "2001:db8::7"]
control_ports = [21, 2121]
queue_num = 7
pinhole_timeout = "1m30s"
data_ports = "40000-40999"
install_rules = false
log_level = "debug"
metrics_addr = ""
`
	tests := []struct {
		name string
		args []string
		want map[string]string // flag -> value after Apply; others keep defaults
	}{
		{"file only", nil, map[string]string{
			"public-ip": "203.0.113.7,2001:db8::7", "control-ports": "21,2121", "queue-num": "7",
			"pinhole-timeout": "1m30s", "data-ports": "40000-40999", "install-rules": "false", "log-level": "debug",
			"metrics-addr": "", "outside-if": "", "fail-open": "false", "status-socket": "/run/ftpalg/status.sock",
		}},
		{"flags override", []string{"--queue-num", "9", "--install-rules=true", "--outside-if", "eth1"}, map[string]string{
			"queue-num": "9", "install-rules": "true", "outside-if": "eth1", "pinhole-timeout": "1m30s", "control-ports": "21,2121",
		}},
		{"flag given with its default value still wins", []string{"--log-level", "info"}, map[string]string{
			"log-level": "info", "queue-num": "7",
		}},
	}
	f, err := Parse("ftpalg.toml", []byte(doc))
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fs := runFlags()
			if err := fs.Parse(tt.args); err != nil {
				t.Fatal(err)
			}
			if err := f.Apply(fs); err != nil {
				t.Fatal(err)
			}
			for name, want := range tt.want {
				if got := fs.Lookup(name).Value.String(); got != want {
					t.Errorf("--%s = %q, want %q", name, got, want)
				}
			}
		})
	}
}

func TestApplySubset(t *testing.T) {
	// `ftpalg rules` has only some of the flags: the others are skipped.
	f, err := Parse("ftpalg.toml", []byte("control_ports = [2121]\npinhole_timeout = \"5s\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	fs := flag.NewFlagSet("rules", flag.ContinueOnError)
	ports := fs.String("control-ports", "21", "")
	if err := f.Apply(fs); err != nil {
		t.Fatal(err)
	}
	if *ports != "2121" {
		t.Errorf("--control-ports = %q", *ports)
	}
}

func TestApplyRejected(t *testing.T) {
	// A flag whose parser is stricter than the file's check reports the
	// file's line.
	f, err := Parse("ftpalg.toml", []byte("\noutside_if = \"eth0\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.Func("outside-if", "", func(s string) error { return errors.New("no such interface") })
	err = f.Apply(fs)
	const want = `ftpalg.toml:2: invalid value: outside_if: flag --outside-if rejects "eth0": no such interface`
	if !errors.Is(err, ErrValue) || err.Error() != want {
		t.Errorf("got %v, want %s", err, want)
	}
}

// Every field of File has a key in the table, with the same name, and every
// key names a flag of `run` (as runFlags mirrors it).
func TestKeysCoverFields(t *testing.T) {
	typ := reflect.TypeFor[File]()
	tags := map[string]bool{}
	for i := range typ.NumField() {
		if tag := typ.Field(i).Tag.Get("toml"); tag != "" {
			tags[tag] = true
		}
	}
	fs := runFlags()
	km := Keys()
	if len(km) != len(tags) {
		t.Errorf("%d keys, %d fields", len(km), len(tags))
	}
	for key, fl := range km {
		if !tags[key] {
			t.Errorf("key %s has no field", key)
		}
		if fs.Lookup(fl) == nil {
			t.Errorf("key %s: no flag --%s", key, fl)
		}
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "ftpalg.toml")
	if err := os.WriteFile(good, []byte("queue_num = 3\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := Load(good)
	if err != nil || f.QueueNum == nil || *f.QueueNum != 3 {
		t.Fatalf("Load: %+v, %v", f, err)
	}
	if _, err := Load(filepath.Join(dir, "missing.toml")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
	big := filepath.Join(dir, "big.toml")
	if err := os.WriteFile(big, []byte(strings.Repeat("#\n", maxSize)), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(big); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Errorf("oversized file: %v", err)
	}
	bad := filepath.Join(dir, "bad.toml")
	if err := os.WriteFile(bad, []byte("\nqueue_nm = 3\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(bad); err == nil || !strings.HasPrefix(err.Error(), bad+":2: unknown key") {
		t.Errorf("bad file: %v", err)
	}
}

// The example shipped in deploy/ must stay valid.
func TestExampleFile(t *testing.T) {
	f, err := Load("../deploy/ftpalg.toml")
	if err != nil {
		t.Fatal(err)
	}
	fs := runFlags()
	if err := f.Apply(fs); err != nil {
		t.Fatal(err)
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte("queue_num = 3\ncontrol_ports = [21]\n"))
	f.Add([]byte("[a]\nb.c = 1\n"))
	f.Add([]byte("public_ip = [\"::1\"]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := Parse("f.toml", data)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "f.toml") {
				t.Fatalf("error without file name: %v", err)
			}
			return
		}
		if err := cfg.Apply(runFlags()); err != nil {
			t.Fatalf("valid file rejected by flags: %v", err)
		}
	})
}
