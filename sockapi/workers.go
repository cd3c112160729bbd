package sockapi

import "time"

// workers runs a connection's writes (conn.goWrite) on goroutines that
// outlive them. A fresh goroutine per write costs its creation and, as the
// write goes through the store, the growth of its stack (runtime.morestack
// was about 5% of the sidecar's CPU under a put load); a worker keeps its
// grown stack for the next write. A job goes to an idle worker when there
// is one, else to a new worker, so a job never waits for another to finish.
// A worker idle for workerIdle exits, and every idle worker exits once quit
// is closed (Serve returned: every write has finished).
type workers struct {
	jobs chan func() // unbuffered: a send succeeds only to an idle worker
	quit <-chan struct{}
}

func newWorkers(quit <-chan struct{}) workers {
	return workers{jobs: make(chan func()), quit: quit}
}

// workerIdle is how long an idle worker waits for a job before it exits.
const workerIdle = 10 * time.Second

// run runs job on an idle worker, or on a new one.
func (w *workers) run(job func()) {
	select {
	case w.jobs <- job:
	default:
		go w.work(job)
	}
}

// work runs job, then the jobs handed to it, until it is idle for
// workerIdle.
func (w *workers) work(job func()) {
	idle := time.NewTimer(workerIdle)
	defer idle.Stop()
	for {
		job()
		job = nil // let it be collected while the worker waits
		idle.Reset(workerIdle)
		select {
		case job = <-w.jobs:
		case <-idle.C:
			return
		case <-w.quit:
			return
		}
	}
}
