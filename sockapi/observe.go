package sockapi

import "github.com/tai-state/tai-state/sockapi/wire"

// Observer is told about every request a Server serves, for tracing and
// metrics (see Options.Observer).
//
// StartRequest is called when a request frame has been read, with the op
// (one of the wire.Op* names, or "other" for an unknown op or a body that
// could not be decoded) and the traceparent the request carried ("" when
// none; not validated: the observer must check it). The function it returns
// is called once, after the reply was queued, with the reply's error code
// ("" for success). For reads, and writes served on the reader, that is
// before the next request is read; a write on its own goroutine ends there
// once the store has answered.
//
// Both are called from many connection goroutines at once: implementations
// must be safe for concurrent use, cheap, and must not block.
type Observer interface {
	StartRequest(op, traceparent string) (end func(code wire.Code))
}

// observeRequest starts observing the request handle has just decoded into
// c.req (werr: it could not be decoded) and returns the function that ends
// the observation of a request answered inline. A write takes the
// observation over (takeObservation) and ends it itself.
func (c *conn) observeRequest(werr *wire.Error) func() {
	op := opOther
	if werr == nil {
		op = opIndex(c.req.Op)
	}
	c.replyCode = ""
	c.obsEnd = c.s.opts.Observer.StartRequest(opNames[op], c.req.Traceparent)
	return c.endInline
}

// endInline ends the current request's observation unless a write took it.
func (c *conn) endInline() {
	if end := c.obsEnd; end != nil {
		c.obsEnd = nil
		end(c.replyCode)
	}
}

// takeObservation hands the current request's observation to the write
// that will answer it (nil when nothing observes).
func (c *conn) takeObservation() func(wire.Code) {
	end := c.obsEnd
	c.obsEnd = nil
	return end
}

// replyCodeOf is the error code of resp, "" for success.
func replyCodeOf(resp *wire.Response) wire.Code {
	if resp.Error != nil {
		return resp.Error.Code
	}
	return ""
}
