package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// bench runs the workloads over the gateways and fills in the report.
type bench struct {
	cfg      *config
	rep      *Report
	gws      []*gateway
	progress func(format string, a ...any)

	// pinholes collects ftpalg's open latencies (µs) by gateway and
	// workload.
	pinholes map[string]map[string][]float64
}

// addRow appends a row with an empty cell per gateway.
func (b *bench) addRow(id, name, unit string, higher bool) *Row {
	row := &Row{ID: id, Name: name, Unit: unit, Higher: higher, Cells: map[string]*Cell{}}
	b.rep.Rows = append(b.rep.Rows, row)
	return row
}

func (b *bench) run(ctx context.Context) error {
	b.pinholes = map[string]map[string][]float64{}
	var errs []error
	if b.cfg.runs("bulk") || b.cfg.runs("noop") || b.cfg.runs("sessions") || b.cfg.runs("parallel") || b.cfg.runs("long") {
		errs = append(errs, b.runRigs(ctx))
	}
	if b.cfg.runs("memory") {
		b.runMemory(ctx)
	}
	for g, byWorkload := range b.pinholes {
		b.rep.Pinholes[g] = map[string]Summary{}
		for w, s := range byWorkload {
			b.rep.Pinholes[g][w] = summarize(s)
		}
	}
	return errors.Join(errs...)
}

