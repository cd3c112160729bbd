// Command tai-bench is a load generator for tai-sidecar. It speaks the wire
// protocol directly over the sidecar's Unix socket, from c connections with
// up to P requests in flight on each, and reports throughput, latency
// percentiles per op and errors by code.
//
//	tai-bench -socket /run/tai.sock -c 16 -ops get=9,put=1 -d 256 -duration 10s -warmup
//	tai-bench -socket /run/tai.sock -c 1 -ops get -n 100000 -warmup -hot 20
//	tai-bench -fsync-baseline /var/tmp/f -d 256 -duration 5s
//
// Every run is bounded: by -n requests, by -duration (default 10s; at most
// 10 minutes when only -n is given), and by a deadline on every connection.
// The -fsync-baseline mode measures the disk instead: appends of -d bytes to
// a file, each made durable with fdatasync, on one goroutine.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"
	"time"

	"github.com/tai-state/tai-state/sockapi/wire"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(2)
		}
		fmt.Fprintln(os.Stderr, "tai-bench:", err)
		var ue *usageError
		if errors.As(err, &ue) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

// usageError is a bad flag value (exit status 2).
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

const (
	// maxDuration caps -duration, and is the time limit of a run bounded
	// only by -n, and of each setup phase.
	maxDuration = 10 * time.Minute
	maxConns    = 1024
	// maxPipeline keeps slot numbers within an id's low 16 bits.
	maxPipeline = 1 << 16
	maxHot      = 10_000
	// maxInFlight caps -c times -P.
	maxInFlight = 1 << 16
)

// Config is a run's settings, from flags.
type Config struct {
	Socket    string
	Conns     int
	Pipeline  int
	ValueSize int
	// Requests is the number of measured requests; 0 means until Duration.
	Requests int64
	Duration time.Duration
	Keys     uint64
	Mix      Mix
	Governor string
	// Warmup writes every key once before measuring.
	Warmup bool
	// Hot overwrites every key this many times before measuring.
	Hot int
	// Seq walks the keyspace in order instead of picking keys at random.
	Seq           bool
	JSON          bool
	DialTimeout   time.Duration
	Seed          uint64
	CPUProfile    string
	FsyncBaseline string
}

// Validate checks the settings' ranges.
func (c *Config) Validate() error {
	switch {
	case c.FsyncBaseline == "" && c.Socket == "":
		return &usageError{"-socket is required"}
	case c.Conns < 1 || c.Conns > maxConns:
		return &usageError{fmt.Sprintf("-c %d: want 1 to %d", c.Conns, maxConns)}
	case c.Pipeline < 1 || c.Pipeline > maxPipeline:
		return &usageError{fmt.Sprintf("-P %d: want 1 to %d", c.Pipeline, maxPipeline)}
	case c.Conns*c.Pipeline > maxInFlight:
		return &usageError{fmt.Sprintf("-c %d x -P %d: at most %d requests in flight", c.Conns, c.Pipeline, maxInFlight)}
	case c.ValueSize < 2 || c.ValueSize > wire.MaxValueSize:
		return &usageError{fmt.Sprintf("-d %d: want 2 to %d", c.ValueSize, wire.MaxValueSize)}
	case c.Requests < 0:
		return &usageError{"-n must not be negative"}
	case c.Duration <= 0 || c.Duration > maxDuration:
		return &usageError{fmt.Sprintf("-duration %v: want more than 0 and at most %v", c.Duration, maxDuration)}
	case c.Keys < 1 || c.Keys > maxKeys:
		return &usageError{fmt.Sprintf("-keys %d: want 1 to %d", c.Keys, uint64(maxKeys))}
	case c.Hot < 0 || c.Hot > maxHot:
		return &usageError{fmt.Sprintf("-hot %d: want 0 to %d", c.Hot, maxHot)}
	case c.DialTimeout <= 0:
		return &usageError{"-timeout must be positive"}
	}
	if err := wire.ValidateName("governor", c.Governor); err != nil {
		return &usageError{fmt.Sprintf("-governor: %v", err)}
	}
	return nil
}

func parseFlags(args []string, stderr io.Writer) (*Config, error) {
	fs := flag.NewFlagSet("tai-bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfg := &Config{}
	socket := os.Getenv("TAI_SOCKET")
	if socket == "" {
		socket = "./tai.sock"
	}
	fs.StringVar(&cfg.Socket, "socket", socket, "the sidecar's Unix socket (env TAI_SOCKET)")
	fs.IntVar(&cfg.Conns, "c", 16, "connections")
	fs.IntVar(&cfg.Pipeline, "P", 1, "requests in flight per connection")
	fs.IntVar(&cfg.ValueSize, "d", 256, "value size in bytes (the encoded msgpack document)")
	fs.Int64Var(&cfg.Requests, "n", 0, "measured requests in all (0: run for -duration)")
	fs.DurationVar(&cfg.Duration, "duration", 10*time.Second, "how long to measure (at most 10m)")
	keys := fs.Uint64("keys", 10_000, "keyspace size")
	ops := fs.String("ops", "get=1", `op mix, e.g. "get=9,put=1" (ops: get, put, delete, ping)`)
	fs.StringVar(&cfg.Governor, "governor", "bench", "governor of the benchmark's states")
	fs.BoolVar(&cfg.Warmup, "warmup", false, "write every key once before measuring, so gets hit")
	fs.IntVar(&cfg.Hot, "hot", 0, "overwrite every key this many times before measuring")
	fs.BoolVar(&cfg.Seq, "seq", false, "use keys in order (request n: key n mod -keys) instead of at random")
	fs.BoolVar(&cfg.JSON, "json", false, "print the result as JSON")
	fs.DurationVar(&cfg.DialTimeout, "timeout", 5*time.Second, "dial and hello timeout")
	fs.Uint64Var(&cfg.Seed, "seed", 1, "seed of the key and op choices")
	fs.StringVar(&cfg.CPUProfile, "cpuprofile", "", "write the tool's own CPU profile to this file")
	fs.StringVar(&cfg.FsyncBaseline, "fsync-baseline", "",
		"instead of load, append -d byte records to this file with fdatasync after each, and report their rate")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, &usageError{fmt.Sprintf("unexpected argument %q", fs.Arg(0))}
	}
	cfg.Keys = *keys
	durationSet := false
	fs.Visit(func(f *flag.Flag) { durationSet = durationSet || f.Name == "duration" })
	if cfg.Requests > 0 && !durationSet {
		cfg.Duration = maxDuration
	}
	mix, err := ParseMix(*ops)
	if err != nil {
		return nil, &usageError{fmt.Sprintf("-ops: %v", err)}
	}
	cfg.Mix = mix
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return cfg, nil
}

