//go:build race

package localcache

// raceEnabled: the test binary runs under the race detector.
const raceEnabled = true
