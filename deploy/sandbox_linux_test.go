package deploy

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/test/rig"
)

// sandbox emulates the unit's confinement around a command, in a private
// mount namespace: every mount read-only except /proc, /sys and /dev
// (ProtectSystem=strict) but a writable /run/ftpalg (RuntimeDirectory=ftpalg,
// for the state directory and status socket), an empty /tmp (PrivateTmp=yes), /root and /home
// hidden (ProtectHome=yes), memory-deny-write-execute through the kernel's
// PR_SET_MDWE (MemoryDenyWriteExecute=yes), no new privileges and exactly
// the unit's capability bounding set as root (NoNewPrivileges=yes,
// CapabilityBoundingSet=). The script checks its own work before it runs
// the command. Descriptor 3 is the test binary (the MDWE wrapper), 4 is
// ftpalg: /tmp, where both live, is about to be hidden. $1 is the bounding
// set, the rest ftpalg's arguments.
const sandbox = `set -e
mkdir -p /run/ftpalg
awk '$9 !~ /^(proc|sysfs|devtmpfs|devpts|mqueue|cgroup2?|nsfs|securityfs|debugfs|tracefs|bpf|pstore|fusectl|configfs|hugetlbfs)$/ {print $5}' /proc/self/mountinfo |
	sort -u | while read -r m; do mount -o remount,bind,ro "$m"; done
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs -o mode=0750 tmpfs /run/ftpalg
for d in /root /home; do [ -d "$d" ] && mount -t tmpfs -o ro,mode=000 tmpfs "$d"; done
for p in /sandbox-probe /etc/sandbox-probe /run/sandbox-probe /usr/sandbox-probe; do
	if touch "$p" 2>/dev/null; then rm -f "$p"; echo "sandbox: $p is writable"; exit 1; fi
done
caps=$1; shift
export FTPALG_DEPLOY_MDWE_EXEC=1
exec /proc/self/fd/3 setpriv --no-new-privs --bounding-set=-all,$caps --inh-caps=-all --ambient-caps=-all /proc/self/fd/4 "$@"
`

// TestUnitSandbox runs ftpalg confined as ftpalg.service confines it, with
// exactly the unit's capabilities, on the router of a client-behind-NAT
// rig with a strict firewall: it must start and install its chains, carry
// an active-mode (PORT) download whose address it rewrites and whose
// pinhole it opens, and stop cleanly leaving no rule behind.
func TestUnitSandbox(t *testing.T) {
	requireRoot(t, "network namespaces, mounts, NFQUEUE and iptables")
	bin := ftpalgBinary(t)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	caps := "+" + strings.Join(unitCaps(t), ",+")

	r := rig.New(t, rig.ClientNAT, rig.WithPrefix("fs"))
	s, err := r.StartVsftpd(rig.VsftpdOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// The binaries reach the sandbox as descriptors 3 and 4.
	cmd := r.Exec(rig.Router, "unshare", "--mount", "--propagation", "private", "--",
		"sh", "-c", sandbox, "sandbox", caps, "run", "--log-format", "json", "--pinhole-timeout", "5s")
	for _, p := range []string{self, bin} {
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		cmd.ExtraFiles = append(cmd.ExtraFiles, f)
	}
	d := startDaemon(t, cmd)
	d.waitLog(t, `"msg":"ftpalg running"`)

	want, err := s.CreateFile("1m.bin", 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "1m.bin")
	res, err := r.CurlGet(rig.PORT, r.URL("1m.bin"), out)
	if err != nil {
		t.Fatalf("transfer through the sandboxed ftpalg failed: %v\nftpalg:\n%s", err, d.out.String())
	}
	if got, err := rig.FileSHA256(out); err != nil || got != want {
		t.Fatalf("downloaded file differs (%v)", err)
	}
	t.Logf("1 MiB PORT download through sandboxed ftpalg in %v", res.Duration.Round(time.Millisecond))
	for _, msg := range []string{"rewrite", "pinhole opened"} {
		if !hasEvent(d.out.String(), msg) {
			t.Errorf("ftpalg logged no %q:\n%s", msg, d.out.String())
		}
	}
	if n, err := r.InvalidDrops(); err != nil || n != 0 {
		t.Errorf("router dropped %d INVALID packets (%v)", n, err)
	}
	d.stop(t)
	for _, save := range []string{"iptables-save", "ip6tables-save"} {
		out, err := r.Run(t.Context(), rig.Router, save)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(out, "FTPALG") {
			t.Errorf("%s after exit still shows ftpalg rules:\n%s", save, out)
		}
	}
}

func hasEvent(log, msg string) bool {
	for _, line := range strings.Split(log, "\n") {
		var rec map[string]any
		if json.Unmarshal([]byte(line), &rec) == nil && rec["msg"] == msg {
			return true
		}
	}
	return false
}
