package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/ftpalg/ftpalg/rules"
	"github.com/ftpalg/ftpalg/test/rig"
)

// What a session costs beyond its time: the machine's CPU time (all CPUs,
// every state but idle and iowait) and the part of it spent in softirq,
// where the kernel helper, NAT and conntrack do their work; and how many
// control segments crossed the router, with and without payload, against
// how many ftpalg was handed. The kernel helper's price is in softirq,
// ftpalg's partly in its own process: only whole-machine CPU compares them.

// cpuStat is the aggregate "cpu" line of /proc/stat.
type cpuStat struct {
	busy, softirq time.Duration
}

// clockTick is USER_HZ, the unit of /proc/stat: 100 on every Linux ABI.
const clockTick = 100

func readCPUStat() (cpuStat, error) {
	f, err := os.Open("/proc/stat")
	if err != nil {
		return cpuStat{}, err
	}
	defer f.Close()
	return parseCPUStat(f)
}

func parseCPUStat(r io.Reader) (cpuStat, error) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 8 || fields[0] != "cpu" {
			continue
		}
		// user nice system idle iowait irq softirq [steal ...]
		var v [8]uint64
		for i := 1; i < len(fields) && i <= 8; i++ {
			v[i-1], _ = strconv.ParseUint(fields[i], 10, 64)
		}
		ticks := func(n uint64) time.Duration { return time.Duration(n) * time.Second / clockTick }
		busy := v[0] + v[1] + v[2] + v[5] + v[6] + v[7]
		return cpuStat{busy: ticks(busy), softirq: ticks(v[6])}, nil
	}
	return cpuStat{}, fmt.Errorf("/proc/stat: no cpu line")
}

// segCounterComment tags the router's counting rules.
const segCounterComment = "ftpalg-bench-segments"

// installSegmentCounters adds two rules without a target at the head of
// the router's raw PREROUTING, which every forwarded packet passes once
// before conntrack, NAT or a queue: every control-port segment, and those
// without payload (the same xt_bpf program as ftpalg's pure-ACK rule).
func installSegmentCounters(ctx context.Context, r *rig.Rig) error {
	port := strconv.Itoa(int(r.ControlPort()))
	for _, extra := range [][]string{
		{"-m", "bpf", "--bytecode", rules.PureACKBytecode(rules.IPv4)},
		nil,
	} {
		args := append([]string{"-t", "raw", "-I", "PREROUTING", "1", "-p", "tcp", "-m", "multiport", "--ports", port}, extra...)
		args = append(args, "-m", "comment", "--comment", segCounterComment)
		if out, err := r.Run(ctx, rig.Router, "iptables", args...); err != nil {
			return fmt.Errorf("segment counters: %w: %s", err, out)
		}
	}
	return nil
}

var segRule = regexp.MustCompile(`(?m)^\s*(\d+)\s+\d+\s+.*` + segCounterComment + `.*$`)

// segments reads the counters: all control segments, and those with
// payload.
func segments(ctx context.Context, r *rig.Rig) (all, payload uint64, err error) {
	out, err := r.Run(ctx, rig.Router, "iptables", "-t", "raw", "-L", "PREROUTING", "-v", "-x", "-n")
	if err != nil {
		return 0, 0, fmt.Errorf("reading segment counters: %w", err)
	}
	return parseSegments(out)
}

// parseSegments reads the counting rules from `iptables -L -v -x -n`.
func parseSegments(out string) (all, payload uint64, err error) {
	var all0, pure uint64
	n := 0
	for _, m := range segRule.FindAllStringSubmatch(out, -1) {
		v, _ := strconv.ParseUint(m[1], 10, 64)
		if strings.Contains(m[0], "bpf") {
			pure = v
		} else {
			all0 = v
		}
		n++
	}
	if n != 2 {
		return 0, 0, fmt.Errorf("segment counters: found %d of 2 rules", n)
	}
	return all0, all0 - pure, nil
}

// cost is what one repetition of a session workload used.
type cost struct {
	cpu, softirq     time.Duration
	segs, payloadSeg uint64
}

// measureCost runs fn and returns what the machine and the router's
// control segments did meanwhile.
func measureCost(ctx context.Context, g *gateway, fn func() error) (cost, error) {
	before, err := sampleCost(ctx, g)
	if err != nil {
		return cost{}, err
	}
	if err := fn(); err != nil {
		return cost{}, err
	}
	after, err := sampleCost(ctx, g)
	if err != nil {
		return cost{}, err
	}
	return cost{cpu: after.cpu - before.cpu, softirq: after.softirq - before.softirq,
		segs: after.segs - before.segs, payloadSeg: after.payloadSeg - before.payloadSeg}, nil
}

// sampleCost reads the counters measureCost subtracts.
func sampleCost(ctx context.Context, g *gateway) (cost, error) {
	st, err := readCPUStat()
	if err != nil {
		return cost{}, err
	}
	all, payload, err := segments(ctx, g.r)
	if err != nil {
		return cost{}, err
	}
	return cost{cpu: st.busy, softirq: st.softirq, segs: all, payloadSeg: payload}, nil
}
