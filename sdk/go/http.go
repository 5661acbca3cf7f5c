package sluice

import (
	"errors"
	"strconv"
)

// Header is one header field: a lower-case name and its raw value. A name may repeat.
type Header struct {
	Name  string
	Value []byte
}

// Request is the request being served, read and changed through the host: nothing is copied
// unless a method is called. It is valid only during the call it was passed to.
type Request struct{ headerFields }

// Response is the response on its way to the client. It is valid only during the call it was
// passed to.
type Response struct{ headerFields }

func newRequest(handle uint32) *Request { return &Request{headerFields{handle, requestHeaderHost}} }

func newResponse(handle uint32) *Response { return &Response{headerFields{handle, responseHeaderHost}} }

// headerFields gives Request and Response their header methods, each through its own resource's
// host functions.
type headerFields struct {
	handle uint32
	host   *headerHost
}

// headerHost is one resource's header functions.
type headerHost struct {
	get    func(handle uint32, name string) ([]byte, bool)
	getAll func(handle uint32, name string) [][]byte
	all    func(handle uint32) []Header
	set    func(handle uint32, name string, value []byte) error
	add    func(handle uint32, name string, value []byte) error
	remove func(handle uint32, name string)
}

// Header returns the first value of a header and whether it was present.
func (f *headerFields) Header(name string) ([]byte, bool) { return f.host.get(f.handle, name) }

// HeaderString returns the first value of a header as a string ("" when absent).
func (f *headerFields) HeaderString(name string) string {
	value, _ := f.Header(name)
	return string(value)
}

// HeaderAll returns every value of a header, in order.
func (f *headerFields) HeaderAll(name string) [][]byte { return f.host.getAll(f.handle, name) }

// Headers returns every header.
func (f *headerFields) Headers() []Header { return f.host.all(f.handle) }

// SetHeader sets a header, replacing any values it had; refused (with the host's reason) for an
// invalid name or value, or a change the phase does not allow.
func (f *headerFields) SetHeader(name string, value string) error {
	return f.host.set(f.handle, name, []byte(value))
}

// SetHeaderBytes is SetHeader with a raw value.
func (f *headerFields) SetHeaderBytes(name string, value []byte) error {
	return f.host.set(f.handle, name, value)
}

// AppendHeader adds a value to a header.
func (f *headerFields) AppendHeader(name string, value string) error {
	return f.host.add(f.handle, name, []byte(value))
}

// RemoveHeader removes every value of a header.
func (f *headerFields) RemoveHeader(name string) { f.host.remove(f.handle, name) }

// Method returns the request method, such as "GET".
func (r *Request) Method() string { return requestMethod(r.handle) }

// SetMethod changes the method.
func (r *Request) SetMethod(method string) error { return requestSetMethod(r.handle, method) }

// PathWithQuery returns path and query, such as "/users?id=7", as they will be sent upstream.
func (r *Request) PathWithQuery() string { return requestPathWithQuery(r.handle) }

// Path returns the path without the query.
func (r *Request) Path() string {
	full := r.PathWithQuery()
	for i := 0; i < len(full); i++ {
		if full[i] == '?' {
			return full[:i]
		}
	}
	return full
}

// SetPathWithQuery changes path and query; the value must start with "/".
func (r *Request) SetPathWithQuery(value string) error {
	return requestSetPathWithQuery(r.handle, value)
}

// Authority returns the host the client asked for, with the port if it gave one.
func (r *Request) Authority() string { return requestAuthority(r.handle) }

// ClientIP returns the client's IP address.
func (r *Request) ClientIP() string { return requestClientIP(r.handle) }

// ClientIdentity returns the identity in the client's verified TLS certificate, when the
// listener asked for one.
func (r *Request) ClientIdentity() (string, bool) { return requestClientIdentity(r.handle) }

// RequestID returns the request id (as in X-Request-Id).
func (r *Request) RequestID() string { return requestID(r.handle) }

// Route returns the route's name.
func (r *Request) Route() string { return requestRoute(r.handle) }

// SetCacheKey sets the key under which the response is cached.
func (r *Request) SetCacheKey(key string) { requestSetCacheKey(r.handle, key) }

// Status returns the status code.
func (r *Response) Status() int { return int(responseStatus(r.handle)) }

// SetStatus changes the status code (100 to 599; the host refuses others).
func (r *Response) SetStatus(status int) error {
	if status < 0 || status > 0xffff {
		return errors.New("status out of range: " + strconv.Itoa(status))
	}
	return responseSetStatus(r.handle, uint16(status))
}