// run is the whole program.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	if cfg.CPUProfile != "" {
		f, err := os.Create(cfg.CPUProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	if cfg.FsyncBaseline != "" {
		res, err := fsyncBaseline(ctx, cfg.FsyncBaseline, cfg.ValueSize, cfg.Requests, time.Now().Add(cfg.Duration))
		if err != nil {
			return err
		}
		rep := newReport(cfg, "fsync", res, nil)
		return rep.write(stdout, cfg.JSON)
	}
	return runLoad(ctx, cfg, stdout, stderr)
}

// runLoad connects, runs the setup phases, measures, and reports.
func runLoad(ctx context.Context, cfg *Config, stdout, stderr io.Writer) error {
	conns := make([]*benchConn, 0, cfg.Conns)
	defer func() {
		for _, c := range conns {
			c.nc.Close()
		}
	}()
	var hello *wire.Hello
	for range cfg.Conns {
		c, h, err := dial(ctx, cfg.Socket, cfg.DialTimeout)
		if err != nil {
			return fmt.Errorf("connect %s: %w", cfg.Socket, err)
		}
		conns = append(conns, c)
		hello = h
	}
	if hello.MaxValue > 0 && cfg.ValueSize > hello.MaxValue {
		return &usageError{fmt.Sprintf("-d %d: the sidecar accepts values up to %d bytes", cfg.ValueSize, hello.MaxValue)}
	}
	value := makeValue(cfg.ValueSize, cfg.Seed)
	eng, err := newEngine(conns, cfg.Governor, value, cfg.Keys, cfg.Pipeline, cfg.Seed)
	if err != nil {
		return err
	}

	putAll, _ := ParseMix("put")
	var setup []*phaseResult
	runSetup := func(name string, requests int64) error {
		res, err := eng.run(ctx, phase{name: name, mix: putAll, seq: true, requests: requests,
			deadline: time.Now().Add(maxDuration)})
		if res != nil {
			setup = append(setup, res)
			if !cfg.JSON {
				fmt.Fprintf(stderr, "%s: %d puts in %.2fs (%.0f/s), %s\n", name, res.requests(),
					res.elapsed.Seconds(), rate(res.requests(), res.elapsed), formatErrors(res.errs))
			}
		}
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		if res.failed() > 0 {
			return fmt.Errorf("%s: %d writes failed: %s", name, res.failed(), formatErrors(res.errs))
		}
		return ctx.Err()
	}
	if cfg.Warmup {
		if err := runSetup("warmup", int64(cfg.Keys)); err != nil {
			return err
		}
	}
	if cfg.Hot > 0 {
		if err := runSetup("hot", int64(cfg.Keys)*int64(cfg.Hot)); err != nil {
			return err
		}
	}
	if (cfg.Warmup || cfg.Hot > 0) && cfg.Mix.Weights[opGet] > 0 {
		if err := checkValue(conns[0], cfg, value); err != nil {
			return err
		}
	}

	res, runErr := eng.run(ctx, phase{name: "measure", mix: cfg.Mix, seq: cfg.Seq,
		requests: cfg.Requests, deadline: time.Now().Add(cfg.Duration)})
	if res == nil {
		return runErr
	}
	rep := newReport(cfg, "load", res, setup)
	if err := rep.write(stdout, cfg.JSON); err != nil {
		return err
	}
	if runErr != nil {
		return runErr
	}
	if n := res.failed(); n > 0 {
		return fmt.Errorf("%d requests failed: %s", n, formatErrors(res.errs))
	}
	return nil
}

// checkValue reads the first key back in full and compares it with what the
// setup wrote, so that a run never measures a server that answers gets
// without the data.
func checkValue(c *benchConn, cfg *Config, value wire.Raw) error {
	resp, err := c.call(&wire.Request{ID: 2, Op: wire.OpGet, Governor: cfg.Governor, State: keyName(0)}, cfg.DialTimeout)
	if err != nil {
		return fmt.Errorf("check get: %w", err)
	}
	switch {
	case resp.Error != nil:
		return fmt.Errorf("check get %s/%s: %w", cfg.Governor, keyName(0), resp.Error)
	case resp.Record == nil:
		return fmt.Errorf("check get %s/%s: reply has no record", cfg.Governor, keyName(0))
	case string(resp.Record.Value) != string(value):
		return fmt.Errorf("check get %s/%s: value of %d bytes differs from the %d bytes written",
			cfg.Governor, keyName(0), len(resp.Record.Value), len(value))
	}
	return nil
}
