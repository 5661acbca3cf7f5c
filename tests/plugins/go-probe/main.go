// go-probe: the Go twin of tests/plugins/probe. With the same config it tags requests and
// responses the same way in every phase, so the same end-to-end tests run against a Rust and a
// Go filter. With `host_calls` it also calls every host function the world offers and reports
// what came back in request headers, which shows the Go SDK's canonical-ABI glue end to end.
package main

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"sluice.dev/sluice"
)

// Config mirrors the Rust probe's.
type Config struct {
	Tag                string  `json:"tag"`
	DenyPath           *string `json:"deny_path"`
	ReplaceStatus      *int    `json:"replace_status"`
	RewritePath        *string `json:"rewrite_path"`
	UpperRequestBody   bool    `json:"upper_request_body"`
	DenyBody           *string `json:"deny_body"`
	UpperResponseBody  bool    `json:"upper_response_body"`
	AppendResponseBody *string `json:"append_response_body"`
	Count              bool    `json:"count"`
	Refuse             bool    `json:"refuse"`
	// HostCalls: call every host function (callouts go to the upstream named here).
	HostCalls string `json:"host_calls"`
	// PanicPath: panic in the request phase for this path.
	PanicPath string `json:"panic_path"`
	// Trace: add an attribute and an event to the call's span, and report the trace id in
	// x-trace-id.
	Trace bool `json:"trace"`
}

// Probe is the base filter: request and response heads.
type Probe struct {
	config Config
	chunks int
	served uint64
}

// The phase sets are types of their own: the SDK works out the phases from the methods a filter
// has, so each config gets a type with exactly the methods it needs.
type withRequestBody struct{ *Probe }
type withResponseBody struct{ *Probe }
type withBufferedResponseBody struct{ *Probe }
type withBothBodies struct{ *Probe }

func (p withRequestBody) OnRequestBody(req *sluice.Request, body []byte, end bool) sluice.BodyAction {
	return p.onRequestBody(req, body)
}
func (p withBothBodies) OnRequestBody(req *sluice.Request, body []byte, end bool) sluice.BodyAction {
	return p.onRequestBody(req, body)
}
func (p withResponseBody) OnResponseBody(req *sluice.Request, resp *sluice.Response, body []byte, end bool) sluice.BodyAction {
	return p.onResponseBody(resp, body, end)
}
func (p withBothBodies) OnResponseBody(req *sluice.Request, resp *sluice.Response, body []byte, end bool) sluice.BodyAction {
	return p.onResponseBody(resp, body, end)
}
func (p withBufferedResponseBody) OnResponseBody(req *sluice.Request, resp *sluice.Response, body []byte, end bool) sluice.BodyAction {
	return p.onResponseBody(resp, body, end)
}
func (withBufferedResponseBody) BufferResponseBody() bool { return true }

func (p *Probe) OnRequest(req *sluice.Request) sluice.Decision {
	p.chunks = 0
	p.served++
	if p.config.PanicPath != "" && p.config.PanicPath == req.Path() {
		panic("go-probe panicked on " + req.Path())
	}
	_ = req.SetHeader("x-"+p.config.Tag+"-instance-requests", strconv.FormatUint(p.served, 10))
	if p.config.Trace {
		sluice.SetSpanAttribute("probe.tag", p.config.Tag)
		sluice.AddSpanEvent("probe.seen", [][2]string{{"path", req.Path()}})
		if id, ok := sluice.TraceID(); ok {
			_ = req.SetHeader("x-trace-id", id)
		}
	}
	if p.config.DenyPath != nil && *p.config.DenyPath == req.Path() {
		return sluice.Respond(sluice.NewResponse(403).
			WithHeader("content-type", "text/plain").
			WithBody([]byte("denied by " + p.config.Tag + "\n")))
	}
	if p.config.RewritePath != nil && *p.config.RewritePath == req.Path() {
		_ = req.SetPathWithQuery("/rewritten")
	}
	_ = req.AppendHeader("x-chain", p.config.Tag)
	if identity, ok := req.ClientIdentity(); ok {
		_ = req.SetHeader("x-client-identity", identity)
	}
	if p.config.Count {
		count, err := sluice.KVIncrement("requests", 1, 0)
		if err != nil {
			count = -1
		}
		_ = req.SetHeader("x-count", strconv.FormatInt(count, 10))
		sluice.CounterAdd("probe_requests", [][2]string{{"tag", p.config.Tag}}, 1)
	}
	if p.config.HostCalls != "" {
		callEveryHostFunction(req, p.config.HostCalls)
	}
	return sluice.Continue()
}

