package main

import (
	"math"
	"slices"
	"time"
)

// percentile returns the p-th percentile (0 < p ≤ 100) of samples by the
// nearest-rank method: the smallest sample with at least p% of the samples
// at or below it. Nearest rank never invents a value between two samples,
// so a p99 of 2000 NOOPs is the 1980th smallest round trip. It returns 0
// for no samples. samples is not modified.
func percentile(samples []float64, p float64) float64 {
	if len(samples) == 0 || p <= 0 || math.IsNaN(p) {
		return 0
	}
	s := slices.Clone(samples)
	slices.Sort(s)
	rank := int(math.Ceil(p / 100 * float64(len(s))))
	return s[min(max(rank, 1), len(s))-1]
}

// median is the 50th percentile. With an even count it is the lower of the
// two middle values (nearest rank), which keeps it one of the repetitions
// actually measured.
func median(samples []float64) float64 { return percentile(samples, 50) }

// micros converts durations to float microseconds, the unit of the
// latency rows.
func micros(ds []time.Duration) []float64 {
	out := make([]float64, len(ds))
	for i, d := range ds {
		out[i] = float64(d) / float64(time.Microsecond)
	}
	return out
}

// spread returns (max-min)/median of repetitions, the run-to-run
// variation shown next to each value; 0 with fewer than two.
func spread(reps []float64) float64 {
	if len(reps) < 2 {
		return 0
	}
	m := median(reps)
	if m == 0 {
		return 0
	}
	return (slices.Max(reps) - slices.Min(reps)) / m
}
