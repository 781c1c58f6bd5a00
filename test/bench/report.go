package main

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// Gateway column names. An ftpalg column is "ftpalg", or "ftpalg/<backend>"
// when several --pinholes backends are compared (-backends).
const (
	gwPlain  = "plain NAT"
	gwKernel = "kernel helper"
	gwFtpalg = "ftpalg"
)

// Report is one run: every measured cell, the targets judged on this
// run's ratios, and enough context (machine, binary, parameters) to
// compare it with another run's JSON.
type Report struct {
	Started   time.Time `json:"started"`
	Seconds   float64   `json:"seconds"`
	Host      string    `json:"host"`
	Kernel    string    `json:"kernel"`
	CPUs      int       `json:"cpus"`
	GoVersion string    `json:"go_version"`
	Ftpalg    string    `json:"ftpalg"` // `ftpalg version` output
	Params    Params    `json:"params"`
	Gateways  []string  `json:"gateways"` // column order
	Rows      []*Row    `json:"rows"`
	Targets   []Verdict `json:"targets"`
	// Pinholes holds ftpalg's open latencies per ftpalg gateway and
	// workload, in microseconds.
	Pinholes map[string]map[string]Summary `json:"pinholes,omitempty"`
	// Queued holds the packets ftpalg's queue received per ftpalg gateway
	// and workload, over all repetitions.
	Queued map[string]map[string]uint64 `json:"queued_packets,omitempty"`
	// CPU is the CPU time ftpalg's threads used per gateway and
	// workload, in milliseconds, all repetitions.
	CPU map[string]map[string]float64 `json:"cpu_ms,omitempty"`
	// FtpalgStats holds each ftpalg's "ftpalg stopping" record.
	FtpalgStats map[string]map[string]any `json:"ftpalg_stats,omitempty"`
	// Memory holds the memory workload's readings per ftpalg gateway.
	Memory map[string]MemoryResult `json:"memory,omitempty"`
	Notes  []string                `json:"notes,omitempty"`
}

// Params are the knobs of the run (the command-line flags).
type Params struct {
	Reps      int    `json:"reps"`
	BulkReps  int    `json:"bulk_reps"`
	BulkBytes int64  `json:"bulk_bytes"`
	NOOPs     int    `json:"noops"`
	Sessions  int    `json:"sessions"`
	Files     int    `json:"files"`
	IdleConns int    `json:"idle_conns"`
	Workloads string `json:"workloads"`
	// FtpalgArgs are the extra `ftpalg run` flags (-ftpalg-arg).
	FtpalgArgs []string `json:"ftpalg_args,omitempty"`
	// FtpalgNice is ftpalg's nice value (-ftpalg-nice).
	FtpalgNice int `json:"ftpalg_nice"`
	// Placement is the CPU placement (placeFree or placeShared).
	Placement        string `json:"placement"`
	Clients          int    `json:"clients"`
	ParallelSessions int    `json:"parallel_sessions"`
}

// Row is one measured quantity across gateways.
type Row struct {
	ID     string           `json:"id"`
	Name   string           `json:"name"`
	Unit   string           `json:"unit"`
	Higher bool             `json:"higher_is_better"`
	Cells  map[string]*Cell `json:"cells"` // by gateway name
}

// Cell is one gateway's value for a row.
type Cell struct {
	// Value is the median over the repetitions.
	Value float64 `json:"value"`
	// Reps are the repetitions' values, in run order.
	Reps []float64 `json:"reps,omitempty"`
	// NA says why the workload cannot work through this gateway (PORT
	// behind plain MASQUERADE); no value then.
	NA string `json:"na,omitempty"`
	// Err is why the workload failed; no value then.
	Err string `json:"error,omitempty"`
}

func (c *Cell) ok() bool { return c != nil && c.NA == "" && c.Err == "" && len(c.Reps) > 0 }

// Summary condenses latency samples.
type Summary struct {
	Count int     `json:"count"`
	P50   float64 `json:"p50"`
	P99   float64 `json:"p99"`
	Max   float64 `json:"max"`
}

func summarize(samples []float64) Summary {
	if len(samples) == 0 {
		return Summary{}
	}
	return Summary{Count: len(samples), P50: percentile(samples, 50), P99: percentile(samples, 99), Max: percentile(samples, 100)}
}

