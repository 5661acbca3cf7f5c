//go:build wasip1

// The host's `sluice:filter/http` functions, lowered and lifted by hand.

package sluice

import (
	"errors"
	"runtime"
	"unsafe"
)

//go:wasmimport sluice:filter/http@0.1.3 [method]request.method
func importRequestMethod(self uint32, ret unsafe.Pointer)

//go:wasmimport sluice:filter/http@0.1.3 [method]request.set-method
func importRequestSetMethod(self uint32, ptr unsafe.Pointer, length uint32, ret unsafe.Pointer)

//go:wasmimport sluice:filter/http@0.1.3 [method]request.path-with-query
func importRequestPathWithQuery(self uint32, ret unsafe.Pointer)

//go:wasmimport sluice:filter/http@0.1.3 [method]request.set-path-with-query
func importRequestSetPathWithQuery(self uint32, ptr unsafe.Pointer, length uint32, ret unsafe.Pointer)

//go:wasmimport sluice:filter/http@0.1.3 [method]request.authority
func importRequestAuthority(self uint32, ret unsafe.Pointer)

//go:wasmimport sluice:filter/http@0.1.3 [method]request.header
func importRequestHeader(self uint32, ptr unsafe.Pointer, length uint32, ret unsafe.Pointer)

//go:wasmimport sluice:filter/http@0.1.3 [method]request.header-all
func importRequestHeaderAll(self uint32, ptr unsafe.Pointer, length uint32, ret unsafe.Pointer)

//go:wasmimport sluice:filter/http@0.1.3 [method]request.headers
func importRequestHeaders(self uint32, ret unsafe.Pointer)

//go:wasmimport sluice:filter/http@0.1.3 [method]request.set-header
func importRequestSetHeader(self uint32, name unsafe.Pointer, nameLength uint32, value unsafe.Pointer, valueLength uint32, ret unsafe.Pointer)

//go:wasmimport sluice:filter/http@0.1.3 [method]request.append-header
func importRequestAppendHeader(self uint32, name unsafe.Pointer, nameLength uint32, value unsafe.Pointer, valueLength uint32, ret unsafe.Pointer)

//go:wasmimport sluice:filter/http@0.1.3 [method]request.remove-header
func importRequestRemoveHeader(self uint32, name unsafe.Pointer, nameLength uint32)

//go:wasmimport sluice:filter/http@0.1.3 [method]request.client-ip
func importRequestClientIP(self uint32, ret unsafe.Pointer)

//go:wasmimport sluice:filter/http@0.1.3 [method]request.client-identity
func importRequestClientIdentity(self uint32, ret unsafe.Pointer)

//go:wasmimport sluice:filter/http@0.1.3 [method]request.request-id
func importRequestID(self uint32, ret unsafe.Pointer)

//go:wasmimport sluice:filter/http@0.1.3 [method]request.route
func importRequestRoute(self uint32, ret unsafe.Pointer)

//go:wasmimport sluice:filter/http@0.1.3 [method]request.set-cache-key
func importRequestSetCacheKey(self uint32, ptr unsafe.Pointer, length uint32)

//go:wasmimport sluice:filter/http@0.1.3 [method]response.status
func importResponseStatus(self uint32) uint32

//go:wasmimport sluice:filter/http@0.1.3 [method]response.set-status
func importResponseSetStatus(self uint32, status uint32, ret unsafe.Pointer)

//go:wasmimport sluice:filter/http@0.1.3 [method]response.header
func importResponseHeader(self uint32, ptr unsafe.Pointer, length uint32, ret unsafe.Pointer)

//go:wasmimport sluice:filter/http@0.1.3 [method]response.header-all
func importResponseHeaderAll(self uint32, ptr unsafe.Pointer, length uint32, ret unsafe.Pointer)

//go:wasmimport sluice:filter/http@0.1.3 [method]response.headers
func importResponseHeaders(self uint32, ret unsafe.Pointer)

//go:wasmimport sluice:filter/http@0.1.3 [method]response.set-header
func importResponseSetHeader(self uint32, name unsafe.Pointer, nameLength uint32, value unsafe.Pointer, valueLength uint32, ret unsafe.Pointer)

//go:wasmimport sluice:filter/http@0.1.3 [method]response.append-header
func importResponseAppendHeader(self uint32, name unsafe.Pointer, nameLength uint32, value unsafe.Pointer, valueLength uint32, ret unsafe.Pointer)

//go:wasmimport sluice:filter/http@0.1.3 [method]response.remove-header
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

// The header functions of both resources have the same shapes; these lower and lift them once.
type (
	nameImport      func(self uint32, name unsafe.Pointer, nameLength uint32, ret unsafe.Pointer)
	handleImport    func(self uint32, ret unsafe.Pointer)
	nameValueImport func(self uint32, name unsafe.Pointer, nameLength uint32, value unsafe.Pointer, valueLength uint32, ret unsafe.Pointer)
	removeImport    func(self uint32, name unsafe.Pointer, nameLength uint32)
)

var requestHeaderHost = headerHostOf(importRequestHeader, importRequestHeaderAll, importRequestHeaders,
	importRequestSetHeader, importRequestAppendHeader, importRequestRemoveHeader)

var responseHeaderHost = headerHostOf(importResponseHeader, importResponseHeaderAll, importResponseHeaders,
	importResponseSetHeader, importResponseAppendHeader, importResponseRemoveHeader)

func headerHostOf(get, getAll nameImport, all handleImport, set, add nameValueImport, remove removeImport) *headerHost {
	setVia := func(call nameValueImport) func(uint32, string, []byte) error {
		return func(h uint32, name string, value []byte) error {
			call(h, stringPointer(name), uint32(len(name)), bytesPointer(value), uint32(len(value)), returnPointer())
			runtime.KeepAlive(name)
			runtime.KeepAlive(value)
			return unitResult()
		}
	}
	return &headerHost{
		get: func(h uint32, name string) ([]byte, bool) {
			get(h, stringPointer(name), uint32(len(name)), returnPointer())
			runtime.KeepAlive(name)
			return optionBytesResult()
		},
		getAll: func(h uint32, name string) [][]byte {
			getAll(h, stringPointer(name), uint32(len(name)), returnPointer())
			runtime.KeepAlive(name)
			return byteListsResult()
		},
		all: func(h uint32) []Header {
			all(h, returnPointer())
			return headersResult()
		},
		set: setVia(set),
		add: setVia(add),
		remove: func(h uint32, name string) {
			remove(h, stringPointer(name), uint32(len(name)))
			runtime.KeepAlive(name)
		},
	}
}
