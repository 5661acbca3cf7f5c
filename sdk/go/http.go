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
type Request struct{ handle uint32 }

// Response is the response on its way to the client. It is valid only during the call it was
// passed to.
type Response struct{ handle uint32 }

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

// Header returns the first value of a header and whether it was present.
func (r *Request) Header(name string) ([]byte, bool) { return requestHeader(r.handle, name) }

// HeaderString returns the first value of a header as a string ("" when absent).
func (r *Request) HeaderString(name string) string {
	value, _ := r.Header(name)
	return string(value)
}

// HeaderAll returns every value of a header, in order.
func (r *Request) HeaderAll(name string) [][]byte { return requestHeaderAll(r.handle, name) }

// Headers returns every header.
func (r *Request) Headers() []Header { return requestHeaders(r.handle) }

// SetHeader sets a header, replacing any values it had; refused for an invalid name or value.
func (r *Request) SetHeader(name string, value string) error {
	return requestSetHeader(r.handle, name, []byte(value))
}

// SetHeaderBytes is SetHeader with a raw value.
func (r *Request) SetHeaderBytes(name string, value []byte) error {
	return requestSetHeader(r.handle, name, value)
}

// AppendHeader adds a value to a header.
func (r *Request) AppendHeader(name string, value string) error {
	return requestAppendHeader(r.handle, name, []byte(value))
}

// RemoveHeader removes every value of a header.
func (r *Request) RemoveHeader(name string) { requestRemoveHeader(r.handle, name) }

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

// Header returns the first value of a header and whether it was present.
func (r *Response) Header(name string) ([]byte, bool) { return responseHeader(r.handle, name) }

// HeaderString returns the first value of a header as a string ("" when absent).
func (r *Response) HeaderString(name string) string {
	value, _ := r.Header(name)
	return string(value)
}

// HeaderAll returns every value of a header, in order.
func (r *Response) HeaderAll(name string) [][]byte { return responseHeaderAll(r.handle, name) }

// Headers returns every header.
func (r *Response) Headers() []Header { return responseHeaders(r.handle) }

// SetHeader sets a header, replacing any values it had.
func (r *Response) SetHeader(name string, value string) error {
	return responseSetHeader(r.handle, name, []byte(value))
}

// SetHeaderBytes is SetHeader with a raw value.
func (r *Response) SetHeaderBytes(name string, value []byte) error {
	return responseSetHeader(r.handle, name, value)
}

// AppendHeader adds a value to a header.
func (r *Response) AppendHeader(name string, value string) error {
	return responseAppendHeader(r.handle, name, []byte(value))
}

// RemoveHeader removes every value of a header.
func (r *Response) RemoveHeader(name string) { responseRemoveHeader(r.handle, name) }
