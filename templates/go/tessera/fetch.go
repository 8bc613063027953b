package tessera

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"

	"tessera/internal/wit/imports/wasi_http_outgoing_handler"
	"tessera/internal/wit/imports/wasi_http_types"
	witTypes "tessera/internal/wit/types"
)

// Response is the answer to an outgoing request, read whole.
type Response struct {
	StatusCode int
	Header     Header
	Body       []byte
}

// DecodeJSON unmarshals the response's body into v.
func (r *Response) DecodeJSON(v any) error { return json.Unmarshal(r.Body, v) }

// FetchError is an outgoing request that got no response: a bad URL, a refused
// connection, a timeout. (A response with an error status is not an error.)
type FetchError struct {
	URL     string
	Message string
}

func (e *FetchError) Error() string { return "fetch " + e.URL + ": " + e.Message }

// Get sends a GET request.
func Get(url string) (*Response, error) { return Fetch("GET", url, nil, nil) }

// Post sends a POST request with a body of the given content type.
func Post(url, contentType string, body []byte) (*Response, error) {
	return Fetch("POST", url, Header{"content-type": {contentType}}, body)
}

// PostJSON sends a POST request whose body is v encoded as JSON.
func PostJSON(url string, v any) (*Response, error) {
	data, err := marshalJSON(v)
	if err != nil {
		return nil, err
	}
	return Post(url, "application/json", data)
}

// Fetch sends an HTTP request and waits for the whole response. Other services of the
// app answer at http://<service>.internal/... without leaving the process.
func Fetch(method, rawURL string, header Header, body []byte) (*Response, error) {
	fail := func(format string, args ...any) (*Response, error) {
		return nil, &FetchError{URL: rawURL, Message: fmt.Sprintf(format, args...)}
	}
	u, err := url.Parse(rawURL)
	if err != nil {
		return fail("%v", err)
	}
	var scheme wasi_http_types.Scheme
	switch u.Scheme {
	case "http":
		scheme = wasi_http_types.MakeSchemeHttp()
	case "https":
		scheme = wasi_http_types.MakeSchemeHttps()
	default:
		return fail("unsupported scheme %q", u.Scheme)
	}
	if u.Host == "" {
		return fail("no host")
	}

	req := wasi_http_types.MakeOutgoingRequest(toFields(header))
	if req.SetMethod(makeMethod(method)).IsErr() {
		req.Drop()
		return fail("invalid method %q", method)
	}
	req.SetScheme(witTypes.Some(scheme))
	req.SetAuthority(witTypes.Some(u.Host))
	target := u.EscapedPath()
	if target == "" {
		target = "/"
	}
	if u.RawQuery != "" {
		target += "?" + u.RawQuery
	}
	if req.SetPathWithQuery(witTypes.Some(target)).IsErr() {
		req.Drop()
		return fail("invalid path %q", target)
	}

	outBody := req.Body().Ok()
	sent := wasi_http_outgoing_handler.Handle(req, witTypes.None[*wasi_http_types.RequestOptions]())
	if sent.IsErr() {
		outBody.Drop()
		return fail("%s", errorCodeString(sent.Err()))
	}
	future := sent.Ok()
	defer future.Drop()

	var sendErr error
	if len(body) > 0 {
		stream := outBody.Write().Ok()
		sendErr = writeAll(stream, body)
		stream.Drop()
	}
	if fin := wasi_http_types.OutgoingBodyFinish(outBody, witTypes.None[*wasi_http_types.Fields]()); fin.IsErr() && sendErr == nil {
		sendErr = errors.New(errorCodeString(fin.Err()))
	}

	// The response (or the reason there is none, such as a denied origin) comes through
	// the future even when sending the body failed.
	pollable := future.Subscribe()
	pollable.Block()
	pollable.Drop()
	got := future.Get()
	if got.IsNone() || got.Some().IsErr() {
		return fail("no response")
	}
	if got.Some().Ok().IsErr() {
		return fail("%s", errorCodeString(got.Some().Ok().Err()))
	}
	if sendErr != nil {
		got.Some().Ok().Ok().Drop()
		return fail("sending body: %v", sendErr)
	}
	in := got.Some().Ok().Ok()
	defer in.Drop()

	resp := &Response{StatusCode: int(in.Status()), Header: Header{}}
	fields := in.Headers()
	for _, kv := range fields.Entries() {
		resp.Header.Add(kv.F0, string(kv.F1))
	}
	fields.Drop()

	consumed := in.Consume()
	if consumed.IsErr() {
		return resp, nil
	}
	inBody := consumed.Ok()
	s := inBody.Stream()
	if s.IsErr() {
		inBody.Drop()
		return resp, nil
	}
	inStream := s.Ok()
	data, rerr := readAll(inStream)
	inStream.Drop()
	wasi_http_types.IncomingBodyFinish(inBody).Drop()
	if rerr != nil {
		return fail("reading body: %v", rerr)
	}
	resp.Body = data
	return resp, nil
}

// String describes a response briefly: "404: {"error":"..."}".
func (r *Response) String() string {
	body := r.Body
	if len(body) > 200 {
		body = append(bytes.Clone(body[:200]), "..."...)
	}
	return fmt.Sprintf("%d: %s", r.StatusCode, body)
}

var errorCodeNames = [...]string{
	"DNS timeout", "DNS error", "destination not found", "destination unavailable",
	"destination IP prohibited", "destination IP unroutable", "connection refused",
	"connection terminated", "connection timeout", "connection read timeout",
	"connection write timeout", "connection limit reached", "TLS protocol error",
	"TLS certificate error", "TLS alert received", "HTTP request denied",
	"HTTP request length required", "HTTP request body size", "HTTP request method invalid",
	"HTTP request URI invalid", "HTTP request URI too long", "HTTP request header section size",
	"HTTP request header size", "HTTP request trailer section size",
	"HTTP request trailer size", "HTTP response incomplete",
	"HTTP response header section size", "HTTP response header size",
	"HTTP response body size", "HTTP response trailer section size",
	"HTTP response trailer size", "HTTP response transfer coding",
	"HTTP response content coding", "HTTP response timeout", "HTTP upgrade failed",
	"HTTP protocol error", "loop detected", "configuration error", "internal error",
}

func errorCodeString(e wasi_http_types.ErrorCode) string {
	tag := int(e.Tag())
	name := "error"
	if tag < len(errorCodeNames) {
		name = errorCodeNames[tag]
	}
	if e.Tag() == wasi_http_types.ErrorCode_InternalError {
		if msg := e.InternalError(); msg.IsSome() {
			return name + ": " + msg.Some()
		}
	}
	return name
}