func (p *Probe) onRequestBody(req *sluice.Request, body []byte) sluice.BodyAction {
	if p.config.DenyBody != nil && strings.Contains(string(body), *p.config.DenyBody) {
		return sluice.RespondWith(sluice.NewResponse(400).WithBody([]byte("body refused by " + p.config.Tag + "\n")))
	}
	_ = req.SetHeader("x-request-body-bytes", strconv.Itoa(len(body)))
	return sluice.Replace(bytes.ToUpper(body))
}

func (p *Probe) OnResponse(req *sluice.Request, resp *sluice.Response) sluice.Decision {
	if p.config.ReplaceStatus != nil && *p.config.ReplaceStatus == resp.Status() {
		return sluice.Respond(sluice.NewResponse(418).WithBody([]byte("replaced by " + p.config.Tag + "\n")))
	}
	_ = resp.AppendHeader("x-chain-response", p.config.Tag)
	// The request can be read in the response phase, not changed.
	refused := req.SetHeader("x-too-late", "1") != nil
	_ = resp.SetHeader("x-"+p.config.Tag+"-saw-request-readonly", strconv.FormatBool(refused))
	if p.config.HostCalls != "" {
		reportResponseCalls(resp)
	}
	return sluice.Continue()
}

func (p *Probe) onResponseBody(resp *sluice.Response, body []byte, end bool) sluice.BodyAction {
	if p.config.AppendResponseBody != nil {
		_ = resp.SetHeader("x-buffered", "yes")
		return sluice.Replace(append(body, *p.config.AppendResponseBody...))
	}
	if len(body) > 0 {
		p.chunks++
	}
	if end {
		return sluice.Replace(append(bytes.ToUpper(body), "["+strconv.Itoa(p.chunks)+" chunks]"...))
	}
	return sluice.Replace(bytes.ToUpper(body))
}

// callEveryHostFunction calls each host function and sets x-host-* request headers with what
// it got back, for the test to compare with what the host should have answered.
func callEveryHostFunction(req *sluice.Request, upstream string) {
	report := func(name, value string) { _ = req.SetHeader("x-host-"+name, value) }
	report("method", req.Method())
	report("authority", req.Authority())
	report("path-with-query", req.PathWithQuery())
	report("client-ip", req.ClientIP())
	report("request-id", req.RequestID())
	report("route", req.Route())
	multi := req.HeaderAll("x-multi")
	joined := make([]string, len(multi))
	for i, value := range multi {
		joined[i] = string(value)
	}
	report("header-all", strings.Join(joined, "|"))
	_, missing := req.Header("x-absent")
	report("header-absent", strconv.FormatBool(!missing))
	names := []string{}
	for _, header := range req.Headers() {
		if strings.HasPrefix(header.Name, "x-multi") {
			names = append(names, header.Name+"="+string(header.Value))
		}
	}
	report("headers", strings.Join(names, ","))
	report("set-header-invalid", errorText(req.SetHeader("bad name", "v")))
	report("set-path-invalid", errorText(req.SetPathWithQuery("no-slash")))
	req.RemoveHeader("x-remove-me")
	req.SetCacheKey("probe-key")

	// Key-value, in the tenant's namespace.
	kv := []string{}
	note := func(step string, value any, err error) {
		kv = append(kv, step+"="+describe(value, err))
	}
	note("set", nil, sluice.KVSet("probe:k", []byte("v1"), 0))
	value, found, err := sluice.KVGet("probe:k")
	note("get", string(value)+"/"+strconv.FormatBool(found), err)
	swapped, err := sluice.KVCompareAndSwap("probe:k", []byte("v1"), []byte("v2"), 0)
	note("cas", swapped, err)
	swapped, err = sluice.KVCompareAndSwap("probe:k", []byte("stale"), []byte("v3"), 0)
	note("cas-stale", swapped, err)
	swapped, err = sluice.KVCompareAndSwap("probe:new", nil, []byte("first"), 0)
	note("cas-absent", swapped, err)
	deleted, err := sluice.KVDelete("probe:k")
	note("delete", deleted, err)
	_, found, err = sluice.KVGet("probe:k")
	note("get-deleted", found, err)
	total, err := sluice.KVIncrement("probe:n", 5, 0)
	note("increment", total, err)
	_, err = sluice.KVIncrement("probe:new", 1, 0)
	note("increment-text", errors.Is(err, sluice.ErrNotANumber), nil)
	bucket, err := sluice.KVTakeTokens("probe:bucket", 2, 1, time.Hour, 2)
	note("bucket", fmt.Sprintf("%t/%d/%t", bucket.Taken, bucket.Remaining, bucket.FullIn > 59*time.Minute), err)
	bucket, err = sluice.KVTakeTokens("probe:bucket", 2, 1, time.Hour, 1)
	note("bucket-empty", fmt.Sprintf("%t/%t", bucket.Taken, bucket.RetryIn > 29*time.Minute), err)
	_, err = sluice.KVTakeTokens("probe:bucket", 2, 1, time.Hour, 3)
	var refused *sluice.KVError
	note("bucket-invalid", errors.As(err, &refused), nil)
	_, _ = sluice.KVDelete("probe:n")
	_, _ = sluice.KVDelete("probe:new")
	_, _ = sluice.KVDelete("probe:bucket")
	report("kv", strings.Join(kv, ","))

	sluice.GaugeSet("probe_gauge", [][2]string{{"kind", "go"}}, -7)
	sluice.HistogramRecord("probe_seconds", nil, 0.25)
	sluice.Log(sluice.LevelInfo, "go-probe called every host function")

	random := sluice.RandomBytes(24)
	report("random-len", strconv.Itoa(len(random)))
	report("random-u64-differ", strconv.FormatBool(sluice.RandomUint64() != sluice.RandomUint64()))
	report("now-ms", strconv.FormatInt(sluice.Now().UnixMilli(), 10))
	first := sluice.MonotonicNanos()
	report("monotonic", strconv.FormatBool(sluice.MonotonicNanos() >= first))

	answer, err := sluice.Send(upstream, sluice.CalloutRequest{
		Method:        "POST",
		PathWithQuery: "/from-callout?q=1",
		Headers:       []sluice.Header{{Name: "x-callout", Value: []byte("yes")}},
		Body:          []byte("callout body"),
	})
	if err != nil {
		report("callout", err.Error())
	} else {
		report("callout", strconv.Itoa(answer.Status)+" "+strconv.Itoa(len(answer.Body))+" bytes")
		for _, header := range answer.Headers {
			if header.Name == "content-type" {
				report("callout-content-type", string(header.Value))
			}
		}
	}
	_, err = sluice.Get("no-such-upstream", "/")
	report("callout-unknown", err.Error())
}

