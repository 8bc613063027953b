"""The shop's catalog: products and prices, kept in the service's own SQL database
(table `products`, created and seeded by migrations/0001_products.sql).

    GET /catalog        -> {"products": [{"id", "name", "price_cents"}, ...]} by id
    GET /catalog/{id}   -> {"id", "name", "price_cents"}, or 404 {"error": ...}
"""

import tessera
from tessera import HTTPError, Request, Router, sql

router = Router()


@router.get("/catalog")
def list_products(req: Request) -> dict:
    return {"products": sql.query("SELECT id, name, price_cents FROM products ORDER BY id")}


@router.get("/catalog/{id}")
def get_product(req: Request, id: str) -> dict:
    product = sql.query_one("SELECT id, name, price_cents FROM products WHERE id = ?", (id,))
    if product is None:
        raise HTTPError(404, f"no such product: {id}")
    return product


# componentize-py exports this class as the service's wasi:http/incoming-handler.
IncomingHandler = tessera.handler(router)
