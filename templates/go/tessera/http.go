package tessera

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"runtime/debug"
	"strings"

	"tessera/internal/wit/exports/export_wasi_http_incoming_handler"
	_ "tessera/internal/wit/exports/wit_exports" // the component's exports
	"tessera/internal/wit/imports/wasi_http_types"
	witRuntime "tessera/internal/wit/runtime"
	witTypes "tessera/internal/wit/types"
)

// Header holds HTTP header fields. Names are case-insensitive; Tessera gives them in lower
// case, and the methods below accept any case.
type Header map[string][]string

// Get returns the first value of the named field, or "".
func (h Header) Get(name string) string {
	if v := h[strings.ToLower(name)]; len(v) > 0 {
		return v[0]
	}
	return ""
}

// Values returns every value of the named field.
func (h Header) Values(name string) []string { return h[strings.ToLower(name)] }

// Set replaces the named field's values with value.
func (h Header) Set(name, value string) { h[strings.ToLower(name)] = []string{value} }

// Add appends a value to the named field.
func (h Header) Add(name, value string) {
	k := strings.ToLower(name)
	h[k] = append(h[k], value)
}

// Del removes the named field.
func (h Header) Del(name string) { delete(h, strings.ToLower(name)) }

// Request is an incoming HTTP request, read whole before the handler runs.
type Request struct {
	Method string   // "GET", "POST", ...
	URL    *url.URL // the full path the client asked for (URL.Path) and its query (URL.Query())
	Header Header   // header fields, names in lower case
	Body   []byte   // the whole body (empty if there was none)

	pathValues map[string]string
}

// PathValue returns the value of a {name} wildcard of the ServeMux pattern that matched
// the request, or "".
func (r *Request) PathValue(name string) string { return r.pathValues[name] }

// DecodeJSON unmarshals the request's body into v.
func (r *Request) DecodeJSON(v any) error {
	if len(bytes.TrimSpace(r.Body)) == 0 {
		return fmt.Errorf("empty request body")
	}
	return json.Unmarshal(r.Body, v)
}

// ResponseWriter builds the response to a request, as in net/http: set header fields,
// then call WriteHeader (optional; 200 is the default) and Write. The response is sent
// when the handler returns. It is an io.Writer, so fmt.Fprintf(w, ...) works.
type ResponseWriter interface {
	Header() Header
	Write(data []byte) (int, error)
	WriteHeader(statusCode int)
}

// Handler answers HTTP requests.
type Handler interface {
	ServeHTTP(w ResponseWriter, r *Request)
}

// HandlerFunc lets an ordinary function be a Handler.
type HandlerFunc func(w ResponseWriter, r *Request)

// ServeHTTP calls f(w, r).
func (f HandlerFunc) ServeHTTP(w ResponseWriter, r *Request) { f(w, r) }

var handler Handler

// Handle sets the handler of every request the service receives. Call it from an init
// function: a Tessera service's main function never runs.
func Handle(h Handler) { handler = h }

// HandleFunc sets a function as the handler of every request; see Handle.
func HandleFunc(f func(w ResponseWriter, r *Request)) { handler = HandlerFunc(f) }

// JSON answers with status and v encoded as JSON (content-type application/json).
func JSON(w ResponseWriter, status int, v any) {
	data, err := marshalJSON(v)
	if err != nil {
		Error(w, 500, "cannot encode response: "+err.Error())
		return
	}
	w.Header().Set("content-type", "application/json")
	w.WriteHeader(status)
	w.Write(data)
}

// Error answers with status and the JSON body {"error": message}.
func Error(w ResponseWriter, status int, message string) {
	data, _ := marshalJSON(map[string]string{"error": message})
	w.Header().Set("content-type", "application/json")
	w.WriteHeader(status)
	w.Write(data)
}

// marshalJSON is json.Marshal without escaping <, > and & for HTML.
func marshalJSON(v any) ([]byte, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\n")), nil
}

// response is the ResponseWriter handlers get: everything is buffered until they return.
type response struct {
	header Header
	status int
	body   bytes.Buffer
}

func (w *response) Header() Header { return w.header }

func (w *response) WriteHeader(status int) {
	if w.status == 0 {
		w.status = status
	}
}

func (w *response) Write(data []byte) (int, error) {
	if w.status == 0 {
		w.status = 200
	}
	return w.body.Write(data)
}

func init() {
	export_wasi_http_incoming_handler.Handler = serve
}

// serve is the component's wasi:http/incoming-handler.
func serve(in *wasi_http_types.IncomingRequest, out *wasi_http_types.ResponseOutparam) {
	// Memory the host filled in for results stays pinned until this is called; every
	// result has been copied or referenced by Go values by the time the request is done.
	defer witRuntime.Unpin()

	w := &response{header: Header{}}
	r, err := readRequest(in)
	if err != nil {
		Error(w, 400, "cannot read request: "+err.Error())
	} else if handler == nil {
		Error(w, 500, "no handler: call tessera.Handle or tessera.HandleFunc in an init function")
	} else {
		runHandler(w, r)
	}
	if err := sendResponse(out, w); err != nil {
		fmt.Fprintln(os.Stderr, "tessera: cannot send response:", err)
	}
}

