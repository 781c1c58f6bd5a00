// Command testsum reads `go test -json` on standard input, prints what a
// reader of a CI log needs (a line per package, the whole output of every
// failed test, the reason of every skipped one) and counts the tests that
// ran, so that a run which silently skipped its root tests is visible.
//
//	go test -json ./... | testsum [-tally FILE]
//	testsum -total FILE [-max-skipped N]
//
// With -tally the counts are appended to FILE as one line
// "passed failed skipped source"; test/fuzz.sh appends its targets the
// same way. -total sums FILE and prints the line .ci/run ends with:
//
//	ci: 412 passed, 0 failed, 0 skipped
//
// Subtests count as tests of their own, as `go test -v` lists them; a
// benchmark counts once for the result line it printed.
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
)

func main() {
	tally := flag.String("tally", "", "append this run's counts to `FILE`")
	total := flag.String("total", "", "print the sum of the counts in `FILE` and exit")
	maxSkipped := flag.Int("max-skipped", -1, "with -total: fail when more tests than this were skipped (-1: any number)")
	flag.Parse()
	if *total != "" {
		c, err := readTally(*total)
		if err != nil {
			fmt.Fprintln(os.Stderr, "testsum:", err)
			os.Exit(2)
		}
		fmt.Printf("ci: %d passed, %d failed, %d skipped\n", c.passed, c.failed, c.skipped)
		if c.failed > 0 || c.passed == 0 || (*maxSkipped >= 0 && c.skipped > *maxSkipped) {
			os.Exit(1)
		}
		return
	}
	s := newSummary(os.Stdout)
	if err := s.read(os.Stdin); err != nil {
		fmt.Fprintln(os.Stderr, "testsum:", err)
		os.Exit(2)
	}
	c := s.finish()
	if *tally != "" {
		if err := appendTally(*tally, c, "go test"); err != nil {
			fmt.Fprintln(os.Stderr, "testsum:", err)
			os.Exit(2)
		}
	}
	if c.failed > 0 || s.brokenPackages > 0 {
		os.Exit(1)
	}
}

// counts are the tests that passed, failed and skipped.
type counts struct{ passed, failed, skipped int }

func (c *counts) add(o counts) {
	c.passed += o.passed
	c.failed += o.failed
	c.skipped += o.skipped
}

// event is one line of `go test -json` (cmd/test2json).
type event struct {
	Time    time.Time
	Action  string
	Package string
	Test    string
	Elapsed float64
	Output  string
}

// testKey names a test within its package.
type testKey struct{ pkg, test string }

// summary accumulates the events of one `go test -json` run.
type summary struct {
	w              io.Writer
	output         map[testKey][]string // output of tests still running
	counts         counts
	skips          []string
	brokenPackages int // packages that failed outside any test (build errors, panics in init, timeouts)
	pkgFailedTests map[string]int
	benchRuns      int // benchmarks started; they report no pass action
	benchFailed    int
}

func newSummary(w io.Writer) *summary {
	return &summary{w: w, output: map[testKey][]string{}, pkgFailedTests: map[string]int{}}
}

// benchResult matches a benchmark's result line when test2json files it
// under no test: "BenchmarkX-2  1  7966 ns/op".
var benchResult = regexp.MustCompile(`^Benchmark\S+\s+\d+\s+[0-9.]+ ns/op`)

// benchFail matches a failed benchmark's line.
var benchFail = regexp.MustCompile(`^--- FAIL: Benchmark`)

func (s *summary) read(r io.Reader) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for sc.Scan() {
		line := sc.Bytes()
		var e event
		if len(line) == 0 || line[0] != '{' || json.Unmarshal(line, &e) != nil {
			// go vet or the compiler writing to stderr, merged in.
			fmt.Fprintf(s.w, "%s\n", line)
			continue
		}
		s.handle(e)
	}
	return sc.Err()
}

