package matrix

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ftpalg/ftpalg/internal/testenv"
	"github.com/ftpalg/ftpalg/test/rig"
)

// nsPrefix names the matrix's namespaces.
const nsPrefix = "fm"

// Sizes of the cases' files.
const (
	downloadSize = 5 << 20
	uploadSize   = 1 << 20
	manyFiles    = 200
	listFiles    = 10
)

// ftpalgBin is the binary under test: $FTPALG_BIN, or one built by TestMain.
var ftpalgBin string

func TestMain(m *testing.M) { testenv.MainWithFtpalg(m, &ftpalgBin) }

// settings are TestMatrix's environment variables.
type settings struct {
	full     bool   // FTPALG_MATRIX=full: every cell and case
	run      string // FTPALG_MATRIX_RUN: comma-separated name filter
	helper   string // FTPALG_MATRIX_HELPER: "" (ftpalg), "only" or "compare"
	parallel int    // FTPALG_MATRIX_PARALLEL: rigs at once (default 2)
}

func loadSettings() (settings, error) {
	s := settings{
		full:   os.Getenv("FTPALG_MATRIX") == "full",
		run:    os.Getenv("FTPALG_MATRIX_RUN"),
		helper: os.Getenv("FTPALG_MATRIX_HELPER"),
	}
	if v := os.Getenv("FTPALG_MATRIX"); v != "" && v != "full" && v != "slice" {
		return s, fmt.Errorf("FTPALG_MATRIX=%q: want full or slice", v)
	}
	if !slices.Contains([]string{"", "only", "compare"}, s.helper) {
		return s, fmt.Errorf("FTPALG_MATRIX_HELPER=%q: want only or compare", s.helper)
	}
	s.parallel = 2
	if v := os.Getenv("FTPALG_MATRIX_PARALLEL"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			return s, fmt.Errorf("FTPALG_MATRIX_PARALLEL=%q: want a positive number", v)
		}
		s.parallel = n
	}
	return s, nil
}

// TestMatrix runs the interoperability matrix through ftpalg. By default
// it runs the representative slice (see slice); FTPALG_MATRIX=full runs
// every applicable cell with every case. It prints one line per case and
// finally "N passed, M failed".
//
// After every case it checks: the data arrived intact, the router's
// INVALID-drop counter did not move, ftpalg logged the rewrites and
// pinholes the cell needs (200 of each in one session for the 200-file
// case), no pinhole rule is left once the pinhole timeout has passed,
// and ftpalg exits 0 on SIGINT (stop for good) leaving no rule behind.
//
// FTPALG_MATRIX_HELPER=only runs the cases with the kernel's FTP helper
// instead of ftpalg (the ftpalg checks are skipped); =compare reruns every
// failing case with the kernel helper and says whether it fails there
// too. FTPALG_MATRIX_RUN=term,term keeps the cases whose
// topology/server/client/mode/case name contains every term.
func TestMatrix(t *testing.T) {
	testenv.RequireRoot(t, "the matrix builds network namespaces and runs FTP servers and ftpalg in them")
	if testing.Short() {
		t.Skip("the interoperability matrix takes minutes; not in -short mode")
	}
	set, err := loadSettings()
	if err != nil {
		t.Fatal(err)
	}
	jobs := append(slice(), localSlice()...)
	if set.full {
		jobs = append(fullMatrix(), localMatrix()...)
		for why, cells := range notApplicable() {
			fmt.Printf("N/A (%d cells): %s\n", len(cells), why)
		}
	}
	jobs = filter(jobs, set.run)
	if len(jobs) == 0 {
		t.Fatalf("FTPALG_MATRIX_RUN=%q selects no case", set.run)
	}
	if _, err := rig.FetchPackages(t.Context(), rig.DefaultCacheDir()); err != nil {
		t.Fatal(err)
	}
	rep := &report{w: os.Stdout}
	rep.header(set)
	start := time.Now()
	t.Run("cases", func(t *testing.T) {
		sem := make(chan struct{}, set.parallel)
		for _, g := range groupJobs(jobs) {
			t.Run(g.net()+"/"+g.srv.String(), func(t *testing.T) {
				t.Parallel()
				sem <- struct{}{}
				defer func() { <-sem }()
				runGroup(t, set, g, rep)
			})
		}
	})
	rep.footer(time.Since(start))
}

// group is the jobs that share a rig and a server: the same topology,
// ruleset and server configuration.
type group struct {
	cell // the first job's; only the rig's and server's fields matter
	jobs []job
}

func (g group) holds(j job) bool {
	return g.topo == j.topo && g.ruleset == j.ruleset && g.srv == j.srv
}

