package main

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// opKind is one request kind the load generator sends.
type opKind uint8

const (
	opGet opKind = iota
	opPut
	opDelete
	opPing
	numOps
)

var opNames = [numOps]string{"get", "put", "delete", "ping"}

func (o opKind) String() string { return opNames[o] }

// ErrBadMix is wrapped by ParseMix's errors.
var ErrBadMix = errors.New("bad op mix")

// maxWeight bounds one weight so that the sum of all of them cannot overflow.
const maxWeight = 1_000_000

// Mix is a weighted choice of ops: each request picks op i with probability
// Weights[i]/Total.
type Mix struct {
	Weights [numOps]uint32
	Total   uint32
}

// ParseMix parses a mix such as "get=9,put=1". A bare name means weight 1
// ("get,put" is half and half). Names are get, put, delete and ping; each may
// appear once; weights are integers from 0 to 1,000,000 and at least one must
// be positive.
func ParseMix(s string) (Mix, error) {
	var m Mix
	var seen [numOps]bool
	if strings.TrimSpace(s) == "" {
		return m, fmt.Errorf("%w: empty", ErrBadMix)
	}
	for part := range strings.SplitSeq(s, ",") {
		part = strings.TrimSpace(part)
		name, ws, hasWeight := strings.Cut(part, "=")
		name = strings.TrimSpace(name)
		w := uint64(1)
		if hasWeight {
			var err error
			w, err = strconv.ParseUint(strings.TrimSpace(ws), 10, 32)
			if err != nil || w > maxWeight {
				return Mix{}, fmt.Errorf("%w: weight %q of %q: want an integer from 0 to %d", ErrBadMix, ws, name, maxWeight)
			}
		}
		op, ok := opByName(name)
		if !ok {
			return Mix{}, fmt.Errorf("%w: unknown op %q (want get, put, delete or ping)", ErrBadMix, name)
		}
		if seen[op] {
			return Mix{}, fmt.Errorf("%w: op %q given twice", ErrBadMix, name)
		}
		seen[op] = true
		m.Weights[op] = uint32(w)
		m.Total += uint32(w)
	}
	if m.Total == 0 {
		return Mix{}, fmt.Errorf("%w: all weights are zero", ErrBadMix)
	}
	return m, nil
}

func opByName(name string) (opKind, bool) {
	for i, n := range opNames {
		if n == name {
			return opKind(i), true
		}
	}
	return 0, false
}

// single returns the only op with a positive weight, if there is just one.
func (m Mix) single() (opKind, bool) {
	found, n := opKind(0), 0
	for i, w := range m.Weights {
		if w > 0 {
			found, n = opKind(i), n+1
		}
	}
	return found, n == 1
}

// pick maps r, uniform in [0, Total), to an op.
func (m Mix) pick(r uint32) opKind {
	for i, w := range m.Weights {
		if r < w {
			return opKind(i)
		}
		r -= w
	}
	return numOps - 1 // unreachable for r < Total
}

// String renders the mix in ParseMix's syntax.
func (m Mix) String() string {
	var b strings.Builder
	for i, w := range m.Weights {
		if w == 0 {
			continue
		}
		if b.Len() > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, "%s=%d", opNames[i], w)
	}
	return b.String()
}
