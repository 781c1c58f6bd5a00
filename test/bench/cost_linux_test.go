package main

import (
	"strings"
	"testing"
	"time"
)

func TestParseCPUStat(t *testing.T) {
	st, err := parseCPUStat(strings.NewReader("cpu  100 5 50 9000 20 3 7 1 0 0\ncpu0 50 2 25 4500 10 1 3 0 0 0\n"))
	if err != nil {
		t.Fatal(err)
	}
	// busy = user+nice+system+irq+softirq+steal = 100+5+50+3+7+1 ticks of 10 ms
	if want := (cpuStat{busy: 1660 * time.Millisecond, softirq: 70 * time.Millisecond}); st != want {
		t.Errorf("got %+v, want %+v", st, want)
	}
	if _, err := parseCPUStat(strings.NewReader("intr 1 2 3\n")); err == nil {
		t.Error("no cpu line: no error")
	}
}

func TestParseSegments(t *testing.T) {
	out := `Chain PREROUTING (policy ACCEPT 1000 packets, 90000 bytes)
    pkts      bytes target     prot opt in     out     source               destination
     300    16000            tcp  --  *      *       0.0.0.0/0            0.0.0.0/0            multiport ports 21 /* ftpalg-bench-segments */
     120     6240            tcp  --  *      *       0.0.0.0/0            0.0.0.0/0            multiport ports 21 match bpf 48 0 0 0 /* ftpalg-bench-segments */
      17     1000 CT         tcp  --  *      *       0.0.0.0/0            0.0.0.0/0            tcp dpt:21 CT helper ftp
`
	all, payload, err := parseSegments(out)
	if err != nil || all != 300 || payload != 180 {
		t.Errorf("got %d, %d, %v; want 300, 180", all, payload, err)
	}
	if _, _, err := parseSegments("Chain PREROUTING\n"); err == nil {
		t.Error("no counting rules: no error")
	}
}