func groupJobs(jobs []job) []group {
	var out []group
	for _, j := range jobs {
		i := slices.IndexFunc(out, func(g group) bool { return g.holds(j) })
		if i < 0 {
			out = append(out, group{cell: j.cell})
			i = len(out) - 1
		}
		out[i].jobs = append(out[i].jobs, j)
	}
	return out
}

// bed is a rig with a running server and its fixtures.
type bed struct {
	r           *rig.Rig
	s           *rig.FTPServer
	helper      bool
	downloadSum string
	uploadSrc   string
	uploadSum   string
	manySums    map[string]string // remote path -> SHA-256
	listNames   []string
}

// newBed builds a rig for the topology and ruleset of c, starts c's
// server in it with the fixtures and registers its teardown with t.
func newBed(t *testing.T, c cell, helper bool) (*bed, error) {
	topo, srv := c.topo, c.srv
	var opts []rig.Option
	if helper {
		opts = append(opts, rig.WithKernelHelper())
	}
	if c.ruleset == rig.NFTables {
		admin, err := adminRules(helper)
		if err != nil {
			return nil, err
		}
		opts = append(opts, rig.WithNFTables(), rig.WithAdminRules(admin))
	}
	if ports := c.controlPorts(); ports != nil {
		opts = append(opts, rig.WithControlPorts(ports...))
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	r, err := rig.Build(ctx, topo, nsPrefix, opts...)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() {
		if err := r.Close(); err != nil {
			t.Errorf("closing rig: %v", err)
		}
	})
	so := rig.ServerOptions{Upload: true}
	if srv.masq {
		so.MasqueradeAddress = r.ServerAddr()
		so.PassivePorts = rig.PortRange{First: 30000, Last: 30099}
	}
	s, err := r.StartServer(srv.kind, so)
	if err != nil {
		return nil, err
	}
	b := &bed{r: r, s: s, helper: helper, manySums: map[string]string{}}
	if b.downloadSum, err = s.CreateFile("5m.bin", downloadSize); err != nil {
		return nil, err
	}
	b.uploadSrc = filepath.Join(r.Dir(), "upload-src.bin")
	if b.uploadSum, err = rig.WriteRandomFile(b.uploadSrc, uploadSize); err != nil {
		return nil, err
	}
	for _, d := range []string{"many", "list"} {
		p := filepath.Join(s.Root, d)
		if err := os.Mkdir(p, 0o755); err != nil {
			return nil, err
		}
		if err := os.Chmod(p, 0o755); err != nil {
			return nil, err
		}
	}
	for i := range manyFiles {
		name := fmt.Sprintf("many/f%03d.bin", i)
		// Sizes of four digits or more: tnftp's "N bytes received"
		// lines then never look like a three-digit reply.
		if b.manySums[name], err = s.CreateFile(name, int64(1000+i*7)); err != nil {
			return nil, err
		}
	}
	for i := range listFiles {
		name := fmt.Sprintf("list/entry-%02d.txt", i)
		if _, err := s.CreateFile(name, 100); err != nil {
			return nil, err
		}
		b.listNames = append(b.listNames, filepath.Base(name))
	}
	return b, nil
}

func runGroup(t *testing.T, set settings, g group, rep *report) {
	b, err := newBed(t, g.cell, set.helper == "only")
	if err != nil {
		for _, j := range g.jobs {
			for _, k := range j.cases {
				rep.add(t, outcome{cell: j.cell, kase: k, err: fmt.Errorf("setting up: %w", err)})
			}
		}
		return
	}
	for _, j := range g.jobs {
		for _, k := range j.cases {
			o := b.run(t.Context(), j.cell, k)
			if o.err != nil && set.helper == "compare" {
				o.helper = compareWithHelper(t, j.cell, k)
			}
			rep.add(t, o)
		}
	}
}

// compareWithHelper runs one case on a fresh rig with the kernel's FTP
// helper instead of ftpalg and returns its result.
func compareWithHelper(t *testing.T, c cell, k caseKind) string {
	var res string
	t.Run("kernel-helper", func(t *testing.T) {
		b, err := newBed(t, c, true)
		if err != nil {
			res = "setup failed: " + err.Error()
			return
		}
		if o := b.run(t.Context(), c, k); o.err != nil {
			res = "FAIL: " + oneLine(o.err.Error(), 200)
		} else {
			res = "PASS"
		}
	})
	return res
}

// outcome is one case's result.
type outcome struct {
	cell
	kase   caseKind
	err    error
	bytes  int64
	dur    time.Duration
	helper string // result with the kernel helper (compare mode), or ""
	note   string // remark printed after the line, e.g. port remaps
}

