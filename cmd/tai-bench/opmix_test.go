package main

import (
	"errors"
	"testing"
)

func TestParseMix(t *testing.T) {
	tests := []struct {
		in      string
		want    [numOps]uint32 // get, put, delete, ping
		wantErr bool
	}{
		{in: "get=1", want: [numOps]uint32{1, 0, 0, 0}},
		{in: "put=1", want: [numOps]uint32{0, 1, 0, 0}},
		{in: "get=9,put=1", want: [numOps]uint32{9, 1, 0, 0}},
		{in: " get = 9 , put = 1 ", want: [numOps]uint32{9, 1, 0, 0}},
		{in: "get,put", want: [numOps]uint32{1, 1, 0, 0}},
		{in: "ping", want: [numOps]uint32{0, 0, 0, 1}},
		{in: "get=8,put=1,delete=1,ping=0", want: [numOps]uint32{8, 1, 1, 0}},
		{in: "put=1000000", want: [numOps]uint32{0, 1_000_000, 0, 0}},
		{in: "", wantErr: true},
		{in: "  ", wantErr: true},
		{in: "get=0", wantErr: true},
		{in: "get=0,put=0", wantErr: true},
		{in: "set=1", wantErr: true},
		{in: "GET=1", wantErr: true},
		{in: "get=-1", wantErr: true},
		{in: "get=1.5", wantErr: true},
		{in: "get=x", wantErr: true},
		{in: "get=", wantErr: true},
		{in: "get=1000001", wantErr: true},
		{in: "get=1,get=2", wantErr: true},
		{in: "get=1,", wantErr: true},
		{in: ",get=1", wantErr: true},
		{in: "get=1;put=1", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			m, err := ParseMix(tt.in)
			if tt.wantErr {
				if !errors.Is(err, ErrBadMix) {
					t.Fatalf("ParseMix(%q) = %v, %v; want an error wrapping ErrBadMix", tt.in, m, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseMix(%q): %v", tt.in, err)
			}
			if m.Weights != tt.want {
				t.Fatalf("ParseMix(%q) weights = %v, want %v", tt.in, m.Weights, tt.want)
			}
			var sum uint32
			for _, w := range tt.want {
				sum += w
			}
			if m.Total != sum {
				t.Fatalf("Total = %d, want %d", m.Total, sum)
			}
			// String round-trips.
			again, err := ParseMix(m.String())
			if err != nil || again != m {
				t.Fatalf("ParseMix(%q) = %v, %v; want %v", m.String(), again, err, m)
			}
		})
	}
}

func TestMixPickFollowsWeights(t *testing.T) {
	m, err := ParseMix("get=7,put=2,ping=1")
	if err != nil {
		t.Fatal(err)
	}
	var got [numOps]uint32
	for r := range m.Total {
		got[m.pick(r)]++
	}
	if got != m.Weights {
		t.Fatalf("pick over [0,Total) gives %v, want %v", got, m.Weights)
	}
	if _, ok := m.single(); ok {
		t.Fatalf("single() on a three-op mix reports one op")
	}
	one, _ := ParseMix("delete=3")
	if op, ok := one.single(); !ok || op != opDelete {
		t.Fatalf("single() = %v, %v; want delete, true", op, ok)
	}
}
