//go:build wasip1

// The host's `sluice:filter/http` functions, lowered and lifted by hand.

package sluice

import (
	"errors"
	"runtime"
	"unsafe"
)

//go:wasmimport sluice:filter/http@0.1.0 [method]request.method
func importRequestMethod(self uint32, ret unsafe.Pointer)

//go:wasmimport sluice:filter/http@0.1.0 [method]request.set-method
func importRequestSetMethod(self uint32, ptr unsafe.Pointer, length uint32, ret unsafe.Pointer)

//go:wasmimport sluice:filter/http@0.1.0 [method]request.path-with-query
func importRequestPathWithQuery(self uint32, ret unsafe.Pointer)

//go:wasmimport sluice:filter/http@0.1.0 [method]request.set-path-with-query
func importRequestSetPathWithQuery(self uint32, ptr unsafe.Pointer, length uint32, ret unsafe.Pointer)

//go:wasmimport sluice:filter/http@0.1.0 [method]request.authority
func importRequestAuthority(self uint32, ret unsafe.Pointer)

//go:wasmimport sluice:filter/http@0.1.0 [method]request.header
func importRequestHeader(self uint32, ptr unsafe.Pointer, length uint32, ret unsafe.Pointer)

//go:wasmimport sluice:filter/http@0.1.0 [method]request.header-all
func importRequestHeaderAll(self uint32, ptr unsafe.Pointer, length uint32, ret unsafe.Pointer)

//go:wasmimport sluice:filter/http@0.1.0 [method]request.headers
func importRequestHeaders(self uint32, ret unsafe.Pointer)

//go:wasmimport sluice:filter/http@0.1.0 [method]request.set-header
func importRequestSetHeader(self uint32, name unsafe.Pointer, nameLength uint32, value unsafe.Pointer, valueLength uint32, ret unsafe.Pointer)

//go:wasmimport sluice:filter/http@0.1.0 [method]request.append-header
func importRequestAppendHeader(self uint32, name unsafe.Pointer, nameLength uint32, value unsafe.Pointer, valueLength uint32, ret unsafe.Pointer)

//go:wasmimport sluice:filter/http@0.1.0 [method]request.remove-header
func importRequestRemoveHeader(self uint32, name unsafe.Pointer, nameLength uint32)

//go:wasmimport sluice:filter/http@0.1.0 [method]request.client-ip
func importRequestClientIP(self uint32, ret unsafe.Pointer)

//go:wasmimport sluice:filter/http@0.1.0 [method]request.client-identity
func importRequestClientIdentity(self uint32, ret unsafe.Pointer)

//go:wasmimport sluice:filter/http@0.1.0 [method]request.request-id
func importRequestID(self uint32, ret unsafe.Pointer)

//go:wasmimport sluice:filter/http@0.1.0 [method]request.route
func importRequestRoute(self uint32, ret unsafe.Pointer)

//go:wasmimport sluice:filter/http@0.1.0 [method]request.set-cache-key
func importRequestSetCacheKey(self uint32, ptr unsafe.Pointer, length uint32)

//go:wasmimport sluice:filter/http@0.1.0 [method]response.status
func importResponseStatus(self uint32) uint32

//go:wasmimport sluice:filter/http@0.1.0 [method]response.set-status
func importResponseSetStatus(self uint32, status uint32, ret unsafe.Pointer)

//go:wasmimport sluice:filter/http@0.1.0 [method]response.header
func importResponseHeader(self uint32, ptr unsafe.Pointer, length uint32, ret unsafe.Pointer)

//go:wasmimport sluice:filter/http@0.1.0 [method]response.header-all
func importResponseHeaderAll(self uint32, ptr unsafe.Pointer, length uint32, ret unsafe.Pointer)

//go:wasmimport sluice:filter/http@0.1.0 [method]response.headers
func importResponseHeaders(self uint32, ret unsafe.Pointer)

//go:wasmimport sluice:filter/http@0.1.0 [method]response.set-header
func importResponseSetHeader(self uint32, name unsafe.Pointer, nameLength uint32, value unsafe.Pointer, valueLength uint32, ret unsafe.Pointer)

//go:wasmimport sluice:filter/http@0.1.0 [method]response.append-header
func importResponseAppendHeader(self uint32, name unsafe.Pointer, nameLength uint32, value unsafe.Pointer, valueLength uint32, ret unsafe.Pointer)

//go:wasmimport sluice:filter/http@0.1.0 [method]response.remove-header
func importResponseRemoveHeader(self uint32, name unsafe.Pointer, nameLength uint32)

// stringResult lifts a `string` result from the return area.
func stringResult() string {
	value := liftString(areaU32(0), areaU32(4))
	release()
	return value
}

// unitResult lifts a `result<_, string>` from the return area.
func unitResult() error {
	if areaU8(0) == 0 {
		return nil
	}
	message := liftString(areaU32(4), areaU32(8))
	release()
	return errors.New(message)
}

