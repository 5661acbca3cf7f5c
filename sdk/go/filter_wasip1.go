//go:build wasip1

// The `sluice:filter/filter` exports: the host's calls, lifted, handed to the registered filter,
// and its answers lowered into the return area.

package sluice

import "unsafe"

// A borrowed handle passed into an export is the filter's to drop before it returns (the
// component model traps a call that leaves borrows behind).

//go:wasmimport sluice:filter/http@0.1.3 [resource-drop]request
func dropRequest(handle uint32)

//go:wasmimport sluice:filter/http@0.1.3 [resource-drop]response
func dropResponse(handle uint32)

//go:wasmexport sluice:filter/filter@0.1.3#configure
func exportConfigure(config unsafe.Pointer, length uint32) unsafe.Pointer {
	raw := liftBytes(address(config), length)
	release()
	keepForHost = nil
	phases, err := configure(raw)
	if err != nil {
		message := err.Error()
		keepForHost = append(keepForHost, message)
		setAreaU8(0, 1)
		setAreaU32(4, address(stringPointer(message)))
		setAreaU32(8, uint32(len(message)))
	} else {
		setAreaU8(0, 0)
		setAreaU8(4, uint8(phases))
	}
	collectIfGrown()
	return returnPointer()
}

//go:wasmexport sluice:filter/filter@0.1.3#on-request
func exportOnRequest(req uint32) unsafe.Pointer {
	keepForHost = nil
	decision := Continue()
	if filter, ok := active.(RequestFilter); ok {
		decision = filter.OnRequest(newRequest(req))
	}
	dropRequest(req)
	lowerDecision(decision)
	collectIfGrown()
	return returnPointer()
}

//go:wasmexport sluice:filter/filter@0.1.3#on-request-body
func exportOnRequestBody(req uint32, body unsafe.Pointer, length uint32, endOfStream uint32) unsafe.Pointer {
	chunk := liftBytes(address(body), length)
	release()
	keepForHost = nil
	action := Pass()
	if filter, ok := active.(RequestBodyFilter); ok {
		action = filter.OnRequestBody(newRequest(req), chunk, endOfStream != 0)
	}
	dropRequest(req)
	lowerBodyAction(action)
	collectIfGrown()
	return returnPointer()
}

//go:wasmexport sluice:filter/filter@0.1.3#on-response
func exportOnResponse(req, resp uint32) unsafe.Pointer {
	keepForHost = nil
	decision := Continue()
	if filter, ok := active.(ResponseFilter); ok {
		decision = filter.OnResponse(newRequest(req), newResponse(resp))
	}
	dropRequest(req)
	dropResponse(resp)
	lowerDecision(decision)
	collectIfGrown()
	return returnPointer()
}

//go:wasmexport sluice:filter/filter@0.1.3#on-response-body
func exportOnResponseBody(req, resp uint32, body unsafe.Pointer, length uint32, endOfStream uint32) unsafe.Pointer {
	chunk := liftBytes(address(body), length)
	release()
	keepForHost = nil
	action := Pass()
	if filter, ok := active.(ResponseBodyFilter); ok {
		action = filter.OnResponseBody(newRequest(req), newResponse(resp), chunk, endOfStream != 0)
	}
	dropRequest(req)
	dropResponse(resp)
	lowerBodyAction(action)
	collectIfGrown()
	return returnPointer()
}

// lowerDecision writes a `decision` variant: case 0 continue, case 1 respond(local-response)
// with its payload at offset 4.
func lowerDecision(decision Decision) {
	if decision.respond == nil {
		setAreaU8(0, 0)
		return
	}
	setAreaU8(0, 1)
	lowerLocalResponse(decision.respond)
}

// lowerBodyAction writes a `body-action` variant: case 0 pass, 1 replace(list<u8>),
// 2 respond(local-response), payload at offset 4.
func lowerBodyAction(action BodyAction) {
	switch {
	case action.kind == bodyReplace:
		keepForHost = append(keepForHost, action.replace)
		setAreaU8(0, 1)
		setAreaU32(4, address(bytesPointer(action.replace)))
		setAreaU32(8, uint32(len(action.replace)))
	case action.kind == bodyRespond && action.respond != nil:
		setAreaU8(0, 2)
		lowerLocalResponse(action.respond)
	default:
		setAreaU8(0, 0)
	}
}

// lowerLocalResponse writes a `local-response` record at offset 4: status (u16), headers
// (list at 8), body (list at 16).
func lowerLocalResponse(resp *LocalResponse) {
	headers := lowerHeaders(resp.Headers)
	keepForHost = append(keepForHost, resp, headers)
	setAreaU16(4, uint16(resp.Status))
	setAreaU32(8, address(flatPointer(headers)))
	setAreaU32(12, uint32(len(resp.Headers)))
	setAreaU32(16, address(bytesPointer(resp.Body)))
	setAreaU32(20, uint32(len(resp.Body)))
}
