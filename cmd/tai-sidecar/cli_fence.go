package main

import (
	"errors"
	"strconv"
	"strings"

	"github.com/tai-state/tai-state/client"
	"github.com/tai-state/tai-state/sockapi/wire"
)

// fenceFlag is --fence RES:TOKEN: the lock grant a write is made under.
// The token follows the last ':' (a resource name may hold ':').
type fenceFlag struct {
	f   client.Fence
	set bool
}

func (o *fenceFlag) String() string {
	if o == nil || !o.set {
		return ""
	}
	return o.f.Resource + ":" + strconv.FormatUint(o.f.Token, 10)
}

func (o *fenceFlag) Set(s string) error {
	i := strings.LastIndexByte(s, ':')
	if i < 0 {
		return errors.New("want RESOURCE:TOKEN, e.g. orders-lock:42")
	}
	res := s[:i]
	tok, err := strconv.ParseUint(s[i+1:], 10, 64)
	if err != nil || tok == 0 {
		return errors.New("the token after ':' must be a number greater than 0")
	}
	if err := wire.ValidateName("resource", res); err != nil {
		return err
	}
	o.f, o.set = client.Fence{Resource: res, Token: tok}, true
	return nil
}

// option is the write option of the flag, nil when it is not set.
func (o *fenceFlag) option() client.WriteOption {
	if !o.set {
		return nil
	}
	return client.WithFence(o.f)
}
