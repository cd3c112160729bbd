package conflict

import (
	"bytes"
	"testing"
)

// FuzzDecodeDoc: decodeDoc never panics, and what it accepts encodes to a
// canonical form that decodes to the same fields and encodes alike again.
func FuzzDecodeDoc(f *testing.F) {
	for _, seed := range [][]byte{
		{0x80},
		{0x82, 0xa1, 'b', 0x01, 0xa1, 'a', 0xc0},
		{0x81, 0xd9, 0x01, 'x', 0x92, 0x01, 0x81, 0xa1, 'k', 0xa1, 'v'},
		{0xde, 0x00, 0x01, 0xa1, 'a', 0xcb, 0x3f, 0xf8, 0, 0, 0, 0, 0, 0},
		{0x81, 0x01, 0x02},
		{0x82, 0xa1, 'a', 0x01, 0xa1, 'a', 0x02},
		{0x91, 0x01},
		{0xdf, 0xff, 0xff, 0xff, 0xff},
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		d, err := decodeDoc(b)
		if err != nil {
			return
		}
		enc := d.encode()
		d2, err := decodeDoc(enc)
		if err != nil {
			t.Fatalf("canonical form %x does not decode: %v", enc, err)
		}
		if !d.equal(d2) {
			t.Fatalf("fields changed through the canonical form: %x -> %x", b, enc)
		}
		if !bytes.Equal(d2.encode(), enc) {
			t.Fatalf("canonical form is not stable: %x", enc)
		}
	})
}

func TestDocEncodeSizes(t *testing.T) {
	// Field counts and name lengths at each header size boundary.
	for _, n := range []int{0, 15, 16, 70000} {
		d := make(doc, n)
		for i := range n {
			d[string(rune('a'+i%26))+string(rune(i))] = []byte{0x01}
		}
		if got, err := decodeDoc(d.encode()); err != nil || !got.equal(d) {
			t.Errorf("%d fields: %v", n, err)
		}
	}
	for _, l := range []int{31, 32, 255, 256, 70000} {
		d := doc{string(bytes.Repeat([]byte{'n'}, l)): {0xc0}}
		if got, err := decodeDoc(d.encode()); err != nil || !got.equal(d) {
			t.Errorf("name of %d bytes: %v", l, err)
		}
	}
}
