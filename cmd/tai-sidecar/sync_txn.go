package main

import (
	"context"
	"errors"
	"fmt"

	"github.com/tai-state/tai-state/localcache"
	"github.com/tai-state/tai-state/sockapi"
	"github.com/tai-state/tai-state/syncer"
)

// WriteTxnStrong runs a strong transaction (sockapi.TxnSync), translating
// its errors as WriteStrong does.
func (s pullSync) WriteTxnStrong(ctx context.Context, t localcache.Txn, attempts int) ([]localcache.Record, int, error) {
	recs, used, err := s.store.WriteTxnStrong(ctx, s.p, t, attempts)
	if errors.Is(err, syncer.ErrUnavailable) {
		return nil, used, fmt.Errorf("%w: %v", sockapi.ErrRemoteUnavailable, err)
	}
	return recs, used, err
}

var _ sockapi.TxnSync = pullSync{}