func (s *summary) handle(e event) {
	k := testKey{e.Package, e.Test}
	switch e.Action {
	case "output":
		// A benchmark ends with no action of its own: it is counted at
		// its "run" and, if it fails, at its FAIL line. Its result line
		// is printed; test2json may deliver it in pieces (the name
		// first, the figures when the run is done).
		out := e.Output
		switch {
		case strings.HasPrefix(e.Test, "Benchmark") && strings.Contains(out, " ns/op"):
			fmt.Fprint(s.w, strings.TrimLeft(out, " \t"))
			return
		case benchFail.MatchString(out):
			s.benchFailed++
			s.pkgFailedTests[e.Package]++
			fmt.Fprint(s.w, out)
			return
		case benchResult.MatchString(out):
			fmt.Fprint(s.w, out)
			return
		}
		if e.Test != "" {
			s.output[k] = append(s.output[k], e.Output)
			return
		}
		// Package-level output: build errors, the ok/FAIL line, panics
		// outside a test.
		switch {
		case strings.HasPrefix(out, "ok  \t"), strings.HasPrefix(out, "FAIL\t"), strings.HasPrefix(out, "?   \t"),
			out == "PASS\n", out == "FAIL\n", strings.HasPrefix(out, "goos:"), strings.HasPrefix(out, "goarch:"),
			strings.HasPrefix(out, "pkg:"), strings.HasPrefix(out, "cpu:"):
			// Printed from the pass/fail/skip action below, or noise.
		default:
			fmt.Fprint(s.w, out)
		}
	case "run":
		if strings.HasPrefix(e.Test, "Benchmark") {
			s.benchRuns++
		}
	case "build-output":
		fmt.Fprint(s.w, e.Output)
	case "pass", "fail", "skip":
		if e.Test == "" {
			s.packageDone(e)
			return
		}
		out := s.output[k]
		delete(s.output, k)
		switch e.Action {
		case "pass":
			s.counts.passed++
		case "fail":
			s.counts.failed++
			s.pkgFailedTests[e.Package]++
			fmt.Fprint(s.w, strings.Join(out, ""))
		case "skip":
			s.counts.skipped++
			s.skips = append(s.skips, fmt.Sprintf("%s %s: %s", e.Package, e.Test, skipReason(out)))
		}
	}
}

// packageDone prints the package's line, as go test would.
func (s *summary) packageDone(e event) {
	switch e.Action {
	case "pass":
		for k := range s.output {
			if k.pkg == e.Package {
				delete(s.output, k) // a benchmark's "=== RUN" lines
			}
		}
		fmt.Fprintf(s.w, "ok  \t%s\t%.3fs\n", e.Package, e.Elapsed)
	case "skip":
		fmt.Fprintf(s.w, "?   \t%s\t[no test files]\n", e.Package)
	case "fail":
		// Output of tests that never ended (a timeout's panic names them).
		var running []string
		for k, out := range s.output {
			if k.pkg == e.Package {
				running = append(running, k.test)
				fmt.Fprint(s.w, strings.Join(out, ""))
				delete(s.output, k)
			}
		}
		sort.Strings(running)
		if s.pkgFailedTests[e.Package] == 0 || len(running) > 0 {
			s.brokenPackages++
		}
		fmt.Fprintf(s.w, "FAIL\t%s\t%.3fs\n", e.Package, e.Elapsed)
		if len(running) > 0 {
			fmt.Fprintf(s.w, "testsum: %s: still running when the package failed: %s\n", e.Package, strings.Join(running, ", "))
		}
	}
}

// skipReason extracts the message of a skipped test from its output.
func skipReason(out []string) string {
	var msg []string
	for _, l := range out {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "=== ") || strings.HasPrefix(l, "--- SKIP") {
			continue
		}
		msg = append(msg, l)
	}
	if len(msg) == 0 {
		return "(no reason given)"
	}
	return strings.Join(msg, " ")
}

// finish prints the skips and the counts and returns the counts.
func (s *summary) finish() counts {
	for _, l := range s.skips {
		fmt.Fprintln(s.w, "SKIP", l)
	}
	// A package that failed outside its tests (did not build, timed out)
	// ran an unknown number of them: count it as one failure.
	c := s.counts
	c.passed += max(s.benchRuns-s.benchFailed, 0)
	c.failed += s.benchFailed + s.brokenPackages
	broken := ""
	if s.brokenPackages > 0 {
		broken = fmt.Sprintf(" (%d of them packages that failed outside their tests)", s.brokenPackages)
	}
	fmt.Fprintf(s.w, "tests: %d passed, %d failed%s, %d skipped\n", c.passed, c.failed, broken, c.skipped)
	return c
}

// appendTally appends c as one line of the tally file.
func appendTally(path string, c counts, source string) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("tally: %w", err)
	}
	_, err = fmt.Fprintf(f, "%d %d %d %s\n", c.passed, c.failed, c.skipped, source)
	return errors.Join(err, f.Close())
}

// errTally is a malformed tally line.
var errTally = errors.New("malformed tally line")

// readTally sums the lines of a tally file.
func readTally(path string) (counts, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return counts{}, fmt.Errorf("tally: %w", err)
	}
	var c counts
	for i, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		if line == "" {
			continue
		}
		f := strings.Fields(line)
		if len(f) < 3 {
			return counts{}, fmt.Errorf("%s:%d: %q: %w", path, i+1, line, errTally)
		}
		var n [3]int
		for j := range n {
			if n[j], err = strconv.Atoi(f[j]); err != nil || n[j] < 0 {
				return counts{}, fmt.Errorf("%s:%d: %q: %w", path, i+1, line, errTally)
			}
		}
		c.add(counts{n[0], n[1], n[2]})
	}
	return c, nil
}