func runHandler(w *response, r *Request) {
	defer func() {
		if p := recover(); p != nil {
			fmt.Fprintf(os.Stderr, "panic serving %s %s: %v\n%s", r.Method, r.URL.Path, p, debug.Stack())
			*w = response{header: Header{}}
			Error(w, 500, "internal error")
		}
	}()
	handler.ServeHTTP(w, r)
}

func readRequest(in *wasi_http_types.IncomingRequest) (*Request, error) {
	defer in.Drop()
	r := &Request{Method: methodString(in.Method()), Header: Header{}}

	target := "/"
	if p := in.PathWithQuery(); p.IsSome() {
		target = p.Some()
	}
	u, err := url.ParseRequestURI(target)
	if err != nil {
		path, query, _ := strings.Cut(target, "?")
		u = &url.URL{Path: path, RawQuery: query}
	}
	if a := in.Authority(); a.IsSome() {
		u.Host = a.Some()
	}
	r.URL = u

	fields := in.Headers()
	for _, kv := range fields.Entries() {
		r.Header.Add(kv.F0, string(kv.F1))
	}
	fields.Drop()

	consumed := in.Consume()
	if consumed.IsErr() {
		return r, nil
	}
	body := consumed.Ok()
	s := body.Stream()
	if s.IsErr() {
		body.Drop()
		return r, nil
	}
	stream := s.Ok()
	r.Body, err = readAll(stream)
	stream.Drop()
	wasi_http_types.IncomingBodyFinish(body).Drop()
	return r, err
}

func sendResponse(out *wasi_http_types.ResponseOutparam, w *response) error {
	status := w.status
	if status == 0 {
		status = 200
	}
	if w.body.Len() > 0 && w.header.Get("content-type") == "" {
		w.header.Set("content-type", "text/plain; charset=utf-8")
	}
	resp := wasi_http_types.MakeOutgoingResponse(toFields(w.header))
	if resp.SetStatusCode(uint16(status)).IsErr() {
		resp.SetStatusCode(500)
	}
	body := resp.Body().Ok()
	wasi_http_types.ResponseOutparamSet(out, witTypes.Ok[*wasi_http_types.OutgoingResponse, wasi_http_types.ErrorCode](resp))

	stream := body.Write().Ok()
	err := writeAll(stream, w.body.Bytes())
	stream.Drop()
	if fin := wasi_http_types.OutgoingBodyFinish(body, witTypes.None[*wasi_http_types.Fields]()); fin.IsErr() && err == nil {
		err = fmt.Errorf("%s", errorCodeString(fin.Err()))
	}
	return err
}

// toFields converts a Header, skipping (and logging) fields the host refuses, such as
// connection or transfer-encoding.
func toFields(h Header) *wasi_http_types.Fields {
	fields := wasi_http_types.MakeFields()
	for name, values := range h {
		for _, v := range values {
			if res := fields.Append(name, []byte(v)); res.IsErr() {
				fmt.Fprintf(os.Stderr, "tessera: header %q refused\n", name)
			}
		}
	}
	return fields
}

func methodString(m wasi_http_types.Method) string {
	switch m.Tag() {
	case wasi_http_types.Method_Get:
		return "GET"
	case wasi_http_types.Method_Head:
		return "HEAD"
	case wasi_http_types.Method_Post:
		return "POST"
	case wasi_http_types.Method_Put:
		return "PUT"
	case wasi_http_types.Method_Delete:
		return "DELETE"
	case wasi_http_types.Method_Connect:
		return "CONNECT"
	case wasi_http_types.Method_Options:
		return "OPTIONS"
	case wasi_http_types.Method_Trace:
		return "TRACE"
	case wasi_http_types.Method_Patch:
		return "PATCH"
	default:
		return m.Other()
	}
}

func makeMethod(method string) wasi_http_types.Method {
	switch strings.ToUpper(method) {
	case "", "GET":
		return wasi_http_types.MakeMethodGet()
	case "HEAD":
		return wasi_http_types.MakeMethodHead()
	case "POST":
		return wasi_http_types.MakeMethodPost()
	case "PUT":
		return wasi_http_types.MakeMethodPut()
	case "DELETE":
		return wasi_http_types.MakeMethodDelete()
	case "CONNECT":
		return wasi_http_types.MakeMethodConnect()
	case "OPTIONS":
		return wasi_http_types.MakeMethodOptions()
	case "TRACE":
		return wasi_http_types.MakeMethodTrace()
	case "PATCH":
		return wasi_http_types.MakeMethodPatch()
	default:
		return wasi_http_types.MakeMethodOther(method)
	}
}
