// Package tessera is the Go API of a Tessera service: it answers HTTP requests and uses
// the service's key-value store, SQL database, configuration and event publishing.
//
//	func init() {
//		mux := tessera.NewServeMux()
//		mux.HandleFunc("GET /hello/{name}", hello)
//		tessera.Handle(mux)
//	}
//
//	func hello(w tessera.ResponseWriter, r *tessera.Request) {
//		bucket, err := tessera.OpenBucket("default")
//		if err != nil {
//			tessera.Error(w, 500, err.Error())
//			return
//		}
//		n, _ := bucket.Increment("visits", 1)
//		tessera.JSON(w, 200, map[string]any{"hello": r.PathValue("name"), "visits": n})
//	}
//
//	func main() {}
//
// What is here:
//
//   - Handle, HandleFunc, ServeMux, Request, ResponseWriter, JSON, Error: answering HTTP
//     requests (net/http style; the body is read whole, the response is buffered).
//   - Fetch, Get, Post, PostJSON: outgoing HTTP requests, including
//     http://<service>.internal/... calls to the app's other services.
//   - OpenBucket: the service's key-value store.
//   - Query, Exec, Batch: the service's SQL database (SQLite dialect).
//   - Config, ConfigAll: the service's configuration and secrets.
//   - Publish, PublishJSON: events to a topic of the app.
//
// Failures are returned as errors: *KVError, *SQLError, *ConfigError, *PublishError,
// *FetchError, each with a Kind naming the WIT error case.
//
// The service is built as a WebAssembly reactor: package init functions run once when an
// instance starts, main never runs, and each request calls the registered handler.
// Goroutines work, but there is a single thread and blocking host calls block them all.
package tessera
