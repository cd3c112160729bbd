package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/tai-state/tai-state/client"
	"github.com/tai-state/tai-state/localcache"
	"github.com/tai-state/tai-state/sockapi/wire"
)

// txnOpJSON is one operation of `txn OPS`, as JSON: the protocol's fields,
// with value a JSON document (stored as msgpack).
type txnOpJSON struct {
	Op        string          `json:"op"`
	Governor  string          `json:"governor"`
	State     string          `json:"state"`
	Value     json.RawMessage `json:"value"`
	IfVersion *uint64         `json:"if_version"`
	IfAbsent  bool            `json:"if_absent"`
	Exists    *bool           `json:"exists"`
}

// parseTxnOps reads the JSON array of operations of `txn`.
func parseTxnOps(data []byte) ([]client.TxnOp, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var in []txnOpJSON
	if err := dec.Decode(&in); err != nil {
		return nil, fmt.Errorf("OPS is a JSON array of {op, governor, state, value, if_version, if_absent, exists}: %w", err)
	}
	if dec.More() {
		return nil, fmt.Errorf("OPS: more than one JSON value")
	}
	ops := make([]client.TxnOp, len(in))
	for i, o := range in {
		ops[i] = client.TxnOp{Op: o.Op, Governor: o.Governor, State: o.State, IfVersion: o.IfVersion, IfAbsent: o.IfAbsent, Exists: o.Exists}
		if len(o.Value) > 0 {
			v, err := jsonToMsgpack(o.Value)
			if err != nil {
				return nil, fmt.Errorf("ops[%d].value: %w", i, err)
			}
			ops[i].Value = v
		}
	}
	return ops, nil
}

// txnFlags runs `txn [OPS]`: one transaction of the operations OPS (a JSON
// array; "-" or none: read from standard input). It prints the records
// written, one JSON line each, then the transaction's {id, attempts}.
func txnFlags(fs *flag.FlagSet) func(context.Context, *client.Client, []string, *json.Encoder) error {
	writeOpts := writeFlags(fs, false)
	return func(ctx context.Context, c *client.Client, pos []string, out *json.Encoder) error {
		opts, err := writeOpts()
		if err != nil {
			return err
		}
		var data []byte
		if len(pos) == 0 || pos[0] == "-" {
			if data, err = io.ReadAll(io.LimitReader(os.Stdin, maxMaxFrame+1)); err != nil {
				return fmt.Errorf("txn: read standard input: %w", err)
			}
		} else {
			data = []byte(pos[0])
		}
		ops, err := parseTxnOps(data)
		if err != nil {
			return &usageError{"txn: " + err.Error()}
		}
		res, err := c.Txn(ctx, ops, opts...)
		if err != nil {
			return err
		}
		for _, rec := range res.Records {
			if err := printRecord(out, rec); err != nil {
				return err
			}
		}
		return printProtocolJSON(out, wire.TxnResult{ID: res.ID, Attempts: res.Attempts})
	}
}

// txlogFlags runs `txlog`: the sidecar's transaction log, oldest first, one
// JSON object per line with the protocol's field names.
func txlogFlags(fs *flag.FlagSet) func(context.Context, *client.Client, []string, *json.Encoder) error {
	var since, until sinceFlag // cli_conflicts.go
	fs.Var(&since, "since", "only transactions started at or after `T` (RFC 3339, or a duration before now such as 1h)")
	fs.Var(&until, "until", "only transactions started before `T` (RFC 3339, or a duration before now)")
	outcome := fs.String("outcome", "", "only transactions with outcome `O`: committed, failed or gave_way")
	gov := fs.String("governor", "", "only transactions with an operation on governor `GOV`")
	limit := fs.Int("limit", 0, "print at most `N` transactions (0: all)")
	return func(ctx context.Context, c *client.Client, _ []string, out *json.Encoder) error {
		if *limit < 0 {
			return &usageError{"txlog: --limit must not be negative"}
		}
		if !since.t.IsZero() && !until.t.IsZero() && !until.t.After(since.t) {
			return &usageError{"txlog: --until must be after --since"}
		}
		opts := client.TxLogOptions{Since: since.t, Until: until.t, Outcome: *outcome, Governor: *gov, Limit: localcache.MaxTxLogLimit}
		if *limit > 0 {
			opts.Limit = min(*limit, opts.Limit)
		}
		n := 0
		for e, err := range c.TxLogAll(ctx, opts) {
			if err != nil {
				return err
			}
			if err := printProtocolJSON(out, e); err != nil {
				return err
			}
			if n++; n == *limit {
				break
			}
		}
		return nil
	}
}