// run runs case k of cell c and all the checks after it.
func (b *bed) run(ctx context.Context, c cell, k caseKind) outcome {
	o := outcome{cell: c, kase: k}
	inv0, err := b.r.InvalidDrops()
	if err != nil {
		o.err = err
		return o
	}
	var g *gateway
	if !b.helper {
		if g, err = startFtpalg(b.r, ftpalgBin); err != nil {
			o.err = err
			return o
		}
	}
	local, err := os.MkdirTemp(b.r.Dir(), "case-")
	if err != nil {
		o.err = err
		return o
	}
	defer os.RemoveAll(local)
	j := rig.Job{Mode: c.mode, User: b.s.User, Password: b.s.Password}
	timeout := 90 * time.Second
	switch k {
	case download:
		j.Op, j.Remote, j.Local = rig.Get, []string{"5m.bin"}, filepath.Join(local, "5m.bin")
	case upload:
		j.Op, j.Local = rig.Put, b.uploadSrc
		j.Remote = []string{fmt.Sprintf("upload/%v-%v-%v.bin", c.client, c.mode, time.Now().UnixNano())}
	case many:
		j.Op, j.Local = rig.GetMany, local
		for i := range manyFiles {
			j.Remote = append(j.Remote, fmt.Sprintf("many/f%03d.bin", i))
		}
		timeout = 5 * time.Minute
	case list:
		j.Op, j.Remote, j.Local = rig.List, []string{"list"}, filepath.Join(local, "listing.txt")
	}
	cctx, cancel := context.WithTimeout(ctx, timeout)
	res, err := b.r.RunClient(cctx, c.client, j)
	cancel()
	o.bytes, o.dur = res.Bytes, res.Duration
	var errs []error
	if err != nil {
		errs = append(errs, fmt.Errorf("%w; last output: %s", err, oneLine(tail(res.Stderr, 300), 300)))
	} else {
		errs = append(errs, b.verify(k, j))
	}
	if inv1, err := b.r.InvalidDrops(); err != nil || inv1 != inv0 {
		errs = append(errs, fmt.Errorf("INVALID drops went from %d to %d (%v)", inv0, inv1, err))
	}
	if g != nil {
		if err == nil {
			errs = append(errs, checkLog(g, c, k))
		}
		if n := portRemaps(g); n > 0 && !c.needsRewrite() {
			o.note = fmt.Sprintf("%d port-only rewrites", n)
		}
		errs = append(errs, g.waitNoPinholes(ctx), g.stop(ctx))
		if e := errors.Join(errs...); e != nil {
			if w := g.warnings(); w != "" {
				errs = append(errs, fmt.Errorf("ftpalg said: %s", w))
			}
		}
	}
	o.err = errors.Join(errs...)
	return o
}

// verify checks the case's data.
func (b *bed) verify(k caseKind, j rig.Job) error {
	switch k {
	case download:
		if sum, err := rig.FileSHA256(j.Local); err != nil || sum != b.downloadSum {
			return fmt.Errorf("download: SHA-256 %s (%v), want %s", sum, err, b.downloadSum)
		}
	case upload:
		p := filepath.Join(b.s.Root, j.Remote[0])
		if sum, err := rig.FileSHA256(p); err != nil || sum != b.uploadSum {
			return fmt.Errorf("upload: server has SHA-256 %s (%v), want %s", sum, err, b.uploadSum)
		}
	case many:
		for _, r := range j.Remote {
			p := filepath.Join(j.Local, filepath.Base(r))
			if sum, err := rig.FileSHA256(p); err != nil || sum != b.manySums[r] {
				return fmt.Errorf("%s: SHA-256 %s (%v), want %s", r, sum, err, b.manySums[r])
			}
		}
	case list:
		data, err := os.ReadFile(j.Local)
		if err != nil {
			return fmt.Errorf("listing: %w", err)
		}
		for _, n := range b.listNames {
			if !strings.Contains(string(data), n) {
				return fmt.Errorf("listing lacks %s:\n%s", n, data)
			}
		}
	}
	return nil
}

// checkLog checks ftpalg's log against what the cell needs.
func checkLog(g *gateway, c cell, k caseKind) error {
	want := 1
	if k == many {
		want = manyFiles
	}
	// ftpalg logs a rewrite and a pinhole before it releases the packet,
	// but the rig copies its output from a pipe in another goroutine,
	// which on a loaded machine may not have run by the time a 14 ms
	// transfer ends: wait for it a little.
	rewrites, pinholes := g.maxPerSession("rewrite"), g.maxPerSession("pinhole opened")
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline) &&
		((c.needsRewrite() && rewrites < want) || (c.needsPinhole() && pinholes < want)); {
		time.Sleep(20 * time.Millisecond)
		rewrites, pinholes = g.maxPerSession("rewrite"), g.maxPerSession("pinhole opened")
	}
	switch {
	case c.needsRewrite() && rewrites < want:
		return fmt.Errorf("%w: %d rewrites in one session, want at least %d", errGateway, rewrites, want)
	case c.needsPinhole() && pinholes < want:
		return fmt.Errorf("%w: %d pinholes in one session, want at least %d", errGateway, pinholes, want)
	}
	if c.srv.masq {
		// The 227 already names the public address; ftpalg must keep
		// it. It may still move the port when the announced one is
		// reserved by a pinhole that has not closed yet (proftpd picks
		// passive ports at random from a small range).
		for _, e := range g.events("rewrite") {
			if e["cmd"] != "227" {
				continue // a 229 names no address; only its port can move
			}
			from, err1 := netip.ParseAddrPort(fmt.Sprint(e["from"]))
			to, err2 := netip.ParseAddrPort(fmt.Sprint(e["to"]))
			if err1 != nil || err2 != nil || from.Addr() != to.Addr() {
				return fmt.Errorf("%w: rewrote the already public address of a MasqueradeAddress 227: %s -> %s", errGateway, e["from"], e["to"])
			}
		}
	}
	return nil
}

