package conflict

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Merge is a field-level merge of msgpack maps (documents whose keys are
// strings), three-way against the base the local change was made on:
//
//   - a field that one side changed (set, altered or removed, relative to
//     the base) and the other did not takes that side's change;
//   - a field both sides changed the same way takes that change;
//   - fields both sides changed differently overlap: Fallback (nil: LWW)
//     decides the whole conflict, and every overlapping field takes the
//     chosen side's version (if the fallback returns a merged value, that
//     value is the result).
//
// Field values are compared as encoded bytes, so a value re-encoded in
// another form counts as changed. The merged document is encoded in a
// canonical form (fields sorted by name, values verbatim), so every node
// makes the same bytes whichever side is local. When it has exactly the
// fields of one side, that side wins as it is (its bytes and clocks kept).
//
// A base with Version 0 or Deleted (both sides created the state) counts as
// the empty map. The whole conflict goes to Fallback when the base is
// unknown (Conflict.Base nil), when either side is a tombstone (deleting a
// document is not a field change), or when a value (base included) is not
// a msgpack map with string keys.
type Merge struct {
	Fallback Resolver
}

// maxReasonFields is how many field names a reason lists.
const maxReasonFields = 8

// Resolve implements Resolver.
func (m Merge) Resolve(ctx context.Context, c Conflict) (Decision, error) {
	l, r := c.Local, c.Remote
	if c.Base == nil {
		return fallback(ctx, NameMerge, m.Fallback, c, "the base version is unknown")
	}
	if l.Deleted || r.Deleted {
		return fallback(ctx, NameMerge, m.Fallback, c, "a side is a deletion")
	}
	base := doc{}
	if !c.Base.absent() {
		var err error
		if base, err = decodeDoc(c.Base.Value); err != nil {
			return fallback(ctx, NameMerge, m.Fallback, c, "base v"+strconv.FormatUint(c.Base.Version, 10)+": "+err.Error())
		}
	}
	ld, err := decodeDoc(l.Value)
	if err != nil {
		return fallback(ctx, NameMerge, m.Fallback, c, describe(l)+": "+err.Error())
	}
	rd, err := decodeDoc(r.Value)
	if err != nil {
		return fallback(ctx, NameMerge, m.Fallback, c, describe(r)+": "+err.Error())
	}

	out := make(doc, max(len(ld), len(rd)))
	var fromL, fromR, overlap []string
	take := func(d doc, name string) {
		if v, ok := d[name]; ok {
			out[name] = v
		}
	}
	for _, name := range fieldNames(base, ld, rd) {
		lch, rch := !fieldEqual(base, ld, name), !fieldEqual(base, rd, name)
		switch {
		case !lch && !rch:
			take(base, name)
		case lch && !rch:
			take(ld, name)
			fromL = append(fromL, name)
		case !lch && rch:
			take(rd, name)
			fromR = append(fromR, name)
		case fieldEqual(ld, rd, name):
			take(ld, name) // the same change on both sides
		default:
			overlap = append(overlap, name)
		}
	}

	var why strings.Builder
	fmt.Fprintf(&why, "merged fields against base v%d: %s from %s, %s from %s", c.Base.Version,
		fieldList(fromL), describe(l), fieldList(fromR), describe(r))
	name := NameMerge
	if len(overlap) > 0 {
		d, err := orLWW(m.Fallback).Resolve(ctx, c)
		if err != nil {
			return Decision{}, fmt.Errorf("%s: fallback: %w", NameMerge, err)
		}
		fmt.Fprintf(&why, "; %s changed on both sides went to %s: %s", fieldList(overlap), d.Resolver, d.Reason)
		name += ">" + d.Resolver
		switch d.Winner {
		case Local, Remote:
			src := ld
			if d.Winner == Remote {
				src = rd
			}
			for _, name := range overlap {
				take(src, name)
			}
		case Merged:
			// The fallback merged the whole document itself.
			d.Resolver = name
			d.Reason = fieldList(overlap) + " changed on both sides; " + d.Reason
			return d, nil
		default:
			return Decision{}, fmt.Errorf("%s: fallback: %w", NameMerge, d.Validate())
		}
	}
	eqL, eqR := out.equal(ld), out.equal(rd)
	switch {
	case eqL && !eqR:
		return pick(name, Local, why.String()+"; the result is "+describe(l)), nil
	case eqR && !eqL:
		return pick(name, Remote, why.String()+"; the result is "+describe(r)), nil
	}
	return Decision{Winner: Merged, Value: out.encode(), Resolver: name, Reason: why.String()}, nil
}

// orLWW returns fb, or LWW when fb is nil.
func orLWW(fb Resolver) Resolver {
	if fb == nil {
		return LWW{}
	}
	return fb
}

// fieldNames returns the names of the fields of any of ds, sorted.
func fieldNames(ds ...doc) []string {
	seen := make(map[string]bool)
	var names []string
	for _, d := range ds {
		for name := range d {
			if !seen[name] {
				seen[name] = true
				names = append(names, name)
			}
		}
	}
	slices.Sort(names)
	return names
}

// fieldList formats up to maxReasonFields names for a reason.
func fieldList(names []string) string {
	if len(names) == 0 {
		return "no fields"
	}
	var b strings.Builder
	for i, n := range names {
		if i == maxReasonFields {
			fmt.Fprintf(&b, " and %d more", len(names)-i)
			break
		}
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString(strconv.Quote(n))
	}
	return b.String()
}
