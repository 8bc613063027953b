package tessera

import (
	"sort"
	"strings"
)

// ServeMux routes requests by method and path, with patterns written as in Go's
// net/http ServeMux:
//
//	mux := tessera.NewServeMux()
//	mux.HandleFunc("GET /orders/{id}", getOrder)    // r.PathValue("id")
//	mux.HandleFunc("POST /orders", createOrder)
//	mux.HandleFunc("/files/{path...}", files)        // any method, rest of the path
//	tessera.Handle(mux)
//
// A pattern matches the whole path, segment by segment; a trailing slash in the request
// path is ignored. "GET" also matches HEAD. A path that no pattern matches gets 404, a
// path matched only for other methods gets 405 with an Allow header; both answer JSON
// {"error": ...}.
type ServeMux struct {
	routes []route
}

type route struct {
	method   string
	segments []string
	handler  Handler
}

// NewServeMux returns an empty ServeMux.
func NewServeMux() *ServeMux { return &ServeMux{} }

// Handle registers the handler for pattern: "[METHOD ]/path/{name}/{rest...}".
func (m *ServeMux) Handle(pattern string, h Handler) {
	method, path, found := strings.Cut(strings.TrimSpace(pattern), " ")
	if !found {
		method, path = "", method
	}
	path = strings.TrimSpace(path)
	if !strings.HasPrefix(path, "/") {
		panic("tessera: pattern path must start with /: " + pattern)
	}
	m.routes = append(m.routes, route{method: strings.ToUpper(method), segments: split(path), handler: h})
}

// HandleFunc registers a function as the handler for pattern.
func (m *ServeMux) HandleFunc(pattern string, f func(w ResponseWriter, r *Request)) {
	m.Handle(pattern, HandlerFunc(f))
}

// ServeHTTP dispatches the request to the first route that matches it.
func (m *ServeMux) ServeHTTP(w ResponseWriter, r *Request) {
	segments := split(r.URL.Path)
	var allowed []string
	for _, rt := range m.routes {
		values, ok := rt.match(segments)
		if !ok {
			continue
		}
		if rt.method == "" || rt.method == r.Method || (rt.method == "GET" && r.Method == "HEAD") {
			r.pathValues = values
			rt.handler.ServeHTTP(w, r)
			return
		}
		allowed = append(allowed, rt.method)
	}
	if len(allowed) > 0 {
		sort.Strings(allowed)
		w.Header().Set("allow", strings.Join(allowed, ", "))
		Error(w, 405, "method not allowed: "+r.Method+" "+r.URL.Path)
		return
	}
	Error(w, 404, "not found: "+r.URL.Path)
}

func (rt route) match(segments []string) (map[string]string, bool) {
	values := map[string]string{}
	for i, p := range rt.segments {
		if strings.HasPrefix(p, "{") && strings.HasSuffix(p, "...}") {
			values[p[1:len(p)-4]] = strings.Join(segments[i:], "/")
			return values, true
		}
		if i >= len(segments) {
			return nil, false
		}
		if strings.HasPrefix(p, "{") && strings.HasSuffix(p, "}") {
			values[p[1:len(p)-1]] = segments[i]
		} else if p != segments[i] {
			return nil, false
		}
	}
	return values, len(segments) == len(rt.segments)
}

// split turns "/a/b/" into ["a", "b"] and "/" into [].
func split(path string) []string {
	path = strings.Trim(path, "/")
	if path == "" {
		return nil
	}
	return strings.Split(path, "/")
}
