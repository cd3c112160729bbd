package main

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/tai-state/tai-state/sockapi/wire"
)

// Report is a run's result; -json prints it as is.
type Report struct {
	Mode        string            `json:"mode"` // "load" or "fsync"
	Socket      string            `json:"socket,omitempty"`
	File        string            `json:"file,omitempty"`
	Ops         string            `json:"ops,omitempty"`
	Conns       int               `json:"conns"`
	Pipeline    int               `json:"pipeline"`
	ValueSize   int               `json:"value_size"`
	Keys        uint64            `json:"keys,omitempty"`
	Governor    string            `json:"governor,omitempty"`
	Hot         int               `json:"hot,omitempty"`
	Seq         bool              `json:"seq,omitempty"`
	Requests    uint64            `json:"requests"`
	Seconds     float64           `json:"seconds"`
	OpsPerSec   float64           `json:"ops_per_sec"`
	PerOp       map[string]OpStat `json:"per_op"`
	Errors      map[string]uint64 `json:"errors"`
	ConnErrors  []string          `json:"conn_errors,omitempty"`
	Interrupted bool              `json:"interrupted,omitempty"`
	Setup       []SetupStat       `json:"setup,omitempty"`
}

// OpStat is one op's throughput and latency, in microseconds.
type OpStat struct {
	Count     uint64  `json:"count"`
	OpsPerSec float64 `json:"ops_per_sec"`
	MeanUs    float64 `json:"mean_us"`
	P50Us     float64 `json:"p50_us"`
	P99Us     float64 `json:"p99_us"`
	P999Us    float64 `json:"p999_us"`
	MaxUs     float64 `json:"max_us"`
}

// SetupStat summarises an unmeasured phase (warmup, hot).
type SetupStat struct {
	Name      string            `json:"name"`
	Requests  uint64            `json:"requests"`
	Seconds   float64           `json:"seconds"`
	OpsPerSec float64           `json:"ops_per_sec"`
	Errors    map[string]uint64 `json:"errors"`
}

func newReport(cfg *Config, mode string, res *phaseResult, setup []*phaseResult) *Report {
	r := &Report{
		Mode:        mode,
		Conns:       cfg.Conns,
		Pipeline:    cfg.Pipeline,
		ValueSize:   cfg.ValueSize,
		Requests:    res.requests(),
		Seconds:     res.elapsed.Seconds(),
		OpsPerSec:   rate(res.requests(), res.elapsed),
		PerOp:       make(map[string]OpStat),
		Errors:      codeCounts(res.errs),
		Interrupted: res.interrupted,
	}
	if mode == "fsync" {
		r.File = cfg.FsyncBaseline
		r.Conns, r.Pipeline = 1, 1
	} else {
		r.Socket, r.Ops, r.Keys, r.Governor, r.Hot, r.Seq = cfg.Socket, cfg.Mix.String(), cfg.Keys, cfg.Governor, cfg.Hot, cfg.Seq
	}
	for op, h := range res.hist {
		if h.Count() == 0 {
			continue
		}
		name := opKind(op).String()
		if mode == "fsync" {
			name = "append+fdatasync"
		}
		r.PerOp[name] = OpStat{
			Count:     h.Count(),
			OpsPerSec: rate(h.Count(), res.elapsed),
			MeanUs:    h.Mean() / 1e3,
			P50Us:     us(h.Quantile(0.50)),
			P99Us:     us(h.Quantile(0.99)),
			P999Us:    us(h.Quantile(0.999)),
			MaxUs:     us(h.Max()),
		}
	}
	for _, e := range res.connErrs {
		r.ConnErrors = append(r.ConnErrors, e.Error())
	}
	for _, s := range setup {
		r.Setup = append(r.Setup, SetupStat{
			Name: s.name, Requests: s.requests(), Seconds: s.elapsed.Seconds(),
			OpsPerSec: rate(s.requests(), s.elapsed), Errors: codeCounts(s.errs),
		})
	}
	return r
}

func (r *Report) write(w io.Writer, asJSON bool) error {
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(r)
	}
	if r.Mode == "fsync" {
		fmt.Fprintf(w, "fsync baseline: %s, %d-byte appends, fdatasync after each\n", r.File, r.ValueSize)
	} else {
		fmt.Fprintf(w, "tai-bench: %s  c=%d P=%d d=%d keys=%d ops=%s", r.Socket, r.Conns, r.Pipeline, r.ValueSize, r.Keys, r.Ops)
		if r.Hot > 0 {
			fmt.Fprintf(w, " hot=%d", r.Hot)
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintf(w, "%d requests in %.2fs: %.0f ops/s", r.Requests, r.Seconds, r.OpsPerSec)
	if r.Interrupted {
		fmt.Fprint(w, " (interrupted)")
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "op\tcount\tops/s\tmean µs\tp50 µs\tp99 µs\tp99.9 µs\tmax µs\t")
	for _, name := range slices.Sorted(maps.Keys(r.PerOp)) {
		s := r.PerOp[name]
		fmt.Fprintf(tw, "%s\t%d\t%.0f\t%.1f\t%.1f\t%.1f\t%.1f\t%.1f\t\n",
			name, s.Count, s.OpsPerSec, s.MeanUs, s.P50Us, s.P99Us, s.P999Us, s.MaxUs)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	var b strings.Builder
	for _, code := range slices.Sorted(maps.Keys(r.Errors)) {
		fmt.Fprintf(&b, " %s=%d", code, r.Errors[code])
	}
	if b.Len() == 0 {
		b.WriteString(" none")
	}
	fmt.Fprintf(w, "errors:%s\n", b.String())
	for _, e := range r.ConnErrors {
		fmt.Fprintf(w, "connection error: %s\n", e)
	}
	return nil
}

func codeCounts(m map[wire.Code]uint64) map[string]uint64 {
	out := make(map[string]uint64, len(m))
	for c, n := range m {
		out[string(c)] = n
	}
	return out
}

// formatErrors renders error counts as "errors: A=1 B=2" or "no errors".
func formatErrors(m map[wire.Code]uint64) string {
	if len(m) == 0 {
		return "no errors"
	}
	var b strings.Builder
	b.WriteString("errors:")
	for _, c := range slices.Sorted(maps.Keys(m)) {
		fmt.Fprintf(&b, " %s=%d", c, m[c])
	}
	return b.String()
}

func rate(n uint64, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(n) / d.Seconds()
}

func us(ns uint64) float64 { return float64(ns) / 1e3 }
