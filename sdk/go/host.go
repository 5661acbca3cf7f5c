package sluice

import (
	"errors"
	"time"
)

// Level is a log severity.
type Level uint8

const (
	LevelTrace Level = iota
	LevelDebug
	LevelInfo
	LevelWarn
	LevelError
)

// Log writes a line to Sluice's log; the host adds the route, filter, tenant and request id.
func Log(level Level, message string) { hostLog(level, message) }

// Key-value errors. A failure that is neither quota nor type is a *KVError with the host's
// message.
var (
	// ErrQuotaExceeded: the tenant's key or byte quota is used up.
	ErrQuotaExceeded = errors.New("key-value quota exceeded")
	// ErrNotANumber: the stored value is not a 64-bit integer (from Increment).
	ErrNotANumber = errors.New("key-value value is not a number")
)

// KVError is another key-value failure, such as a tenant without a key-value grant.
type KVError struct{ Message string }

func (e *KVError) Error() string { return "key-value: " + e.Message }

// KVGet returns the value under key, and false when it is absent or expired. Keys are the
// tenant's own: a filter never sees another tenant's.
func KVGet(key string) ([]byte, bool, error) { return kvGet(key) }

// KVSet stores value under key, expiring after ttl (0: never).
func KVSet(key string, value []byte, ttl time.Duration) error {
	return kvSet(key, value, uint64(ttl.Milliseconds()))
}

// KVIncrement adds delta to the integer under key (absent counts as 0) and returns the new
// value. A new key expires after ttl (0: never); an existing key keeps its expiry.
func KVIncrement(key string, delta int64, ttl time.Duration) (int64, error) {
	return kvIncrement(key, delta, uint64(ttl.Milliseconds()))
}

// KVDelete removes key and reports whether it was present.
func KVDelete(key string) (bool, error) { return kvDelete(key) }

// KVCompareAndSwap stores value under key only if its current value is expected (nil: absent or
// expired), as one atomic step. It reports whether it stored; false means another writer got
// there first (read again and retry).
func KVCompareAndSwap(key string, expected, value []byte, ttl time.Duration) (bool, error) {
	return kvCompareAndSwap(key, expected, value, uint64(ttl.Milliseconds()))
}

// Bucket is a token bucket as KVTakeTokens left it.
type Bucket struct {
	// Taken says whether the tokens asked for were taken.
	Taken bool
	// Remaining is the whole tokens left.
	Remaining uint64
	// FullIn is how long until the bucket is full again.
	FullIn time.Duration
	// RetryIn is, when refused, how long until the tokens asked for are there.
	RetryIn time.Duration
}

// KVTakeTokens takes cost tokens from the token bucket under key as one atomic step in the
// store, by the store's clock: with a Redis backend every instance sharing it agrees on one
// bucket without retries. The bucket holds at most capacity tokens, starts full and refills
// rate tokens every period; a refused take changes nothing.
func KVTakeTokens(key string, capacity, rate uint64, period time.Duration, cost uint64) (Bucket, error) {
	return kvTakeTokens(key, capacity, rate, uint64(period.Milliseconds()), cost)
}

// CounterAdd adds to a counter on the admin listener's /metrics, with extra labels as
// name-value pairs (the host adds tenant and plugin).
func CounterAdd(name string, labels [][2]string, value uint64) {
	metricsCounterAdd(name, labels, value)
}

// GaugeSet sets a gauge.
func GaugeSet(name string, labels [][2]string, value int64) { metricsGaugeSet(name, labels, value) }

// HistogramRecord records an observation in a histogram.
func HistogramRecord(name string, labels [][2]string, value float64) {
	metricsHistogramRecord(name, labels, value)
}

// TraceID is the request's W3C trace id (32 lowercase hex digits), and false when the request
// is not traced (tracing off, or not sampled).
func TraceID() (string, bool) { return traceID() }

// SetSpanAttribute sets an attribute on this filter call's span in the request's trace (keys up
// to 128 bytes, not starting "sluice."; values up to 1 KiB; up to 32 per call). It does nothing
// when the request is not traced.
func SetSpanAttribute(key, value string) { traceSetAttribute(key, value) }

// AddSpanEvent adds an event with attributes (name-value pairs) to this call's span (up to 32
// per call, 16 attributes each). It does nothing when the request is not traced.
func AddSpanEvent(name string, attributes [][2]string) { traceAddEvent(name, attributes) }

// CalloutRequest is a request to an upstream the tenant was granted.
type CalloutRequest struct {
	Method        string
	PathWithQuery string
	Headers       []Header
	Body          []byte
	// Timeout: 0 for the host's default.
	Timeout time.Duration
}

// CalloutResponse is the upstream's answer, with the whole body (bounded by the host).
type CalloutResponse struct {
	Status  int
	Headers []Header
	Body    []byte
}

// CalloutError says why a callout failed: Kind is "not-granted", "unknown-upstream" or "failed".
type CalloutError struct {
	Kind    string
	Message string
}

func (e *CalloutError) Error() string { return "callout " + e.Kind + ": " + e.Message }

// Send sends request to the upstream named upstream. The filter waits; the host does not block
// a worker thread meanwhile.
func Send(upstream string, request CalloutRequest) (*CalloutResponse, error) {
	return calloutSend(upstream, request)
}

// Get is Send of a GET with no headers and the host's default timeout.
func Get(upstream, pathWithQuery string) (*CalloutResponse, error) {
	return Send(upstream, CalloutRequest{Method: "GET", PathWithQuery: pathWithQuery})
}

// Now returns the wall-clock time (from the host, in milliseconds).
func Now() time.Time { return time.UnixMilli(int64(clockNowUnixMs())) }

// MonotonicNanos returns nanoseconds on a monotonic clock, for measuring intervals.
func MonotonicNanos() uint64 { return clockMonotonicNs() }

// RandomBytes returns n bytes from the host's cryptographic generator.
func RandomBytes(n uint32) []byte { return randomBytes(n) }

// RandomUint64 returns a random 64-bit number from the host's cryptographic generator.
func RandomUint64() uint64 { return randomNextU64() }
