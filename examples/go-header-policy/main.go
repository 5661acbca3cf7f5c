// header-policy: a Sluice filter in Go that enforces a header policy. Requests must carry the
// required headers, must not match a deny rule and must keep header values under a size limit;
// headers only the edge may set are stripped before the upstream; responses lose headers that
// leak details and gain the configured ones.
package main

import (
	"strconv"

	"sluice.dev/sluice"
)

// Filter applies a Policy to one route's traffic.
type Filter struct{ policy *Policy }

// OnRequest refuses requests the policy rejects and strips the headers it names.
func (f *Filter) OnRequest(req *sluice.Request) sluice.Decision {
	if verdict := f.policy.Check(req.Headers()); verdict.Status != 0 {
		sluice.Log(sluice.LevelInfo, "header policy refused the request: "+verdict.Reason)
		sluice.CounterAdd("header_policy_refused_total", [][2]string{{"status", strconv.Itoa(verdict.Status)}}, 1)
		return sluice.Respond(sluice.NewResponse(verdict.Status).
			WithHeader("x-request-id", req.RequestID()).
			WithText(verdict.Reason + "\n"))
	}
	for _, name := range f.policy.stripRequest {
		req.RemoveHeader(name)
	}
	return sluice.Continue()
}

// OnResponse strips and sets the response headers the policy names.
func (f *Filter) OnResponse(req *sluice.Request, resp *sluice.Response) sluice.Decision {
	for _, name := range f.policy.stripResponse {
		resp.RemoveHeader(name)
	}
	for _, header := range f.policy.setResponse {
		_ = resp.SetHeaderBytes(header.Name, header.Value)
	}
	return sluice.Continue()
}

func init() {
	sluice.Register(func(config Config) (any, error) {
		policy, err := NewPolicy(config)
		if err != nil {
			return nil, err
		}
		return &Filter{policy: policy}, nil
	})
}

// main is not called: the host calls the filter's phases.
func main() {}
