package firestore

import (
	"context"
	"errors"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/tai-state/tai-state/syncer"
)

// TestCommitError: a refused commit is an outage unless the refusal is
// about the request's content, and it names a key only when the batch
// holds one change (Firestore does not say which write it refused).
func TestCommitError(t *testing.T) {
	one := syncer.Batch{Changes: []syncer.Change{{Key: syncer.Key{Governor: "g", State: "a"}}}}
	two := syncer.Batch{Changes: []syncer.Change{{Key: syncer.Key{Governor: "g", State: "a"}}, {Key: syncer.Key{Governor: "g", State: "b"}}}}
	tests := []struct {
		code codes.Code
		msg  string
		want error
	}{
		{codes.PermissionDenied, "missing or insufficient permissions", syncer.ErrUnavailable},
		{codes.Unauthenticated, "token expired", syncer.ErrUnavailable},
		{codes.FailedPrecondition, "database is being created", syncer.ErrUnavailable},
		{codes.Unimplemented, "x", syncer.ErrUnavailable},
		{codes.Unavailable, "x", syncer.ErrUnavailable},
		{codes.InvalidArgument, "bad value", syncer.ErrPermanent},
		{codes.InvalidArgument, "Document exceeds the maximum size", syncer.ErrTooLarge},
	}
	for _, tc := range tests {
		for _, b := range []syncer.Batch{one, two} {
			err := commitError(context.Background(), b, status.Error(tc.code, tc.msg))
			var e *syncer.Error
			if !errors.As(err, &e) || e.Kind != tc.want {
				t.Fatalf("%v %q, %d changes: %v, want kind %v", tc.code, tc.msg, len(b.Changes), err, tc.want)
			}
			if wantKey := len(b.Changes) == 1; (e.Key != syncer.Key{}) != wantKey {
				t.Fatalf("%v, %d changes: key %v", tc.code, len(b.Changes), e.Key)
			}
		}
	}
}
