package main

import (
	"errors"
	"fmt"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
)

// cgroupMemoryMax is where cgroup v2 publishes the container's memory limit.
const cgroupMemoryMax = "/sys/fs/cgroup/memory.max"

// memoryLimitShare is the part of a container's memory limit given to the Go
// heap's soft limit when none is configured: the rest is left for Badger's
// memory-mapped files, goroutine stacks and the kernel.
const memoryLimitShare = 0.7

// parseBytes reads a size such as 134217728, 128MiB, 512KiB or 1GiB.
func parseBytes(s string) (int64, error) {
	s = strings.TrimSpace(s)
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"B", 1}} {
		if strings.HasSuffix(s, u.suffix) {
			s, mult = strings.TrimSpace(strings.TrimSuffix(s, u.suffix)), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 || n > (1<<62)/mult {
		return 0, fmt.Errorf("%q is not a size (want bytes, or a number with KiB, MiB or GiB)", s)
	}
	return n * mult, nil
}

// cgroupLimit returns the memory limit of the cgroup this process runs in, or
// 0 if there is none.
func cgroupLimit(path string) (int64, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	s := strings.TrimSpace(string(b))
	if s == "max" || s == "" {
		return 0, nil
	}
	return strconv.ParseInt(s, 10, 64)
}

// applyMemoryLimit sets the Go runtime's soft memory limit and returns it, and
// where it came from. An explicit limit wins; then GOMEMLIMIT, which the
// runtime has already applied; then a share of the container's cgroup limit.
// 0 means no limit.
func applyMemoryLimit(explicit int64, getenv func(string) string, cgroupPath string) (int64, string, error) {
	switch {
	case explicit > 0:
		debug.SetMemoryLimit(explicit)
		return explicit, "--memory-limit", nil // given as a flag, TAI_MEMORY_LIMIT or in the file
	case getenv("GOMEMLIMIT") != "":
		return debug.SetMemoryLimit(-1), "GOMEMLIMIT", nil
	}
	limit, err := cgroupLimit(cgroupPath)
	if err != nil || limit == 0 {
		return 0, "none", err
	}
	soft := int64(float64(limit) * memoryLimitShare)
	debug.SetMemoryLimit(soft)
	return soft, "cgroup", nil
}