// optionBytesResult lifts an `option<list<u8>>`.
func optionBytesResult() ([]byte, bool) {
	if areaU8(0) == 0 {
		return nil, false
	}
	value := liftBytes(areaU32(4), areaU32(8))
	release()
	return value, true
}

// optionStringResult lifts an `option<string>`.
func optionStringResult() (string, bool) {
	if areaU8(0) == 0 {
		return "", false
	}
	value := liftString(areaU32(4), areaU32(8))
	release()
	return value, true
}

func byteListsResult() [][]byte {
	lists := liftByteLists(areaU32(0), areaU32(4))
	release()
	return lists
}

func headersResult() []Header {
	headers := liftHeaders(areaU32(0), areaU32(4))
	release()
	return headers
}

func requestMethod(h uint32) string {
	importRequestMethod(h, returnPointer())
	return stringResult()
}

func requestSetMethod(h uint32, method string) error {
	importRequestSetMethod(h, stringPointer(method), uint32(len(method)), returnPointer())
	runtime.KeepAlive(method)
	return unitResult()
}

func requestPathWithQuery(h uint32) string {
	importRequestPathWithQuery(h, returnPointer())
	return stringResult()
}

func requestSetPathWithQuery(h uint32, value string) error {
	importRequestSetPathWithQuery(h, stringPointer(value), uint32(len(value)), returnPointer())
	runtime.KeepAlive(value)
	return unitResult()
}

func requestAuthority(h uint32) string {
	importRequestAuthority(h, returnPointer())
	return stringResult()
}

func requestHeader(h uint32, name string) ([]byte, bool) {
	importRequestHeader(h, stringPointer(name), uint32(len(name)), returnPointer())
	runtime.KeepAlive(name)
	return optionBytesResult()
}

func requestHeaderAll(h uint32, name string) [][]byte {
	importRequestHeaderAll(h, stringPointer(name), uint32(len(name)), returnPointer())
	runtime.KeepAlive(name)
	return byteListsResult()
}

func requestHeaders(h uint32) []Header {
	importRequestHeaders(h, returnPointer())
	return headersResult()
}

func requestSetHeader(h uint32, name string, value []byte) error {
	importRequestSetHeader(h, stringPointer(name), uint32(len(name)), bytesPointer(value), uint32(len(value)), returnPointer())
	runtime.KeepAlive(name)
	runtime.KeepAlive(value)
	return unitResult()
}

func requestAppendHeader(h uint32, name string, value []byte) error {
	importRequestAppendHeader(h, stringPointer(name), uint32(len(name)), bytesPointer(value), uint32(len(value)), returnPointer())
	runtime.KeepAlive(name)
	runtime.KeepAlive(value)
	return unitResult()
}

func requestRemoveHeader(h uint32, name string) {
	importRequestRemoveHeader(h, stringPointer(name), uint32(len(name)))
	runtime.KeepAlive(name)
}

func requestClientIP(h uint32) string {
	importRequestClientIP(h, returnPointer())
	return stringResult()
}

func requestClientIdentity(h uint32) (string, bool) {
	importRequestClientIdentity(h, returnPointer())
	return optionStringResult()
}

func requestID(h uint32) string {
	importRequestID(h, returnPointer())
	return stringResult()
}

func requestRoute(h uint32) string {
	importRequestRoute(h, returnPointer())
	return stringResult()
}

func requestSetCacheKey(h uint32, key string) {
	importRequestSetCacheKey(h, stringPointer(key), uint32(len(key)))
	runtime.KeepAlive(key)
}

func responseStatus(h uint32) uint16 { return uint16(importResponseStatus(h)) }

func responseSetStatus(h uint32, status uint16) error {
	importResponseSetStatus(h, uint32(status), returnPointer())
	return unitResult()
}

func responseHeader(h uint32, name string) ([]byte, bool) {
	importResponseHeader(h, stringPointer(name), uint32(len(name)), returnPointer())
	runtime.KeepAlive(name)
	return optionBytesResult()
}

func responseHeaderAll(h uint32, name string) [][]byte {
	importResponseHeaderAll(h, stringPointer(name), uint32(len(name)), returnPointer())
	runtime.KeepAlive(name)
	return byteListsResult()
}

func responseHeaders(h uint32) []Header {
	importResponseHeaders(h, returnPointer())
	return headersResult()
}

func responseSetHeader(h uint32, name string, value []byte) error {
	importResponseSetHeader(h, stringPointer(name), uint32(len(name)), bytesPointer(value), uint32(len(value)), returnPointer())
	runtime.KeepAlive(name)
	runtime.KeepAlive(value)
	return unitResult()
}

func responseAppendHeader(h uint32, name string, value []byte) error {
	importResponseAppendHeader(h, stringPointer(name), uint32(len(name)), bytesPointer(value), uint32(len(value)), returnPointer())
	runtime.KeepAlive(name)
	runtime.KeepAlive(value)
	return unitResult()
}

func responseRemoveHeader(h uint32, name string) {
	importResponseRemoveHeader(h, stringPointer(name), uint32(len(name)))
	runtime.KeepAlive(name)
}
