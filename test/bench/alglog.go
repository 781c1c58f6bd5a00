package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// logTail bounds the ftpalg output the sink keeps for error messages.
const logTail = 64 << 10

// algLog is the writer ftpalg's stdout and stderr go to. It reads the JSON
// log as it arrives, so a long run's thousands of "pinhole opened" lines
// are counted without being kept (the rig's own capture keeps only a
// tail), and it keeps the last logTail bytes for diagnostics.
type algLog struct {
	mu      sync.Mutex
	partial []byte
	tail    []byte
	running bool
	stopped map[string]any // the "ftpalg stopping" record
	took    []time.Duration
	errors  int // records at level ERROR
	lastErr string
	// warns counts WARN records by message and reason ("refused: ..."),
	// each with its first record as an example.
	warns map[string]*warnCount
}

// warnCount is one kind of warning ftpalg logged.
type warnCount struct {
	Count   int    `json:"count"`
	Example string `json:"example"`
}

// Write consumes ftpalg output; it never fails.
func (l *algLog) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.tail = append(l.tail, b...)
	if over := len(l.tail) - logTail; over > 0 {
		l.tail = append(l.tail[:0], l.tail[over:]...)
	}
	l.partial = append(l.partial, b...)
	for {
		i := bytes.IndexByte(l.partial, '\n')
		if i < 0 {
			break
		}
		l.line(l.partial[:i])
		l.partial = l.partial[i+1:]
	}
	if len(l.partial) > logTail { // a runaway line without newline
		l.partial = l.partial[:0]
	}
	return len(b), nil
}

// line handles one log record; anything that is not JSON is ignored (it
// stays in the tail).
func (l *algLog) line(b []byte) {
	var rec struct {
		Msg   string `json:"msg"`
		Level string `json:"level"`
		Took  *int64 `json:"took"` // slog's JSON handler writes durations as nanoseconds
		Why   string `json:"reason"`
		Cmd   string `json:"cmd"`
	}
	if json.Unmarshal(b, &rec) != nil {
		return
	}
	switch rec.Msg {
	case "ftpalg running":
		l.running = true
	case "pinhole opened":
		if rec.Took != nil {
			l.took = append(l.took, time.Duration(*rec.Took))
		}
	case "ftpalg stopping":
		l.stopped = map[string]any{}
		_ = json.Unmarshal(b, &l.stopped)
	}
	switch strings.ToUpper(rec.Level) {
	case "ERROR":
		l.errors++
		l.lastErr = string(b)
	case "WARN":
		// Numbers (sequence numbers, ports) differ per record; the
		// kind of warning does not.
		key := digits.ReplaceAllString(strings.TrimSpace(rec.Msg+" "+rec.Cmd+": "+rec.Why), "N")
		if l.warns == nil {
			l.warns = map[string]*warnCount{}
		}
		w := l.warns[key]
		if w == nil {
			w = &warnCount{Example: string(b)}
			l.warns[key] = w
		}
		w.Count++
	}
}

// Running reports whether ftpalg has logged that it serves.
func (l *algLog) Running() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.running
}

// Pinholes returns the number of pinhole open latencies seen so far; pass
// it to Since to get the ones of a later interval.
func (l *algLog) Pinholes() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.took)
}

// Since returns the pinhole open latencies logged after the first n.
func (l *algLog) Since(n int) []time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	if n > len(l.took) {
		return nil
	}
	return append([]time.Duration(nil), l.took[n:]...)
}

// Errors returns how many ERROR records ftpalg logged and the last one.
func (l *algLog) Errors() (int, string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.errors, l.lastErr
}

// Warnings returns the WARN records counted by kind.
func (l *algLog) Warnings() map[string]warnCount {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make(map[string]warnCount, len(l.warns))
	for k, w := range l.warns {
		out[k] = *w
	}
	return out
}

// Stopped returns ftpalg's final statistics record, nil before it exits.
func (l *algLog) Stopped() map[string]any {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.stopped
}

// Tail returns the last output.
func (l *algLog) Tail() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return string(l.tail)
}

var digits = regexp.MustCompile(`[0-9]+`)

var backendWord = regexp.MustCompile(`\b(iptables|netlink|nftables|nft)\b`)

// parseBackends finds the --pinholes flag in flag-package help
// output and collects the backend names its description mentions.
func parseBackends(help string) []string {
	lines := strings.Split(help, "\n")
	for i, l := range lines {
		t := strings.TrimSpace(l)
		name, desc, _ := strings.Cut(t, " ")
		if name != "-pinholes" {
			continue
		}
		for _, d := range lines[i+1:] {
			if !strings.HasPrefix(d, "    ") { // the next flag starts at two spaces
				break
			}
			desc += " " + d
		}
		var names []string
		for _, m := range backendWord.FindAllString(desc, -1) {
			if !slices.Contains(names, m) {
				names = append(names, m)
			}
		}
		if len(names) == 0 {
			return []string{""} // the flag exists; run its default only
		}
		return names
	}
	return nil
}

// parseQueued sums the id_sequence (packets ever queued) of the queues in
// /proc/net/netfilter/nfnetlink_queue, one line per bound queue: queue
// number, peer port id, queue total, copy mode, copy range, queue dropped,
// user dropped, id_sequence, 1. ftpalg --queues N binds N queues, and the
// rig's router has no others; a packet enters exactly one of them.
func parseQueued(s string) (uint64, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, errors.New("nfnetlink_queue lists no queue")
	}
	var sum uint64
	for _, l := range strings.Split(s, "\n") {
		f := strings.Fields(l)
		if len(f) < 8 {
			return 0, fmt.Errorf("nfnetlink_queue line %q: too few fields", l)
		}
		n, err := strconv.ParseUint(f[7], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("nfnetlink_queue id_sequence %q: %w", f[7], err)
		}
		sum += n
	}
	return sum, nil
}
