//go:build wasip1

// The canonical ABI, written by hand: how values cross between the host and a Go filter's linear
// memory. The host writes a call's arguments and an import's results into memory it asks for
// with `cabi_realloc`; results the filter returns are read by the host from a return area.
//
// Go's garbage collector does not move objects, but it does free them: memory handed to the host
// is kept reachable (pinned) until the Go side holds it through ordinary slices and strings.

package sluice

import (
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"unsafe"
)

// runtimeStarted is set by this package's init, once Go's runtime can allocate.
var runtimeStarted bool

func init() {
	runtimeStarted = true
	adapterArenaInUse = &adapterArena
	// The host calls cabi_realloc in the middle of its own calls, where the component model
	// forbids calling any import, and Go's collector and scavenger ask WASI for the time when an
	// allocation starts a cycle or grows the heap. So allocation never starts a cycle: the
	// collector runs at the end of export calls instead (collectIfGrown), outside the host's.
	debug.SetGCPercent(-1)
	runtime.MemProfileRate = 0
}

// The collector's pacing, done by hand: collect once the heap's objects have doubled since the
// last collection (at least collectionFloor more), like GOGC=100.
const collectionFloor = 4 << 20

var (
	heapSample    = []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	heapAfterLast uint64
)

// collectIfGrown runs the collector when the heap has grown enough since the last run. Called at
// the end of every export call.
func collectIfGrown() {
	metrics.Read(heapSample)
	if heapSample[0].Value.Kind() != metrics.KindUint64 {
		return
	}
	now := heapSample[0].Value.Uint64()
	if now < heapAfterLast*2 || now < heapAfterLast+collectionFloor {
		return
	}
	runtime.GC()
	metrics.Read(heapSample)
	heapAfterLast = heapSample[0].Value.Uint64()
}

// adapterArena is the memory the WASI adapter allocates its state from. The adapter makes its
// first allocation while Go's runtime is still starting (its start-up asks WASI for the time and
// for random bytes), when no Go function can be entered, and its memory must never be Go heap
// that the collector could reuse. So `sluice plugin build` adds a small allocator in plain Wasm,
// exported as `cabi_realloc_adapter`, that hands out this array: it finds the array by the marker
// it starts with, followed by the array's size (little-endian). The marker is overwritten by the
// first allocation; it is only read when the filter is built.
var adapterArena = [adapterArenaSize]byte{
	's', 'l', 'u', 'i', 'c', 'e', ':', 'w', 'a', 's', 'i', '-', 'a', 'd', 'a', 'p', 't', 'e', 'r', '-',
	'a', 'r', 'e', 'n', 'a', ':', 'v', '1',
	adapterArenaSize & 0xff, adapterArenaSize >> 8 & 0xff, adapterArenaSize >> 16 & 0xff, adapterArenaSize >> 24,
}

// adapterArenaSize covers the adapter's state and the 64 KiB stack it allocates for itself.
const adapterArenaSize = 160 << 10

// adapterArenaInUse keeps the arena linked into the module: nothing in Go reads it.
var adapterArenaInUse *[adapterArenaSize]byte

// pinned keeps the buffers handed out by cabi_realloc reachable until the values written into
// them have been taken up by Go slices and strings (see release).
var pinned [][]byte

//go:wasmexport cabi_realloc
func cabiRealloc(old unsafe.Pointer, oldSize, align, newSize uint32) unsafe.Pointer {
	if !runtimeStarted {
		panic("sluice: cabi_realloc called before Go's runtime started")
	}
	if newSize == 0 {
		return pointerAt(align) // never written: nothing to write
	}
	buf := make([]byte, newSize+align)
	pinned = append(pinned, buf)
	p := alignedStart(buf, align)
	copyOld(p, old, oldSize)
	return p
}

// release lets go of the buffers the host filled, once their contents are referenced by Go
// values (which keep them alive on their own) or copied.
func release() {
	clear(pinned)
	pinned = pinned[:0]
}

func alignedStart(buf []byte, align uint32) unsafe.Pointer {
	base := uintptr(unsafe.Pointer(&buf[0]))
	offset := (base+uintptr(align)-1)&^(uintptr(align)-1) - base
	return unsafe.Pointer(&buf[offset])
}

func copyOld(to, from unsafe.Pointer, size uint32) {
	if from != nil && size > 0 {
		copy(unsafe.Slice((*byte)(to), size), unsafe.Slice((*byte)(from), size))
	}
}

