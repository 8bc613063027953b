// The orders service of the shop: turns a cart into an order.
//
//	POST /orders       {"cart":"c1"} → 201 {"order":1,"total_cents":2100}
//	GET  /orders/{id}  → 200 {"order":1,"cart":"c1","total_cents":2100,"items":[...]}
//
// It reads the cart from the cart service, stores the order in its own SQL database
// (migrations/0001_orders.sql), empties the cart and publishes the order to the topic
// "orders".
package main

import (
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"strconv"

	"tessera"
)

func init() {
	mux := tessera.NewServeMux()
	mux.HandleFunc("POST /orders", createOrder)
	mux.HandleFunc("GET /orders/{id}", getOrder)
	tessera.Handle(mux)
}

// cart is what GET http://cart.internal/cart/{id} answers.
type cart struct {
	Items      json.RawMessage `json:"items"`
	TotalCents int64           `json:"total_cents"`
}

type line struct {
	Qty int64 `json:"qty"`
}

func createOrder(w tessera.ResponseWriter, r *tessera.Request) {
	var req struct {
		Cart string `json:"cart"`
	}
	if err := r.DecodeJSON(&req); err != nil || req.Cart == "" {
		tessera.Error(w, 400, `expected a JSON body {"cart":"<id>"}`)
		return
	}
	cartURL := "http://cart.internal/cart/" + url.PathEscape(req.Cart)

	resp, err := tessera.Get(cartURL)
	if err != nil {
		tessera.Error(w, 502, "cart service: "+err.Error())
		return
	}
	if resp.StatusCode != 200 {
		tessera.Error(w, 502, "cart service answered "+resp.String())
		return
	}
	var c cart
	var lines []line
	if err := resp.DecodeJSON(&c); err != nil || json.Unmarshal(c.Items, &lines) != nil {
		tessera.Error(w, 502, "cart service sent an unexpected cart")
		return
	}
	if len(lines) == 0 {
		tessera.Error(w, 400, fmt.Sprintf("cart %s is empty", req.Cart))
		return
	}
	var qty int64
	for _, l := range lines {
		qty += l.Qty
	}

	res, err := tessera.Exec("INSERT INTO orders (cart, total_cents, items) VALUES (?, ?, ?)",
		req.Cart, c.TotalCents, string(c.Items))
	if err != nil {
		tessera.Error(w, 500, err.Error())
		return
	}
	id := res.LastInsertID

	// Published only if this request ends below 500: a failure below sends nothing.
	_, err = tessera.PublishJSON("orders", struct {
		Order      int64  `json:"order"`
		Cart       string `json:"cart"`
		TotalCents int64  `json:"total_cents"`
		Items      int64  `json:"items"`
	}{id, req.Cart, c.TotalCents, qty})
	if err != nil {
		undo(id)
		tessera.Error(w, 500, err.Error())
		return
	}

	resp, err = tessera.Fetch("DELETE", cartURL, nil, nil)
	if err == nil && resp.StatusCode >= 300 {
		err = fmt.Errorf("cart service answered %s", resp)
	}
	if err != nil {
		undo(id)
		tessera.Error(w, 502, fmt.Sprintf("cannot empty cart %s: %v", req.Cart, err))
		return
	}

	tessera.JSON(w, 201, struct {
		Order      int64 `json:"order"`
		TotalCents int64 `json:"total_cents"`
	}{id, c.TotalCents})
}

// undo removes an order that could not be completed.
func undo(id int64) {
	if _, err := tessera.Exec("DELETE FROM orders WHERE id = ?", id); err != nil {
		fmt.Fprintf(os.Stderr, "cannot remove incomplete order %d: %v\n", id, err)
	}
}

func getOrder(w tessera.ResponseWriter, r *tessera.Request) {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil {
		tessera.Error(w, 404, "no such order: "+r.PathValue("id"))
		return
	}
	rows, err := tessera.Query("SELECT cart, total_cents, items FROM orders WHERE id = ?", id)
	if err != nil {
		tessera.Error(w, 500, err.Error())
		return
	}
	if rows.Len() == 0 {
		tessera.Error(w, 404, fmt.Sprintf("no such order: %d", id))
		return
	}
	var order struct {
		Order      int64           `json:"order"`
		Cart       string          `json:"cart"`
		TotalCents int64           `json:"total_cents"`
		Items      json.RawMessage `json:"items"`
	}
	var items string
	if err := rows.Scan(0, &order.Cart, &order.TotalCents, &items); err != nil {
		tessera.Error(w, 500, err.Error())
		return
	}
	order.Order, order.Items = id, json.RawMessage(items)
	tessera.JSON(w, 200, order)
}

// main never runs: init registers the handler the platform calls for each request.
func main() {}