// reportResponseCalls exercises the response handle's functions.
func reportResponseCalls(resp *sluice.Response) {
	_ = resp.SetHeader("x-host-response-status", strconv.Itoa(resp.Status()))
	_ = resp.SetHeader("x-host-response-content-type", resp.HeaderString("content-type"))
	_ = resp.SetHeader("x-host-response-headers", strconv.Itoa(len(resp.Headers())))
	_ = resp.AppendHeader("x-host-response-multi", "a")
	_ = resp.AppendHeader("x-host-response-multi", "b")
	_ = resp.SetHeader("x-host-response-multi-count", strconv.Itoa(len(resp.HeaderAll("x-host-response-multi"))))
	resp.RemoveHeader("x-powered-by")
	_ = resp.SetHeader("x-host-set-status-invalid", errorText(resp.SetStatus(42)))
	_ = resp.SetStatus(203)
}

func describe(value any, err error) string {
	if err != nil {
		return "error:" + err.Error()
	}
	switch v := value.(type) {
	case nil:
		return "ok"
	case bool:
		return strconv.FormatBool(v)
	case int64:
		return strconv.FormatInt(v, 10)
	case string:
		return v
	}
	return "?"
}

func errorText(err error) string {
	if err == nil {
		return "accepted"
	}
	return "refused"
}

func init() {
	sluice.Register(func(config Config) (any, error) {
		if config.Refuse {
			return nil, errors.New("refused on purpose")
		}
		probe := &Probe{config: config}
		requestBody := config.UpperRequestBody || config.DenyBody != nil
		switch {
		case config.AppendResponseBody != nil:
			return withBufferedResponseBody{probe}, nil
		case requestBody && config.UpperResponseBody:
			return withBothBodies{probe}, nil
		case requestBody:
			return withRequestBody{probe}, nil
		case config.UpperResponseBody:
			return withResponseBody{probe}, nil
		}
		return probe, nil
	})
}

// main is not called: the host calls the filter's phases.
func main() {}