// MemoryResult is what the memory workload found.
type MemoryResult struct {
	Conns       int     `json:"conns"`
	BaseRSS     int64   `json:"base_rss"`
	LoadedRSS   int64   `json:"loaded_rss"`
	BaseAnon    int64   `json:"base_anon"`
	LoadedAnon  int64   `json:"loaded_anon"`
	PerConn     float64 `json:"per_conn_bytes"` // (LoadedRSS-BaseRSS)/Conns
	PerConnAnon float64 `json:"per_conn_anon_bytes"`
	OpenSeconds float64 `json:"open_seconds"`
	QueueStats  string  `json:"queue_stats,omitempty"` // the router's /proc/net/netfilter/nfnetlink_queue afterwards
	// How the connections were spread (see planIdle): the idle servers'
	// endpoints, the client processes, each idle server's open files once
	// loaded (how evenly SO_REUSEPORT hashed the connections) and the
	// open file limit of each helper process.
	ServerAddrs []string `json:"server_addrs,omitempty"`
	ClientProcs int      `json:"client_procs,omitempty"`
	ServerFiles []int    `json:"server_files,omitempty"`
	FileLimit   int      `json:"file_limit,omitempty"`
}

// Verdict is one target judged for one ftpalg gateway.
type Verdict struct {
	Gateway string  `json:"gateway"`
	Row     string  `json:"row"`
	Target  string  `json:"target"`
	Value   float64 `json:"value"` // the ratio, or the absolute value for absolute targets
	Met     bool    `json:"met"`
	Missing string  `json:"missing,omitempty"` // why it could not be judged
}

// target is a goal from the performance plan: the ftpalg value of row,
// divided by the against gateway's (or by ftpalg's own value of againstRow,
// or taken as is when both are ""), compared with limit.
type target struct {
	row        string
	against    string
	againstRow string
	atLeast    bool // value must be >= limit (else <=)
	limit      float64
	text       string
}

// targets are the goals of the performance issue (#15). The long-session
// goal is a time, the session goals rates.
func targets() []target {
	t := []target{
		// The median, not the best: the best of N is an extreme value,
		// and on a shared VM it moved 0.88-1.17 between identical runs
		// of 21 repetitions while the median moved 1.02-1.05.
		{row: "bulk-median", against: gwPlain, atLeast: true, limit: 0.97, text: "bulk (median) ≥ 0.97× plain NAT"},
		{row: "noop-p50", against: gwKernel, limit: 1.25, text: "NOOP p50 ≤ 1.25× kernel helper"},
		{row: "noop-p99", against: gwKernel, limit: 1.5, text: "NOOP p99 ≤ 1.5× kernel helper"},
	}
	for _, m := range []string{"pasv", "port"} {
		M := strings.ToUpper(m)
		t = append(t,
			target{row: "sessions-" + m, against: gwKernel, atLeast: true, limit: 0.95, text: M + " sessions/s ≥ 0.95× kernel helper"},
			target{row: "parallel-" + m, against: gwKernel, atLeast: true, limit: 0.95, text: M + " sessions/s, parallel clients, ≥ 0.95× kernel helper"},
			target{row: "long-" + m, against: gwKernel, limit: 1.05, text: "long " + M + " session time ≤ 1.05× kernel helper"},
			target{row: "crossings-sessions-" + m, againstRow: "segments-sessions-" + m, limit: 1,
				text: M + " queue crossings per session ≤ its control segments with payload"},
		)
	}
	return append(t,
		target{row: "pinhole-p99", limit: 100, text: "pinhole open p99 ≤ 100 µs"},
		target{row: "memory", limit: 1024, text: "memory ≤ 1 KB per idle tracked connection"},
	)
}

// row returns the row with id, or nil.
func (r *Report) row(id string) *Row {
	for _, row := range r.Rows {
		if row.ID == id {
			return row
		}
	}
	return nil
}

// ftpalgs returns the ftpalg gateway names in column order.
func (r *Report) ftpalgs() []string {
	var out []string
	for _, g := range r.Gateways {
		if strings.HasPrefix(g, gwFtpalg) {
			out = append(out, g)
		}
	}
	return out
}

