package wire

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
)

func TestValidateName(t *testing.T) {
	tests := []struct {
		name string
		ok   bool
	}{
		{"orders", true},
		{"o-1.v2_x", true},
		{"ünïcødé ✓", true},
		{"_x_", true},
		{"__x", true},
		{"x__", true},
		{"___", true}, // too short to be __x__
		{strings.Repeat("a", MaxNameSize), true},
		{"", false},
		{"a/b", false},
		{"/", false},
		{".", false},
		{"..", false},
		{"__x__", false},
		{"____", false},
		{"s\xff", false},
		{strings.Repeat("a", MaxNameSize+1), false},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%.20q", tt.name), func(t *testing.T) {
			err := ValidateName("state", tt.name)
			if (err == nil) != tt.ok {
				t.Fatalf("ValidateName(%q) = %v, want ok=%v", tt.name, err, tt.ok)
			}
			if err != nil && !errors.Is(err, ErrInvalidName) {
				t.Fatalf("error %v does not wrap ErrInvalidName", err)
			}
		})
	}
}

func TestReadFrame(t *testing.T) {
	c := NewCodec()
	good, err := c.AppendFrame(nil, &Request{ID: 9, Op: OpPing})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		in   []byte
		max  int
		want error
	}{
		{"ok", good, 1024, nil},
		{"clean EOF", nil, 1024, io.EOF},
		{"partial header", good[:2], 1024, io.ErrUnexpectedEOF},
		{"partial body", good[:len(good)-1], 1024, io.ErrUnexpectedEOF},
		{"empty", []byte{0, 0, 0, 0}, 1024, ErrEmptyFrame},
		{"over cap", good, len(good) - HeaderSize - 1, ErrFrameTooLarge},
		{"4 GiB", []byte{0xff, 0xff, 0xff, 0xff}, DefaultMaxFrame, ErrFrameTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			body, err := ReadFrame(bytes.NewReader(tt.in), nil, tt.max)
			if !errors.Is(err, tt.want) {
				t.Fatalf("ReadFrame error %v, want %v", err, tt.want)
			}
			if err != nil {
				return
			}
			var req Request
			if err := c.Decode(body, &req); err != nil || req.ID != 9 || req.Op != OpPing {
				t.Fatalf("decoded %+v, %v", req, err)
			}
		})
	}
}

func TestErrorIsByCode(t *testing.T) {
	exp, act := uint64(3), uint64(5)
	var err error = &Error{Code: CodeVersionConflict, Governor: "g", State: "s", Expected: &exp, Actual: &act}
	if !errors.Is(err, ErrVersionConflict) || errors.Is(err, ErrNotFound) {
		t.Fatal("errors.Is does not match by code")
	}
	if got := err.Error(); !strings.Contains(got, "expected version 3, actual 5") || !strings.Contains(got, "g/s") {
		t.Fatalf("message %q lacks details", got)
	}
	for _, c := range []Code{CodeUnavailable, CodeTimeout} {
		if !Errorf(c, "x").Retryable {
			t.Errorf("%s not retryable", c)
		}
	}
	if Errorf(CodeInvalidArgument, "x").Retryable {
		t.Error("InvalidArgument retryable")
	}
}

func TestValueRoundTripsVerbatim(t *testing.T) {
	c := NewCodec()
	value, err := Marshal(map[string]any{"a": []any{1, "x", 2.5, nil, []byte{0, 1}}})
	if err != nil {
		t.Fatal(err)
	}
	frame, err := c.AppendFrame(nil, &Request{ID: 1, Op: OpPut, Governor: "g", State: "s", Value: value})
	if err != nil {
		t.Fatal(err)
	}
	body, err := ReadFrame(bytes.NewReader(frame), nil, DefaultMaxFrame)
	if err != nil {
		t.Fatal(err)
	}
	var req Request
	if err := c.Decode(body, &req); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(req.Value, value) {
		t.Fatalf("value changed in transit: %x, want %x", []byte(req.Value), value)
	}
}
