//go:build !wasip1

// Outside a Wasm build (`go test`, `go vet` on the developer's machine) there is no host: the
// filter's own logic can be tested natively, and any host call panics saying so.

package sluice

func noHost() { panic("sluice: host calls work only inside Sluice (build with `sluice plugin build`)") }

var requestHeaderHost, responseHeaderHost = nativeHeaderHost(), nativeHeaderHost()

func nativeHeaderHost() *headerHost {
	return &headerHost{
		get:    func(uint32, string) ([]byte, bool) { noHost(); return nil, false },
		getAll: func(uint32, string) [][]byte { noHost(); return nil },
		all:    func(uint32) []Header { noHost(); return nil },
		set:    func(uint32, string, []byte) error { noHost(); return nil },
		add:    func(uint32, string, []byte) error { noHost(); return nil },
		remove: func(uint32, string) { noHost() },
	}
}

func requestMethod(uint32) string                  { noHost(); return "" }
func requestSetMethod(uint32, string) error        { noHost(); return nil }
func requestPathWithQuery(uint32) string           { noHost(); return "" }
func requestSetPathWithQuery(uint32, string) error { noHost(); return nil }
func requestAuthority(uint32) string               { noHost(); return "" }
func requestClientIP(uint32) string                { noHost(); return "" }
func requestClientIdentity(uint32) (string, bool)  { noHost(); return "", false }
func requestID(uint32) string                      { noHost(); return "" }
func requestRoute(uint32) string                   { noHost(); return "" }
func requestSetCacheKey(uint32, string)            { noHost() }
func responseStatus(uint32) uint16                 { noHost(); return 0 }
func responseSetStatus(uint32, uint16) error       { noHost(); return nil }

func hostLog(Level, string)                                         { noHost() }
func kvGet(string) ([]byte, bool, error)                            { noHost(); return nil, false, nil }
func kvSet(string, []byte, uint64) error                            { noHost(); return nil }
func kvIncrement(string, int64, uint64) (int64, error)              { noHost(); return 0, nil }
func kvDelete(string) (bool, error)                                 { noHost(); return false, nil }
func kvCompareAndSwap(string, []byte, []byte, uint64) (bool, error) { noHost(); return false, nil }
func kvTakeTokens(string, uint64, uint64, uint64, uint64) (Bucket, error) {
	noHost()
	return Bucket{}, nil
}
func metricsCounterAdd(string, [][2]string, uint64)                { noHost() }
func metricsGaugeSet(string, [][2]string, int64)                   { noHost() }
func metricsHistogramRecord(string, [][2]string, float64)          { noHost() }
func calloutSend(string, CalloutRequest) (*CalloutResponse, error) { noHost(); return nil, nil }
func clockNowUnixMs() uint64                                       { noHost(); return 0 }
func clockMonotonicNs() uint64                                     { noHost(); return 0 }
func randomBytes(uint32) []byte                                    { noHost(); return nil }
func randomNextU64() uint64                                        { noHost(); return 0 }
func traceID() (string, bool)                                      { noHost(); return "", false }
func traceSetAttribute(string, string)                             { noHost() }
func traceAddEvent(string, [][2]string)                            { noHost() }