// ratio returns row's ftpalg value over the other gateway's, if both
// were measured.
func ratio(row *Row, alg, other string) (float64, bool) {
	if row == nil {
		return 0, false
	}
	a, o := row.Cells[alg], row.Cells[other]
	if !a.ok() || !o.ok() || o.Value == 0 {
		return 0, false
	}
	return a.Value / o.Value, true
}

// judge fills in r.Targets from the rows.
func (r *Report) judge() {
	r.Targets = nil
	for _, alg := range r.ftpalgs() {
		for _, t := range targets() {
			v := Verdict{Gateway: alg, Row: t.row, Target: t.text}
			row := r.row(t.row)
			switch {
			case row == nil:
				v.Missing = "workload not run"
			case t.againstRow != "":
				other := r.row(t.againstRow)
				a, o := row.Cells[alg], (*Cell)(nil)
				if other != nil {
					o = other.Cells[alg]
				}
				switch {
				case !a.ok():
					v.Missing = cellProblem(a)
				case !o.ok() || o.Value == 0:
					v.Missing = t.againstRow + ": " + cellProblem(o)
				default:
					v.Value = a.Value / o.Value
				}
			case t.against == "":
				if c := row.Cells[alg]; c.ok() {
					v.Value = c.Value
				} else {
					v.Missing = cellProblem(c)
				}
			default:
				x, ok := ratio(row, alg, t.against)
				if ok {
					v.Value = x
				} else if c := row.Cells[alg]; !c.ok() {
					v.Missing = cellProblem(c)
				} else {
					v.Missing = t.against + ": " + cellProblem(row.Cells[t.against])
				}
			}
			if v.Missing == "" {
				v.Met = v.Value <= t.limit
				if t.atLeast {
					v.Met = v.Value >= t.limit
				}
			}
			r.Targets = append(r.Targets, v)
		}
	}
}

func cellProblem(c *Cell) string {
	switch {
	case c == nil || len(c.Reps) == 0 && c.NA == "" && c.Err == "":
		return "not measured"
	case c.NA != "":
		return "n/a"
	default:
		return "failed: " + c.Err
	}
}

// num formats a value with about four significant digits.
func num(v float64) string {
	a := math.Abs(v)
	switch {
	case a >= 1000:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case a >= 100:
		return strconv.FormatFloat(v, 'f', 1, 64)
	case a >= 10:
		return strconv.FormatFloat(v, 'f', 2, 64)
	default:
		return strconv.FormatFloat(v, 'f', 3, 64)
	}
}

// cellText renders a cell: the median and, with repetitions, their spread
// ((max-min)/median) in brackets.
func cellText(c *Cell) string {
	switch {
	case c == nil:
		return "-"
	case c.NA != "":
		return "N/A"
	case c.Err != "":
		return "FAIL"
	case len(c.Reps) > 1:
		return fmt.Sprintf("%s [%.0f%%]", num(c.Value), 100*spread(c.Reps))
	case len(c.Reps) == 1:
		return num(c.Value)
	}
	return "-"
}

