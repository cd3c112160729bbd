package localcache

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestMemoryBudget writes a million states of 256 bytes to an on-disk store
// and checks the process's anonymous resident memory settles under 150 MiB
// once the writes are done. It takes a few minutes, so it runs only with
// TAI_LOCALCACHE_RSS=1:
//
//	TAI_LOCALCACHE_RSS=1 go test -run TestMemoryBudget -v ./localcache/
//
// Anonymous memory is what the store costs: the Go heap (cache, memtables,
// table builders) and runtime. Badger also mmaps its tables and value log;
// those pages show in VmRSS as file-backed memory (RssFile). Checkpoints
// have the kernel reclaim those of sealed files (mapped.go, tested always by
// TestReleaseMappedKeepsData), so the test logs them but does not count
// them. It logs the peak anonymous memory seen while writing as well.
func TestMemoryBudget(t *testing.T) {
	if os.Getenv("TAI_LOCALCACHE_RSS") != "1" {
		t.Skip("set TAI_LOCALCACHE_RSS=1 to run the 1M-state memory test")
	}
	const (
		total   = 1_000_000
		batch   = 250
		writers = 8
		budget  = 150 << 20
	)
	s := openDisk(t, t.TempDir())
	defer closeStore(t, s)
	ctx := context.Background()
	value := []byte(strings.Repeat("v", 256))

	var peakAnon int64
	stopSampling := make(chan struct{})
	var sampler sync.WaitGroup
	sampler.Go(func() {
		tick := time.NewTicker(250 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stopSampling:
				return
			case <-tick.C:
				peakAnon = max(peakAnon, procStatus(t)["RssAnon"])
			}
		}
	})

	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := range writers {
		wg.Go(func() {
			ws := make([]Write, batch)
			for base := w * batch; base < total; base += writers * batch {
				for i := range ws {
					ws[i] = Write{Key: key("load", fmt.Sprintf("state-%08d", base+i)), Value: value}
				}
				if _, err := s.WriteBatch(ctx, ws); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	close(stopSampling)
	sampler.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	st := s.Stats()
	if st.States != total {
		t.Fatalf("%d states, want %d", st.States, total)
	}
	mem := procStatus(t)
	t.Logf("%d writes in %v (%.0f/s), %d commits; LSM %d MiB, value log %d MiB",
		total, elapsed.Round(time.Millisecond), total/elapsed.Seconds(), st.Commits, st.LSMBytes>>20, st.VlogBytes>>20)
	t.Logf("while writing: peak anon %d MiB; at the end: VmRSS %d MiB (anon %d MiB, file %d MiB)",
		peakAnon>>20, mem["VmRSS"]>>20, mem["RssAnon"]>>20, mem["RssFile"]>>20)

	// Let compactions finish and Badger's builder pool drain, as in an idle
	// sidecar after a burst.
	settleStart := time.Now()
	deadline := settleStart.Add(90 * time.Second)
	var ms runtime.MemStats
	for {
		runtime.GC()
		mem = procStatus(t)
		if mem["RssAnon"] <= budget || time.Now().After(deadline) {
			break
		}
		time.Sleep(time.Second)
	}
	runtime.ReadMemStats(&ms)
	t.Logf("after %v idle: VmRSS %d MiB (anon %d MiB, file %d MiB); Go heap in use %d MiB",
		time.Since(settleStart).Round(time.Second), mem["VmRSS"]>>20, mem["RssAnon"]>>20, mem["RssFile"]>>20, ms.HeapInuse>>20)
	if mem["RssAnon"] > budget {
		t.Errorf("anonymous resident memory %d MiB, budget %d MiB", mem["RssAnon"]>>20, budget>>20)
	}
}

// procStatus returns the byte-valued fields of /proc/self/status.
func procStatus(t *testing.T) map[string]int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Error(err)
		return nil
	}
	out := map[string]int64{}
	for _, line := range strings.Split(string(b), "\n") {
		name, rest, ok := strings.Cut(line, ":")
		f := strings.Fields(rest)
		if !ok || len(f) != 2 || f[1] != "kB" {
			continue
		}
		if n, err := strconv.ParseInt(f[0], 10, 64); err == nil {
			out[name] = n << 10
		}
	}
	return out
}
