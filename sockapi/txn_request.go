package sockapi

import "github.com/tai-state/tai-state/sockapi/wire"

// Decoding of a txn request's ops (see request.go for the rules).

func (s *scanner) decodeOps(req *wire.Request) (fe *fieldError, err error) {
	req.Ops, fe, err = decodeList[wire.TxnOp](s, "ops")
	return fe, err
}

// txnOpField decodes the field named key of an ops entry; known is false
// for a field it does not know (to be skipped).
func (s *scanner) txnOpField(key string, e *wire.TxnOp) (known bool, fe *fieldError, err error) {
	switch key {
	case "op":
		fe, err = s.strField("op", &e.Op)
	case "governor":
		fe, err = s.strField("governor", &e.Governor)
	case "state":
		fe, err = s.strField("state", &e.State)
	case "value":
		fe, err = s.valueField(&e.Value)
	case "if_version":
		fe, err = s.uintPtrField("if_version", &e.IfVersion)
	case "if_absent":
		fe, err = s.boolField("if_absent", &e.IfAbsent)
	case "exists":
		fe, err = s.boolPtrField("exists", &e.Exists)
	default:
		return false, nil, nil
	}
	return true, fe, err
}

// boolPtrField reads a boolean or nil (absent).
func (s *scanner) boolPtrField(field string, dst **bool) (*fieldError, error) {
	t, _, u, err := s.head()
	switch {
	case err != nil:
		return nil, err
	case t == tNil:
		*dst = nil
	case t == tBool:
		b := u == 1
		*dst = &b
	default:
		return typeError(field, "a boolean", t), nil
	}
	return nil, nil
}
