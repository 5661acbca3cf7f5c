package sluice

import (
	"bytes"
	"encoding/json"
	"errors"
)

// Phases is the set of phases a filter takes part in; the host calls only these. Register works
// them out from the interfaces the filter implements.
type Phases uint8

const (
	// PhaseRequestHeaders: OnRequest, the request head, before the upstream is chosen.
	PhaseRequestHeaders Phases = 1 << iota
	// PhaseRequestBody: OnRequestBody, the whole request body (buffered by the host up to the
	// route's filter body limit), before it is sent upstream.
	PhaseRequestBody
	// PhaseResponseHeaders: OnResponse, the response head, before it is sent to the client.
	PhaseResponseHeaders
	// PhaseResponseBody: OnResponseBody, the response body chunk by chunk as it streams.
	PhaseResponseBody
	// PhaseBufferResponseBody: with PhaseResponseBody, the whole response body in one call, so
	// that the response head may still be changed.
	PhaseBufferResponseBody
)

// A filter implements one or more of these interfaces; the host calls only the phases it has.

// RequestFilter sees the request head. Return Continue() to go on, or a local response.
type RequestFilter interface {
	OnRequest(req *Request) Decision
}

// RequestBodyFilter sees the whole request body (endOfStream is then true); the request head
// may still be changed.
type RequestBodyFilter interface {
	OnRequestBody(req *Request, body []byte, endOfStream bool) BodyAction
}

// ResponseFilter sees the response head. The request can be read but no longer changed.
type ResponseFilter interface {
	OnResponse(req *Request, resp *Response) Decision
}

// ResponseBodyFilter sees the response body, chunk by chunk, or whole when it also implements
// BufferedResponseBody and returns true.
type ResponseBodyFilter interface {
	OnResponseBody(req *Request, resp *Response, body []byte, endOfStream bool) BodyAction
}

// BufferedResponseBody asks for the whole response body in one OnResponseBody call (bounded by
// the route's filter body limit), so that OnResponseBody may still change the response head.
type BufferedResponseBody interface {
	BufferResponseBody() bool
}

// LocalResponse is a response made by the filter instead of the upstream's.
type LocalResponse struct {
	// Status is the HTTP status, 200 to 599.
	Status int
	// Headers; hop-by-hop headers are dropped by the host.
	Headers []Header
	// Body is the whole body.
	Body []byte
}

// NewResponse starts a local response with this status and no headers or body.
func NewResponse(status int) *LocalResponse { return &LocalResponse{Status: status} }

// WithHeader adds a header to the response.
func (r *LocalResponse) WithHeader(name, value string) *LocalResponse {
	r.Headers = append(r.Headers, Header{Name: name, Value: []byte(value)})
	return r
}

// WithBody sets the body.
func (r *LocalResponse) WithBody(body []byte) *LocalResponse {
	r.Body = body
	return r
}

// WithText sets a plain-text body and its content type.
func (r *LocalResponse) WithText(text string) *LocalResponse {
	r.Body = []byte(text)
	return r.WithHeader("content-type", "text/plain; charset=utf-8")
}

// Decision is what a header phase decides: go on, or answer with a local response.
type Decision struct{ respond *LocalResponse }

// Continue goes on: the next filter, then the upstream (or the client).
func Continue() Decision { return Decision{} }

// Respond stops here and answers with resp. The remaining filters and the upstream never see the
// request; from a response phase it replaces the upstream's response.
func Respond(resp *LocalResponse) Decision { return Decision{respond: resp} }

// Response returns the local response of a Respond decision (nil for Continue).
func (d Decision) Response() *LocalResponse { return d.respond }

// BodyAction is what a body phase decides about the chunk it was given.
type BodyAction struct {
	kind    bodyActionKind
	replace []byte
	respond *LocalResponse
}

type bodyActionKind uint8

const (
	bodyPass bodyActionKind = iota
	bodyReplace
	bodyRespond
)

// Pass passes the chunk on unchanged.
func Pass() BodyAction { return BodyAction{kind: bodyPass} }

// Replace passes these bytes on instead; empty holds the chunk back (held data must be emitted
// later, at the latest when endOfStream is true).
func Replace(body []byte) BodyAction { return BodyAction{kind: bodyReplace, replace: body} }

// RespondWith stops and answers with resp (request bodies and buffered response bodies only).
func RespondWith(resp *LocalResponse) BodyAction { return BodyAction{kind: bodyRespond, respond: resp} }

// Replacement returns the bytes of a Replace action and whether it is one.
func (a BodyAction) Replacement() ([]byte, bool) { return a.replace, a.kind == bodyReplace }

// Response returns the local response of a RespondWith action (nil otherwise).
func (a BodyAction) Response() *LocalResponse { return a.respond }

// The filter this instance runs, made by configure from the constructor given to Register.
var (
	constructor func(config []byte) (any, error)
	active      any
)

// Register makes newFilter this plugin's filter constructor. Call it from the main package's
// init. The host calls it once per instance with the route's config for the filter, decoded
// from JSON into C (the zero C when the route gives none; a key C has no field for is refused, so
// that a misspelt setting fails the load instead of being ignored; take a json.RawMessage to
// decode it yourself); an error refuses the config, and the
// route does not load, with the error's message saying why. The filter it returns must
// implement at least one of RequestFilter, RequestBodyFilter, ResponseFilter and
// ResponseBodyFilter.
func Register[C any](newFilter func(config C) (any, error)) {
	constructor = func(raw []byte) (any, error) {
		var config C
		if len(raw) > 0 && string(raw) != "null" {
			decoder := json.NewDecoder(bytes.NewReader(raw))
			decoder.DisallowUnknownFields()
			if err := decoder.Decode(&config); err != nil {
				return nil, errors.New("invalid config: " + err.Error())
			}
		}
		return newFilter(config)
	}
}

// configure builds the filter from its config and works out its phases.
func configure(config []byte) (Phases, error) {
	if constructor == nil {
		return 0, errors.New("the plugin registered no filter: call sluice.Register from an init function")
	}
	filter, err := constructor(config)
	if err != nil {
		return 0, err
	}
	phases := PhasesOf(filter)
	if phases == 0 {
		return 0, errors.New("the filter implements no phase: give it an OnRequest, OnRequestBody, OnResponse or OnResponseBody method")
	}
	active = filter
	return phases, nil
}

// PhasesOf returns the phases filter takes part in, from the interfaces it implements.
func PhasesOf(filter any) Phases {
	var phases Phases
	if _, ok := filter.(RequestFilter); ok {
		phases |= PhaseRequestHeaders
	}
	if _, ok := filter.(RequestBodyFilter); ok {
		phases |= PhaseRequestBody
	}
	if _, ok := filter.(ResponseFilter); ok {
		phases |= PhaseResponseHeaders
	}
	if _, ok := filter.(ResponseBodyFilter); ok {
		phases |= PhaseResponseBody
		if buffered, ok := filter.(BufferedResponseBody); ok && buffered.BufferResponseBody() {
			phases |= PhaseBufferResponseBody
		}
	}
	return phases
}
