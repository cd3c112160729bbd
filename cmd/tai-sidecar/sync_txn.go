package main

import (
	"context"

	"github.com/tai-state/tai-state/localcache"
	"github.com/tai-state/tai-state/sockapi"
)

// WriteTxnStrong runs a strong transaction (sockapi.TxnSync), translating
// its errors as WriteStrong does.
func (s pullSync) WriteTxnStrong(ctx context.Context, t localcache.Txn, attempts int) ([]localcache.Record, int, error) {
	recs, used, err := s.store.WriteTxnStrong(ctx, s.p, t, attempts)
	if e := remoteError(err); e != err {
		return nil, used, e
	}
	return recs, used, err
}

var _ sockapi.TxnSync = pullSync{}