// runRigs builds one rig per gateway, all present for the whole run, and
// runs every workload repetition on each gateway in turn (plain, kernel,
// ftpalg, plain, ...), so that load from other users of the machine hits
// all columns alike instead of whichever ran during a busy minute.
func (b *bench) runRigs(ctx context.Context) error {
	cfg := b.cfg
	b.progress("writing data set (%d MB bulk file, %d small files)", cfg.bulkMB, cfg.files)
	data, err := newDataSet(int64(cfg.bulkMB)*1e6, cfg.files)
	if err != nil {
		return err
	}
	defer data.remove()

	setupErr := map[string]error{}
	for _, g := range b.gws {
		b.progress("building rig for %s", g.name)
		if err := g.setup(ctx, cfg, data); err != nil {
			setupErr[g.name] = err
			b.rep.Notes = append(b.rep.Notes, fmt.Sprintf("%s: setup failed: %v", g.name, err))
		}
	}
	defer func() {
		for _, g := range b.gws {
			if err := g.close(); err != nil {
				b.rep.Notes = append(b.rep.Notes, fmt.Sprintf("%s: teardown: %v", g.name, err))
			}
			if g.proc != nil {
				if st := g.proc.log.Stopped(); st != nil {
					b.rep.FtpalgStats[g.name] = st
				}
				for k, w := range g.proc.log.Warnings() {
					b.rep.Notes = append(b.rep.Notes, fmt.Sprintf("%s warned %d× %q, e.g. %s", g.name, w.Count, k, w.Example))
				}
				if n, last := g.proc.log.Errors(); n > 0 {
					b.rep.Notes = append(b.rep.Notes, fmt.Sprintf("%s logged %d errors, the last: %s", g.name, n, last))
				}
			}
		}
	}()

	// eachN runs fn reps times for every gateway, interleaved, and
	// records what it returns into row.
	eachN := func(row *Row, what string, reps int, fn func(g *gateway) (float64, error)) {
		for _, g := range b.gws {
			row.Cells[g.name] = &Cell{}
			if err := setupErr[g.name]; err != nil {
				row.Cells[g.name].Err = "setup: " + err.Error()
			}
		}
		for rep := range reps {
			for _, g := range b.gws {
				c := row.Cells[g.name]
				if c.Err != "" || c.NA != "" {
					continue
				}
				if err := ctx.Err(); err != nil {
					c.Err = err.Error()
					continue
				}
				mark := 0
				var q0 uint64
				var q0err, cpu0err error
				var cpu0 time.Duration
				if g.proc != nil {
					mark = g.proc.log.Pinholes()
					q0, q0err = g.queued(ctx)
					cpu0, cpu0err = g.proc.cpu()
				}
				v, err := fn(g)
				if err == nil && g.proc != nil {
					err = g.proc.alive()
				}
				if g.proc != nil {
					b.notePinholes(g, row.ID, mark)
					if q1, qerr := g.queued(ctx); qerr == nil && q0err == nil {
						b.noteQueued(g.name, row.ID, q1-q0)
					}
					if cpu1, cerr := g.proc.cpu(); cerr == nil && cpu0err == nil {
						b.noteCPU(g.name, row.ID, cpu1-cpu0)
					}
				}
				switch {
				case err != nil && slices.Contains([]string{"sessions-port", "parallel-port", "long-port"}, row.ID) && !g.kernel && !g.runAlg:
					c.NA = "PORT from behind MASQUERADE needs an ALG (expected): " + err.Error()
					b.progress("%s %s: N/A (%v)", what, g.name, err)
				case err != nil:
					c.Err = err.Error()
					b.progress("%s %s rep %d: FAILED: %v", what, g.name, rep+1, err)
				default:
					c.Reps = append(c.Reps, v)
					b.progress("%s %s rep %d: %s %s", what, g.name, rep+1, num(v), row.Unit)
				}
			}
		}
		for _, c := range row.Cells {
			if c.Err == "" && c.NA == "" && len(c.Reps) > 0 {
				c.Value = median(c.Reps)
			}
		}
	}

	each := func(row *Row, what string, fn func(g *gateway) (float64, error)) {
		eachN(row, what, cfg.reps, fn)
	}
	if cfg.runs("bulk") {
		// On a shared machine one busy moment cuts a transfer's rate
		// several times over, so the bulk rows get more repetitions and
		// the target is judged on the best: the path's capacity, which
		// is what "data never enters userspace" is about.
		best := b.addRow("bulk", fmt.Sprintf("bulk PASV %d MB, best of %d", cfg.bulkMB, cfg.bulkReps), "MB/s", true)
		med := b.addRow("bulk-median", fmt.Sprintf("bulk PASV %d MB, median", cfg.bulkMB), "MB/s", true)
		eachN(med, "bulk", cfg.bulkReps, func(g *gateway) (float64, error) { return bulk(ctx, g, data.bulk) })
		for g, c := range med.Cells {
			bc := *c
			if bc.ok() {
				bc.Value = slices.Max(bc.Reps)
			}
			best.Cells[g] = &bc
		}
	}
	if cfg.runs("noop") {
		p50 := b.addRow("noop-p50", "NOOP round trip p50", "µs", false)
		p99 := b.addRow("noop-p99", "NOOP round trip p99", "µs", false)
		// One connection gives both percentiles; p99 picks up the
		// result the p50 pass stored.
		each(p50, "NOOP p50", func(g *gateway) (float64, error) {
			rtts, err := noops(ctx, g, cfg.noops)
			if err != nil {
				return 0, err
			}
			us := micros(rtts)
			p99.Cells[g.name] = appendRep(p99.Cells[g.name], percentile(us, 99))
			return percentile(us, 50), nil
		})
		finishFrom(p50, p99)
	}
	if cfg.runs("sessions") {
		for _, m := range []mode{pasv, port} {
			id := "sessions-" + strings.ToLower(string(m))
			row := b.addRow(id, fmt.Sprintf("session rate %s (%d × login+%s+RETR 1 KB+QUIT)", m, cfg.sessions, m), "sessions/s", true)
			cr := b.costRows(id, fmt.Sprintf("%s session", m))
			each(row, id, func(g *gateway) (v float64, err error) {
				err = cr.measure(ctx, g, cfg.sessions, func() (err error) {
					v, err = sessions(ctx, g, m, cfg.sessions)
					return err
				})
				return v, err
			})
			cr.finish()
		}
	}
	if cfg.runs("parallel") {
		for _, m := range []mode{pasv, port} {
			id := "parallel-" + strings.ToLower(string(m))
			row := b.addRow(id, fmt.Sprintf("session rate %s, %d clients at once (%d sessions)", m, cfg.clients, cfg.parallelSessions), "sessions/s", true)
			p99 := b.addRow(id+"-p99", fmt.Sprintf("  session time p99, %d clients", cfg.clients), "ms", false)
			cr := b.costRows(id, fmt.Sprintf("%s session, %d clients", m, cfg.clients))
			each(row, id, func(g *gateway) (v float64, err error) {
				var took []time.Duration
				err = cr.measure(ctx, g, cfg.parallelSessions, func() (err error) {
					v, took, err = parallelSessions(ctx, g, m, cfg.clients, cfg.parallelSessions)
					return err
				})
				if err == nil {
					p99.Cells[g.name] = appendRep(p99.Cells[g.name], percentile(micros(took), 99)/1000)
				}
				return v, err
			})
			finishFrom(row, p99)
			cr.finish()
		}
	}
	if cfg.runs("long") {
		for _, m := range []mode{pasv, port} {
			id := "long-" + strings.ToLower(string(m))
			row := b.addRow(id, fmt.Sprintf("long session %s (%d × 1 KB on one connection)", m, cfg.files), "s", false)
			each(row, id, func(g *gateway) (float64, error) { return long(ctx, g, m, cfg.files) })
		}
	}
	b.pinholeRows()
	return nil
}

