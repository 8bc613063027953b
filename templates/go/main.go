// The {{name}} service. Build with `tessera build`, serve with `tessera up`.
package main

import (
	"fmt"

	"tessera"
)

func init() {
	tessera.HandleFunc(hello)
}

func hello(w tessera.ResponseWriter, r *tessera.Request) {
	greeting, ok, _ := tessera.Config("greeting")
	if !ok {
		greeting = "Hello"
	}
	bucket, err := tessera.OpenBucket("default")
	if err != nil {
		tessera.Error(w, 500, err.Error())
		return
	}
	visits, err := bucket.Increment("visits", 1)
	if err != nil {
		tessera.Error(w, 500, err.Error())
		return
	}
	fmt.Fprintf(w, "%s from Go! This is {{name}}, visit %d.\n", greeting, visits)
}

// main never runs: the service is a library the platform calls for each request, and
// init above registers the handler.
func main() {}
