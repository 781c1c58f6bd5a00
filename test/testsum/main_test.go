package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A `go test -json` run, abridged from real output: a package whose test
// passes and a subtest fails, a skip with its reason, a benchmark, a
// package that does not build, and one that times out mid-test.
const run = `{"Action":"start","Package":"p/a"}
{"Action":"run","Package":"p/a","Test":"TestOK"}
{"Action":"output","Package":"p/a","Test":"TestOK","Output":"=== RUN   TestOK\n"}
{"Action":"output","Package":"p/a","Test":"TestOK","Output":"--- PASS: TestOK (0.00s)\n"}
{"Action":"pass","Package":"p/a","Test":"TestOK","Elapsed":0}
{"Action":"run","Package":"p/a","Test":"TestParent"}
{"Action":"run","Package":"p/a","Test":"TestParent/bad"}
{"Action":"output","Package":"p/a","Test":"TestParent/bad","Output":"    a_test.go:9: got 1, want 2\n"}
{"Action":"fail","Package":"p/a","Test":"TestParent/bad","Elapsed":0}
{"Action":"fail","Package":"p/a","Test":"TestParent","Elapsed":0}
{"Action":"run","Package":"p/a","Test":"TestRoot"}
{"Action":"output","Package":"p/a","Test":"TestRoot","Output":"=== RUN   TestRoot\n"}
{"Action":"output","Package":"p/a","Test":"TestRoot","Output":"    a_test.go:20: requires root: namespaces\n"}
{"Action":"output","Package":"p/a","Test":"TestRoot","Output":"--- SKIP: TestRoot (0.00s)\n"}
{"Action":"skip","Package":"p/a","Test":"TestRoot","Elapsed":0}
{"Action":"output","Package":"p/a","Output":"FAIL\n"}
{"Action":"output","Package":"p/a","Output":"FAIL\tp/a\t0.010s\n"}
{"Action":"fail","Package":"p/a","Elapsed":0.01}
{"Action":"start","Package":"p/b"}
{"Action":"run","Package":"p/b","Test":"BenchmarkX"}
{"Action":"output","Package":"p/b","Test":"BenchmarkX","Output":"=== RUN   BenchmarkX\n"}
{"Action":"output","Package":"p/b","Test":"BenchmarkX","Output":"BenchmarkX-2   \t       1\t      7966 ns/op\t      16 B/op\n"}
{"Action":"run","Package":"p/b","Test":"BenchmarkY"}
{"Action":"output","Package":"p/b","Test":"BenchmarkY","Output":"BenchmarkY-2   \t"}
{"Action":"output","Package":"p/b","Test":"BenchmarkY","Output":"       1\t      100 ns/op\n"}
{"Action":"output","Package":"p/b","Output":"PASS\n"}
{"Action":"pass","Package":"p/b","Elapsed":0.02}
{"ImportPath":"p/c","Action":"build-output","Output":"p/c/c.go:3:1: syntax error\n"}
{"ImportPath":"p/c","Action":"build-fail"}
{"Action":"start","Package":"p/c"}
{"Action":"output","Package":"p/c","Output":"FAIL\tp/c [build failed]\n"}
{"Action":"fail","Package":"p/c","Elapsed":0}
{"Action":"run","Package":"p/d","Test":"TestHang"}
{"Action":"output","Package":"p/d","Test":"TestHang","Output":"panic: test timed out after 20m0s\n"}
{"Action":"fail","Package":"p/d","Elapsed":1200}
{"Action":"start","Package":"p/e"}
{"Action":"skip","Package":"p/e","Elapsed":0}
go: warning: something on stderr
`

func TestSummary(t *testing.T) {
	var out bytes.Buffer
	s := newSummary(&out)
	if err := s.read(strings.NewReader(run)); err != nil {
		t.Fatal(err)
	}
	c := s.finish()
	// TestOK, BenchmarkX and BenchmarkY (its result line in two pieces,
	// as test2json sometimes delivers it) pass; TestParent/bad and TestParent fail, plus p/c
	// (build) and p/d (timeout) count as one failure each.
	if want := (counts{passed: 3, failed: 4, skipped: 1}); c != want {
		t.Errorf("counts %+v, want %+v", c, want)
	}
	if s.brokenPackages != 2 {
		t.Errorf("%d broken packages, want 2 (p/c, p/d)", s.brokenPackages)
	}
	for _, want := range []string{
		"a_test.go:9: got 1, want 2",                                 // a failure's output
		"SKIP p/a TestRoot: a_test.go:20: requires root: namespaces", // a skip's reason
		"BenchmarkX-2",               // a benchmark's result
		"p/c/c.go:3:1: syntax error", // a build error
		"panic: test timed out",      // a hung test's output
		"still running when the package failed: TestHang",
		"FAIL\tp/a\t0.010s", "ok  \tp/b\t0.020s", "?   \tp/e\t[no test files]",
		"go: warning: something on stderr",
		"tests: 3 passed, 4 failed (2 of them packages that failed outside their tests), 1 skipped",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
	if strings.Contains(out.String(), "--- PASS: TestOK") {
		t.Errorf("output of a passing test was printed:\n%s", out.String())
	}
}

func TestTally(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tally")
	for _, c := range []counts{{10, 0, 1}, {5, 2, 0}} {
		if err := appendTally(path, c, "go test"); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(path+".fuzz", []byte("11 0 0 fuzz\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := readTally(path)
	if err != nil {
		t.Fatal(err)
	}
	if want := (counts{15, 2, 1}); got != want {
		t.Errorf("sum %+v, want %+v", got, want)
	}
	for _, bad := range []string{"1 2\n", "a 0 0 x\n", "-1 0 0 x\n"} {
		if err := os.WriteFile(path, []byte(bad), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := readTally(path); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}