// WriteText renders the report as the table the README explains.
func (r *Report) WriteText(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "ftpalg rig benchmark %s on %s (%s, %d CPUs), %s, %s\n",
		r.Started.Format(time.RFC3339), r.Host, r.Kernel, r.CPUs, r.GoVersion, r.Ftpalg)
	p := r.Params
	fmt.Fprintf(&b, "ClientNAT topology; cells are the median of %d repetitions (bulk: %d) run interleaved across gateways, [spread] = (max-min)/median;\n",
		p.Reps, p.BulkReps)
	fmt.Fprintf(&b, "bulk %d MB, %d NOOPs, %d sessions, %d sessions over %d clients, %d files, %d idle connections; took %.0fs\n",
		p.BulkBytes/1e6, p.NOOPs, p.Sessions, p.ParallelSessions, p.Clients, p.Files, p.IdleConns, r.Seconds)
	switch p.Placement {
	case placeShared:
		b.WriteString("placement: FTP client and server share CPU 0; ftpalg and the routers' kernel work free\n")
	default:
		b.WriteString("placement: free (no pinning)\n")
	}
	fmt.Fprintf(&b, "ftpalg at nice %d", p.FtpalgNice)
	if len(p.FtpalgArgs) > 0 {
		fmt.Fprintf(&b, ", run with %s", strings.Join(p.FtpalgArgs, " "))
	}
	b.WriteString("\n")
	b.WriteString("\n")

	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	head := append([]string{"workload", "unit", "better"}, r.Gateways...)
	for _, alg := range r.ftpalgs() {
		head = append(head, alg+"/kernel", alg+"/plain")
	}
	fmt.Fprintln(tw, strings.Join(head, "\t"))
	for _, row := range r.Rows {
		better := "lower"
		if row.Higher {
			better = "higher"
		}
		cols := []string{row.Name, row.Unit, better}
		for _, g := range r.Gateways {
			cols = append(cols, cellText(row.Cells[g]))
		}
		for _, alg := range r.ftpalgs() {
			for _, other := range []string{gwKernel, gwPlain} {
				if x, ok := ratio(row, alg, other); ok {
					cols = append(cols, strconv.FormatFloat(x, 'f', 2, 64))
				} else {
					cols = append(cols, "-")
				}
			}
		}
		fmt.Fprintln(tw, strings.Join(cols, "\t"))
	}
	if err := tw.Flush(); err != nil {
		return err
	}

	b.WriteString("\ntargets (ratios of this run)\n")
	tw = tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	for _, v := range r.Targets {
		verdict, val := "MISSED", num(v.Value)
		switch {
		case v.Missing != "":
			verdict, val = "not judged: "+v.Missing, "-"
		case v.Met:
			verdict = "met"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", v.Gateway, v.Target, val, verdict)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, g := range r.ftpalgs() {
		if len(r.Pinholes[g]) == 0 && len(r.Queued[g]) == 0 {
			continue
		}
		fmt.Fprintf(&b, "\n%s by workload, all repetitions: packets queued to it; its CPU time; pinhole open latency (µs, from its log)\n", g)
		tw = tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "workload\tqueued packets\tCPU ms\tCPU µs/packet\tpinholes\tp50\tp99\tmax")
		ids := slices.Sorted(maps.Keys(r.Queued[g]))
		for id := range r.Pinholes[g] {
			if !slices.Contains(ids, id) {
				ids = append(ids, id)
			}
		}
		for _, id := range ids {
			s := r.Pinholes[g][id]
			lat := "-\t-\t-"
			if s.Count > 0 {
				lat = num(s.P50) + "\t" + num(s.P99) + "\t" + num(s.Max)
			}
			cpu, perPacket := "-", "-"
			if ms, ok := r.CPU[g][id]; ok {
				cpu = num(ms)
				if n := r.Queued[g][id]; n > 0 {
					perPacket = num(ms * 1000 / float64(n))
				}
			}
			fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%d\t%s\n", id, r.Queued[g][id], cpu, perPacket, s.Count, lat)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	failures := false
	for _, row := range r.Rows {
		for _, g := range r.Gateways {
			c := row.Cells[g]
			if c == nil || (c.NA == "" && c.Err == "") {
				continue
			}
			if !failures {
				b.WriteString("\nN/A and FAIL cells\n")
				failures = true
			}
			why := c.NA
			if c.Err != "" {
				why = "FAIL: " + c.Err
			}
			fmt.Fprintf(&b, "  %s / %s: %s\n", row.Name, g, why)
		}
	}
	if len(r.Notes) > 0 {
		b.WriteString("\nnotes\n")
		for _, n := range r.Notes {
			fmt.Fprintf(&b, "  %s\n", n)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// Save writes bench-<timestamp>.txt and .json into dir and returns their
// paths.
func (r *Report) Save(dir string) (txt, js string, err error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", "", fmt.Errorf("creating output directory %s: %w", dir, err)
	}
	base := filepath.Join(dir, "bench-"+r.Started.Format("20060102-150405"))
	var tb strings.Builder
	if err := r.WriteText(&tb); err != nil {
		return "", "", err
	}
	if err := os.WriteFile(base+".txt", []byte(tb.String()), 0o644); err != nil {
		return "", "", fmt.Errorf("writing report %s.txt: %w", base, err)
	}
	jb, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return "", "", fmt.Errorf("encoding report: %w", err)
	}
	if err := os.WriteFile(base+".json", append(jb, '\n'), 0o644); err != nil {
		return "", "", fmt.Errorf("writing report %s.json: %w", base, err)
	}
	return base + ".txt", base + ".json", nil
}