// finishFrom completes a row filled with appendRep alongside main: the
// median of its repetitions, or main's error where main has no value.
func finishFrom(main *Row, rows ...*Row) {
	for _, r := range rows {
		for g, c := range main.Cells {
			if !c.ok() {
				r.Cells[g] = &Cell{Err: c.Err, NA: c.NA}
			} else if rc := r.Cells[g]; rc != nil {
				rc.Value = median(rc.Reps)
			}
		}
	}
}

// costRows are the rows of what a session workload's sessions cost.
type costRows struct {
	main                         string // the workload's row ID
	cpu, softirq, segs, crossing *Row
}

// costRows adds the cost rows of workload id, described by what.
func (b *bench) costRows(id, what string) *costRows {
	return &costRows{
		main:     id,
		cpu:      b.addRow("cpu-"+id, "  machine CPU per "+what, "µs", false),
		softirq:  b.addRow("softirq-"+id, "    of it softirq", "µs", false),
		segs:     b.addRow("segments-"+id, "  control segments with payload per "+what, "", false),
		crossing: b.addRow("crossings-"+id, "  queue crossings per "+what, "", false),
	}
}

// measure runs fn, n sessions on g, and files its cost per session.
func (cr *costRows) measure(ctx context.Context, g *gateway, n int, fn func() error) error {
	var q0, q1 uint64
	var qerr error
	c, err := measureCost(ctx, g, func() error {
		if g.proc != nil {
			q0, qerr = g.queued(ctx)
		}
		err := fn()
		if g.proc != nil && qerr == nil {
			q1, qerr = g.queued(ctx)
		}
		return err
	})
	if err != nil {
		return err
	}
	per := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 / float64(n) }
	cr.cpu.Cells[g.name] = appendRep(cr.cpu.Cells[g.name], per(c.cpu))
	cr.softirq.Cells[g.name] = appendRep(cr.softirq.Cells[g.name], per(c.softirq))
	cr.segs.Cells[g.name] = appendRep(cr.segs.Cells[g.name], float64(c.payloadSeg)/float64(n))
	switch {
	case g.proc == nil:
		cr.crossing.Cells[g.name] = &Cell{NA: "no queue"}
	case qerr != nil:
		cr.crossing.Cells[g.name] = &Cell{Err: qerr.Error()}
	default:
		cr.crossing.Cells[g.name] = appendRep(cr.crossing.Cells[g.name], float64(q1-q0)/float64(n))
	}
	return nil
}

// finish completes the rows once every repetition ran.
func (cr *costRows) finish() {
	for _, r := range []*Row{cr.cpu, cr.softirq, cr.segs, cr.crossing} {
		for _, c := range r.Cells {
			if c.NA == "" && c.Err == "" && len(c.Reps) > 0 {
				c.Value = median(c.Reps)
			}
		}
	}
}

func appendRep(c *Cell, v float64) *Cell {
	if c == nil {
		c = &Cell{}
	}
	c.Reps = append(c.Reps, v)
	return c
}

// noteCPU adds the CPU time ftpalg used during a workload.
func (b *bench) noteCPU(gw, workload string, d time.Duration) {
	if b.rep.CPU == nil {
		b.rep.CPU = map[string]map[string]float64{}
	}
	if b.rep.CPU[gw] == nil {
		b.rep.CPU[gw] = map[string]float64{}
	}
	b.rep.CPU[gw][workload] += float64(d.Microseconds()) / 1000
}

