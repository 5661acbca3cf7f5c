//go:build wasip1

// The host's capability interfaces (log, kv, metrics, callout, clock, random, trace), lowered and
// lifted by hand.

package sluice

import (
	"runtime"
	"time"
	"unsafe"
)

//go:wasmimport sluice:filter/log@0.1.3 log
func importLog(level uint32, message unsafe.Pointer, length uint32)

//go:wasmimport sluice:filter/kv@0.1.3 get
func importKVGet(key unsafe.Pointer, keyLength uint32, ret unsafe.Pointer)

//go:wasmimport sluice:filter/kv@0.1.3 set
func importKVSet(key unsafe.Pointer, keyLength uint32, value unsafe.Pointer, valueLength uint32, ttl uint64, ret unsafe.Pointer)

//go:wasmimport sluice:filter/kv@0.1.3 increment
func importKVIncrement(key unsafe.Pointer, keyLength uint32, delta int64, ttl uint64, ret unsafe.Pointer)

//go:wasmimport sluice:filter/kv@0.1.3 delete
func importKVDelete(key unsafe.Pointer, keyLength uint32, ret unsafe.Pointer)

//go:wasmimport sluice:filter/kv@0.1.3 compare-and-swap
func importKVCompareAndSwap(key unsafe.Pointer, keyLength uint32, hasExpected uint32, expected unsafe.Pointer, expectedLength uint32, value unsafe.Pointer, valueLength uint32, ttl uint64, ret unsafe.Pointer)

//go:wasmimport sluice:filter/kv@0.1.3 take-tokens
func importKVTakeTokens(key unsafe.Pointer, keyLength uint32, capacity uint64, rate uint64, periodMs uint64, cost uint64, ret unsafe.Pointer)

//go:wasmimport sluice:filter/metrics@0.1.3 counter-add
func importCounterAdd(name unsafe.Pointer, nameLength uint32, labels unsafe.Pointer, labelCount uint32, value uint64)

//go:wasmimport sluice:filter/metrics@0.1.3 gauge-set
func importGaugeSet(name unsafe.Pointer, nameLength uint32, labels unsafe.Pointer, labelCount uint32, value int64)

//go:wasmimport sluice:filter/metrics@0.1.3 histogram-record
func importHistogramRecord(name unsafe.Pointer, nameLength uint32, labels unsafe.Pointer, labelCount uint32, value float64)

//go:wasmimport sluice:filter/callout@0.1.3 send
func importCalloutSend(upstream unsafe.Pointer, upstreamLength uint32, method unsafe.Pointer, methodLength uint32, path unsafe.Pointer, pathLength uint32, headers unsafe.Pointer, headerCount uint32, body unsafe.Pointer, bodyLength uint32, timeoutMs uint32, ret unsafe.Pointer)

//go:wasmimport sluice:filter/clock@0.1.3 now-unix-ms
func importNowUnixMs() uint64

//go:wasmimport sluice:filter/clock@0.1.3 monotonic-ns
func importMonotonicNs() uint64

//go:wasmimport sluice:filter/random@0.1.3 bytes
func importRandomBytes(length uint32, ret unsafe.Pointer)

//go:wasmimport sluice:filter/random@0.1.3 next-u64
func importRandomNextU64() uint64

//go:wasmimport sluice:filter/trace@0.1.3 trace-id
func importTraceID(ret unsafe.Pointer)

//go:wasmimport sluice:filter/trace@0.1.3 set-attribute
func importTraceSetAttribute(key unsafe.Pointer, keyLength uint32, value unsafe.Pointer, valueLength uint32)

//go:wasmimport sluice:filter/trace@0.1.3 add-event
func importTraceAddEvent(name unsafe.Pointer, nameLength uint32, attributes unsafe.Pointer, attributeCount uint32)

func hostLog(level Level, message string) {
	importLog(uint32(level), stringPointer(message), uint32(len(message)))
	runtime.KeepAlive(message)
}

// kvError lifts a `kv-error` variant at `offset` of the return area.
func kvError(offset uintptr) error {
	switch areaU8(offset) {
	case 0:
		return ErrQuotaExceeded
	case 1:
		return ErrNotANumber
	default:
		message := liftString(areaU32(offset+4), areaU32(offset+8))
		release()
		return &KVError{Message: message}
	}
}

func kvGet(key string) ([]byte, bool, error) {
	importKVGet(stringPointer(key), uint32(len(key)), returnPointer())
	runtime.KeepAlive(key)
	if areaU8(0) != 0 {
		return nil, false, kvError(4)
	}
	if areaU8(4) == 0 {
		return nil, false, nil
	}
	value := liftBytes(areaU32(8), areaU32(12))
	release()
	return value, true, nil
}

func kvSet(key string, value []byte, ttlMs uint64) error {
	importKVSet(stringPointer(key), uint32(len(key)), bytesPointer(value), uint32(len(value)), ttlMs, returnPointer())
	runtime.KeepAlive(key)
	runtime.KeepAlive(value)
	if areaU8(0) != 0 {
		return kvError(4)
	}
	return nil
}

func kvIncrement(key string, delta int64, ttlMs uint64) (int64, error) {
	importKVIncrement(stringPointer(key), uint32(len(key)), delta, ttlMs, returnPointer())
	runtime.KeepAlive(key)
	if areaU8(0) != 0 {
		return 0, kvError(8)
	}
	return int64(areaU64(8)), nil
}

