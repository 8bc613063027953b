// Package export_wasi_http_incoming_handler implements the component's
// wasi:http/incoming-handler export by calling the function the tessera package installs.
// (Hand-written: the generated wit_exports package calls Handle.)
package export_wasi_http_incoming_handler

import "tessera/internal/wit/imports/wasi_http_types"

// Handler is set by the tessera package when it is initialized.
var Handler func(request *wasi_http_types.IncomingRequest, responseOut *wasi_http_types.ResponseOutparam)

// Handle is called for every incoming HTTP request.
func Handle(request *wasi_http_types.IncomingRequest, responseOut *wasi_http_types.ResponseOutparam) {
	Handler(request, responseOut)
}
