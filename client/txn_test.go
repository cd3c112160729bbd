package client_test

import (
	"context"
	"errors"
	"testing"

	"github.com/tai-state/tai-state/client"
	"github.com/tai-state/tai-state/sockapi/wire"
)

// TestClientTxn runs transactions through a sidecar: all or nothing, a
// failed check as a VersionConflict error naming the state, and the
// transaction log paged with its filters; bad arguments are refused before
// sending.
func TestClientTxn(t *testing.T) {
	ctx := context.Background()
	s := startSidecar(t, nil, "")
	c := newClient(t, s.path)
	v1 := uint64(1)

	alice, err := client.TxnPut("bank", "alice", 100, nil)
	if err != nil {
		t.Fatal(err)
	}
	bob, _ := client.TxnPut("bank", "bob", 100, nil)
	res, err := c.Txn(ctx, []client.TxnOp{alice, bob, client.TxnCheckExists("bank", "closed", false)}, client.Actor("teller"))
	if err != nil || len(res.Records) != 2 || res.Attempts != 1 || res.ID == "" || res.Records[1].Version != 1 {
		t.Fatalf("txn: %+v, %v", res, err)
	}
	from, _ := client.TxnPut("bank", "alice", 90, &v1)
	to, _ := client.TxnPut("bank", "bob", 110, &v1)
	_, err = c.Txn(ctx, []client.TxnOp{from, to, client.TxnCheckVersion("bank", "limits", 4)})
	var e *client.Error
	if !errors.As(err, &e) || e.Code != wire.CodeVersionConflict || e.State != "limits" || e.Expected == nil || *e.Expected != 4 {
		t.Fatalf("failed check: %v", err)
	}
	if res, err = c.Txn(ctx, []client.TxnOp{from, to, client.TxnDelete("bank", "nobody-yet", nil)}); err == nil {
		t.Fatalf("delete of a missing state: %+v", res)
	}
	if res, err = c.Txn(ctx, []client.TxnOp{from, to}); err != nil || res.Records[0].Version != 2 {
		t.Fatalf("transfer: %+v, %v", res, err)
	}
	var ids []string
	for en, err := range c.TxLogAll(ctx, client.TxLogOptions{Limit: 2}) {
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, en.ID)
	}
	failed, next, err := c.TxLog(ctx, client.TxLogOptions{Outcome: wire.TxnFailed})
	if len(ids) != 4 || ids[3] != res.ID || err != nil || len(failed) != 2 || next != "" {
		t.Fatalf("txlog: %v; failed %+v %q %v", ids, failed, next, err)
	}
	for name, ops := range map[string][]client.TxnOp{
		"no ops":   nil,
		"bad name": {client.TxnDelete("bank", "a/b", nil)},
		"bad op":   {{Op: "upsert", Governor: "g", State: "s"}},
	} {
		if _, err := c.Txn(ctx, ops); !errors.As(err, &e) || e.Code != wire.CodeInvalidArgument {
			t.Errorf("%s: %v, want InvalidArgument", name, err)
		}
	}
	if _, _, err := c.TxLog(ctx, client.TxLogOptions{Limit: -1}); err == nil {
		t.Fatal("negative limit accepted")
	}
}