// noteQueued adds packets ftpalg was given during a workload.
func (b *bench) noteQueued(gw, workload string, n uint64) {
	if b.rep.Queued == nil {
		b.rep.Queued = map[string]map[string]uint64{}
	}
	if b.rep.Queued[gw] == nil {
		b.rep.Queued[gw] = map[string]uint64{}
	}
	b.rep.Queued[gw][workload] += n
}

// notePinholes files the pinhole latencies ftpalg logged since mark under
// the workload.
func (b *bench) notePinholes(g *gateway, workload string, mark int) {
	took := g.proc.log.Since(mark)
	if len(took) == 0 {
		return
	}
	if b.pinholes[g.name] == nil {
		b.pinholes[g.name] = map[string][]float64{}
	}
	b.pinholes[g.name][workload] = append(b.pinholes[g.name][workload], micros(took)...)
}

// pinholeRows adds ftpalg's pinhole latency over every workload of the
// run as two rows (ftpalg columns only: the kernel helper's expectations
// have no such step).
func (b *bench) pinholeRows() {
	p50 := b.addRow("pinhole-p50", "pinhole open p50 (ftpalg's log)", "µs", false)
	p99 := b.addRow("pinhole-p99", "pinhole open p99 (ftpalg's log)", "µs", false)
	for _, g := range b.gws {
		if !g.runAlg {
			continue
		}
		var all []float64
		for _, s := range b.pinholes[g.name] {
			all = append(all, s...)
		}
		if len(all) == 0 {
			p50.Cells[g.name] = &Cell{Err: "no pinhole opened"}
			p99.Cells[g.name] = &Cell{Err: "no pinhole opened"}
			continue
		}
		p50.Cells[g.name] = &Cell{Value: percentile(all, 50), Reps: []float64{percentile(all, 50)}}
		p99.Cells[g.name] = &Cell{Value: percentile(all, 99), Reps: []float64{percentile(all, 99)}}
	}
}

// runMemory measures each ftpalg variant's memory per idle connection in
// a fresh rig and ftpalg, so nothing earlier workloads allocated is in the
// baseline.
func (b *bench) runMemory(ctx context.Context) {
	row := b.addRow("memory", fmt.Sprintf("ftpalg memory per idle connection (%d conns, VmRSS)", b.cfg.idle), "B", false)
	anon := b.addRow("memory-anon", "  the same from RssAnon", "B", false)
	if b.rep.Memory == nil {
		b.rep.Memory = map[string]MemoryResult{}
	}
	for _, g := range b.gws {
		if !g.runAlg {
			continue
		}
		b.progress("memory %s: opening %d idle connections", g.name, b.cfg.idle)
		start := time.Now()
		res, err := memory(ctx, b.cfg, g.backend, b.cfg.idle, b.cfg.parallel)
		if err != nil {
			row.Cells[g.name] = &Cell{Err: err.Error()}
			anon.Cells[g.name] = &Cell{Err: err.Error()}
			b.progress("memory %s: FAILED after %v: %v", g.name, time.Since(start).Round(time.Millisecond), err)
			continue
		}
		b.rep.Memory[g.name] = res
		row.Cells[g.name] = &Cell{Value: res.PerConn, Reps: []float64{res.PerConn}}
		anon.Cells[g.name] = &Cell{Value: res.PerConnAnon, Reps: []float64{res.PerConnAnon}}
		b.progress("memory %s: %s B/conn (RSS %d → %d kB, %d conns opened in %.1fs)",
			g.name, num(res.PerConn), res.BaseRSS>>10, res.LoadedRSS>>10, res.Conns, res.OpenSeconds)
		b.progress("memory %s: %d client processes, %d idle servers on %s, %d-%d open files each (limit %d), %s B/conn RssAnon, took %v",
			g.name, res.ClientProcs, len(res.ServerFiles), strings.Join(res.ServerAddrs, " "),
			slices.Min(res.ServerFiles), slices.Max(res.ServerFiles), res.FileLimit, num(res.PerConnAnon),
			time.Since(start).Round(100*time.Millisecond))
	}
}