// returnArea is where imports write results that do not fit in one core value, and where exports
// leave theirs for the host. It is static: the host reads it after the Go function returned.
// Sized and aligned for the largest result in the world (a callout response in a result).
var returnArea [8]uint64

func returnPointer() unsafe.Pointer { return unsafe.Pointer(&returnArea[0]) }

// Little-endian reads and writes at byte offsets of the return area.
func areaU8(offset uintptr) uint8         { return *(*uint8)(unsafe.Add(returnPointer(), offset)) }
func areaU16(offset uintptr) uint16       { return *(*uint16)(unsafe.Add(returnPointer(), offset)) }
func areaU32(offset uintptr) uint32       { return *(*uint32)(unsafe.Add(returnPointer(), offset)) }
func areaU64(offset uintptr) uint64       { return *(*uint64)(unsafe.Add(returnPointer(), offset)) }
func setAreaU8(offset uintptr, v uint8)   { *(*uint8)(unsafe.Add(returnPointer(), offset)) = v }
func setAreaU16(offset uintptr, v uint16) { *(*uint16)(unsafe.Add(returnPointer(), offset)) = v }
func setAreaU32(offset uintptr, v uint32) { *(*uint32)(unsafe.Add(returnPointer(), offset)) = v }

// pointerAt turns an address the host wrote into a pointer. Wasm addresses are 32 bits; Go's
// pointers on wasm are 64 bits wide with the same value.
func pointerAt(address uint32) unsafe.Pointer {
	return unsafe.Add(unsafe.Pointer(nil), uintptr(address))
}

// liftBytes views `len` bytes the host wrote at `address` as a slice (no copy).
func liftBytes(address, length uint32) []byte {
	if length == 0 {
		return []byte{}
	}
	return unsafe.Slice((*byte)(pointerAt(address)), length)
}

// liftString views a string the host wrote (no copy).
func liftString(address, length uint32) string {
	if length == 0 {
		return ""
	}
	return unsafe.String((*byte)(pointerAt(address)), length)
}

// liftByteLists reads a list<list<u8>> the host wrote: `count` (address, length) pairs.
func liftByteLists(address, count uint32) [][]byte {
	lists := make([][]byte, count)
	pairs := unsafe.Slice((*[2]uint32)(pointerAt(address)), count)
	for i, pair := range pairs {
		lists[i] = liftBytes(pair[0], pair[1])
	}
	return lists
}

// liftHeaders reads a list<tuple<string, list<u8>>>: `count` (name, value) entries of 16 bytes.
func liftHeaders(address, count uint32) []Header {
	headers := make([]Header, count)
	entries := unsafe.Slice((*[4]uint32)(pointerAt(address)), count)
	for i, entry := range entries {
		headers[i] = Header{Name: liftString(entry[0], entry[1]), Value: liftBytes(entry[2], entry[3])}
	}
	return headers
}

// stringPointer and bytesPointer give the address of a value's first byte, for passing to the
// host (nil for empty values: the host reads nothing).
func stringPointer(s string) unsafe.Pointer { return unsafe.Pointer(unsafe.StringData(s)) }
func bytesPointer(b []byte) unsafe.Pointer  { return unsafe.Pointer(unsafe.SliceData(b)) }

// lowerHeaders lays out headers as the canonical ABI's list<tuple<string, list<u8>>>. The
// returned slice must stay reachable while the host reads it; the strings and slices it points to
// are kept alive by `headers`.
func lowerHeaders(headers []Header) []uint32 {
	flat := make([]uint32, 0, 4*len(headers))
	for _, header := range headers {
		flat = append(flat,
			address(stringPointer(header.Name)), uint32(len(header.Name)),
			address(bytesPointer(header.Value)), uint32(len(header.Value)))
	}
	return flat
}

// lowerPairs lays out a list<tuple<string, string>>.
func lowerPairs(pairs [][2]string) []uint32 {
	flat := make([]uint32, 0, 4*len(pairs))
	for _, pair := range pairs {
		flat = append(flat,
			address(stringPointer(pair[0])), uint32(len(pair[0])),
			address(stringPointer(pair[1])), uint32(len(pair[1])))
	}
	return flat
}

func address(p unsafe.Pointer) uint32 { return uint32(uintptr(p)) }

// keepForHost holds what an export returned until the host has read it (the next export call
// replaces it): the return area stores addresses as numbers, which the collector does not follow.
var keepForHost []any

func flatPointer(flat []uint32) unsafe.Pointer { return unsafe.Pointer(unsafe.SliceData(flat)) }