func kvDelete(key string) (bool, error) {
	importKVDelete(stringPointer(key), uint32(len(key)), returnPointer())
	runtime.KeepAlive(key)
	if areaU8(0) != 0 {
		return false, kvError(4)
	}
	return areaU8(4) != 0, nil
}

func kvCompareAndSwap(key string, expected, value []byte, ttlMs uint64) (bool, error) {
	hasExpected := uint32(0)
	if expected != nil {
		hasExpected = 1
	}
	importKVCompareAndSwap(stringPointer(key), uint32(len(key)), hasExpected, bytesPointer(expected), uint32(len(expected)),
		bytesPointer(value), uint32(len(value)), ttlMs, returnPointer())
	runtime.KeepAlive(key)
	runtime.KeepAlive(expected)
	runtime.KeepAlive(value)
	if areaU8(0) != 0 {
		return false, kvError(4)
	}
	return areaU8(4) != 0, nil
}

// kvTakeTokens lifts `result<bucket, kv-error>`: the bucket record (8-aligned) at 8.
func kvTakeTokens(key string, capacity, rate, periodMs, cost uint64) (Bucket, error) {
	importKVTakeTokens(stringPointer(key), uint32(len(key)), capacity, rate, periodMs, cost, returnPointer())
	runtime.KeepAlive(key)
	if areaU8(0) != 0 {
		return Bucket{}, kvError(8)
	}
	return Bucket{
		Taken:     areaU8(8) != 0,
		Remaining: areaU64(16),
		FullIn:    time.Duration(areaU64(24)) * time.Millisecond,
		RetryIn:   time.Duration(areaU64(32)) * time.Millisecond,
	}, nil
}

func traceID() (string, bool) {
	importTraceID(returnPointer())
	return optionStringResult()
}

func traceSetAttribute(key, value string) {
	importTraceSetAttribute(stringPointer(key), uint32(len(key)), stringPointer(value), uint32(len(value)))
	runtime.KeepAlive(key)
	runtime.KeepAlive(value)
}

func traceAddEvent(name string, attributes [][2]string) {
	flat := lowerPairs(attributes)
	importTraceAddEvent(stringPointer(name), uint32(len(name)), flatPointer(flat), uint32(len(attributes)))
	runtime.KeepAlive(name)
	runtime.KeepAlive(attributes)
	runtime.KeepAlive(flat)
}

func metricsCounterAdd(name string, labels [][2]string, value uint64) {
	flat := lowerPairs(labels)
	importCounterAdd(stringPointer(name), uint32(len(name)), flatPointer(flat), uint32(len(labels)), value)
	runtime.KeepAlive(name)
	runtime.KeepAlive(labels)
	runtime.KeepAlive(flat)
}

func metricsGaugeSet(name string, labels [][2]string, value int64) {
	flat := lowerPairs(labels)
	importGaugeSet(stringPointer(name), uint32(len(name)), flatPointer(flat), uint32(len(labels)), value)
	runtime.KeepAlive(name)
	runtime.KeepAlive(labels)
	runtime.KeepAlive(flat)
}

func metricsHistogramRecord(name string, labels [][2]string, value float64) {
	flat := lowerPairs(labels)
	importHistogramRecord(stringPointer(name), uint32(len(name)), flatPointer(flat), uint32(len(labels)), value)
	runtime.KeepAlive(name)
	runtime.KeepAlive(labels)
	runtime.KeepAlive(flat)
}

func calloutSend(upstream string, request CalloutRequest) (*CalloutResponse, error) {
	headers := lowerHeaders(request.Headers)
	importCalloutSend(stringPointer(upstream), uint32(len(upstream)),
		stringPointer(request.Method), uint32(len(request.Method)),
		stringPointer(request.PathWithQuery), uint32(len(request.PathWithQuery)),
		flatPointer(headers), uint32(len(request.Headers)),
		bytesPointer(request.Body), uint32(len(request.Body)),
		uint32(request.Timeout.Milliseconds()), returnPointer())
	runtime.KeepAlive(upstream)
	runtime.KeepAlive(request)
	runtime.KeepAlive(headers)
	if areaU8(0) != 0 {
		kinds := [...]string{"not-granted", "unknown-upstream", "failed"}
		kind := "failed"
		if k := areaU8(4); int(k) < len(kinds) {
			kind = kinds[k]
		}
		message := liftString(areaU32(8), areaU32(12))
		release()
		return nil, &CalloutError{Kind: kind, Message: message}
	}
	response := &CalloutResponse{
		Status:  int(areaU16(4)),
		Headers: liftHeaders(areaU32(8), areaU32(12)),
		Body:    liftBytes(areaU32(16), areaU32(20)),
	}
	release()
	return response, nil
}

func clockNowUnixMs() uint64   { return importNowUnixMs() }
func clockMonotonicNs() uint64 { return importMonotonicNs() }

func randomBytes(n uint32) []byte {
	importRandomBytes(n, returnPointer())
	value := liftBytes(areaU32(0), areaU32(4))
	release()
	return value
}

func randomNextU64() uint64 { return importRandomNextU64() }