// portRemaps counts rewrites that changed only the port: of a 227 that
// kept its address, or of a 229, which names no address.
func portRemaps(g *gateway) int {
	n := 0
	for _, e := range g.events("rewrite") {
		from, err1 := netip.ParseAddrPort(fmt.Sprint(e["from"]))
		to, err2 := netip.ParseAddrPort(fmt.Sprint(e["to"]))
		if err1 != nil || err2 != nil || from.Port() == to.Port() {
			continue
		}
		if e["cmd"] == "229" || from.Addr() == to.Addr() {
			n++
		}
	}
	return n
}

// warnings returns ftpalg's WARN and ERROR records, for failure reports.
func (g *gateway) warnings() string {
	var out []string
	for line := range strings.Lines(g.p.Output()) {
		if strings.Contains(line, `"level":"WARN"`) || strings.Contains(line, `"level":"ERROR"`) {
			out = append(out, strings.TrimSpace(line))
		}
	}
	if len(out) > 3 {
		out = append(out[:3], fmt.Sprintf("(%d more)", len(out)-3))
	}
	return strings.Join(out, " ")
}

// oneLine flattens s to one line of at most n bytes.
func oneLine(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > n {
		s = s[:n] + "..."
	}
	return s
}

// report prints one line per case and the totals.
type report struct {
	mu       sync.Mutex
	w        io.Writer
	passed   int
	failed   int
	failures []string
	both     []string // failing with ftpalg and with the kernel helper
}

func (rp *report) header(set settings) {
	what := "slice"
	if set.full {
		what = "full matrix"
	}
	via := "ftpalg"
	if set.helper == "only" {
		via = "kernel FTP helper"
	}
	fmt.Fprintf(rp.w, "matrix: %s through %s\n", what, via)
	fmt.Fprintf(rp.w, "%-21s %-12s %-6s %-4s %-8s %-6s %9s %8s\n", "TOPOLOGY", "SERVER", "CLIENT", "MODE", "CASE", "RESULT", "BYTES", "TIME")
}

func (rp *report) add(t *testing.T, o outcome) {
	rp.mu.Lock()
	defer rp.mu.Unlock()
	result := "PASS"
	if o.err != nil {
		result = "FAIL"
	}
	line := fmt.Sprintf("%-21s %-12s %-6s %-4s %-8s %-6s %9d %8s", o.net(), o.srv, o.client, o.mode, o.kase, result,
		o.bytes, o.dur.Round(time.Millisecond))
	if o.helper != "" {
		line += "  kernel helper: " + strings.SplitN(o.helper, ":", 2)[0]
	}
	if o.note != "" {
		line += "  (" + o.note + ")"
	}
	fmt.Fprintln(rp.w, line)
	if o.err == nil {
		rp.passed++
		return
	}
	rp.failed++
	reason := oneLine(o.err.Error(), 600)
	fmt.Fprintf(rp.w, "    reason: %s\n", reason)
	rp.failures = append(rp.failures, fmt.Sprintf("%v/%v: %s", o.cell, o.kase, reason))
	if strings.HasPrefix(o.helper, "FAIL") {
		fmt.Fprintf(rp.w, "    kernel helper: %s\n", o.helper)
		rp.both = append(rp.both, fmt.Sprintf("%v/%v: %s", o.cell, o.kase, o.helper))
	}
	t.Errorf("%v/%v: %v", o.cell, o.kase, o.err)
}

func (rp *report) footer(d time.Duration) {
	rp.mu.Lock()
	defer rp.mu.Unlock()
	fmt.Fprintf(rp.w, "matrix took %v\n", d.Round(time.Second))
	for _, f := range rp.failures {
		fmt.Fprintf(rp.w, "failed: %s\n", f)
	}
	for _, f := range rp.both {
		fmt.Fprintf(rp.w, "fails with the kernel helper too: %s\n", f)
	}
	fmt.Fprintf(rp.w, "%d passed, %d failed\n", rp.passed, rp.failed)
}
