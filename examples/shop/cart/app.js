// cart: shopping carts, kept in the key-value store as `cart:{id}` → JSON.
//
//   GET    /cart/{id}        the cart with its lines and total (unknown carts are empty)
//   POST   /cart/{id}/items  {"product": "tea", "qty": 2}: adds a product, priced by catalog
//   DELETE /cart/{id}        empties the cart (204)
//
// Products and prices come from the catalog service (`http://catalog.internal`).
import { serve, Router, HttpError, kv, call } from './tessera.js';

const carts = kv.open('default');
const key = (id) => `cart:${id}`;

// What GET answers: the stored lines plus their total.
function view(id, items) {
  const total = items.reduce((sum, line) => sum + line.qty * line.price_cents, 0);
  return { cart: id, items, total_cents: total };
}

async function catalogProduct(id) {
  const res = await call('catalog', `/catalog/${encodeURIComponent(id)}`);
  if (res.status === 404) throw new HttpError(404, `no such product: ${id}`);
  if (!res.ok) throw new HttpError(502, `catalog answered ${res.status} for ${id}`);
  return res.json();
}

async function readItem(request) {
  let body;
  try {
    body = await request.json();
  } catch {
    throw new HttpError(400, 'body must be JSON like {"product": "tea", "qty": 2}');
  }
  const { product, qty } = body ?? {};
  if (typeof product !== 'string' || product === '') throw new HttpError(400, 'product must be a non-empty string');
  if (!Number.isSafeInteger(qty) || qty <= 0) throw new HttpError(400, 'qty must be a positive integer');
  return { product, qty };
}

const app = new Router();

app.get('/cart/:id', (request, { params }) => {
  const cart = carts.getJson(key(params.id));
  return view(params.id, cart?.items ?? []);
});

app.post('/cart/:id/items', async (request, { params }) => {
  const { product: id, qty } = await readItem(request);
  const { name, price_cents } = await catalogProduct(id);
  // A compare-and-swap update: two requests adding to one cart never lose a line.
  const cart = carts.updateJson(key(params.id), (cart) => {
    const items = cart?.items ?? [];
    const line = items.find((l) => l.product === id);
    if (line) Object.assign(line, { name, price_cents, qty: line.qty + qty });
    else items.push({ product: id, name, qty, price_cents });
    return { items };
  });
  return view(params.id, cart.items);
});

app.delete('/cart/:id', (request, { params }) => {
  carts.delete(key(params.id));
  return new Response(null, { status: 204 });
});

serve(app);
