"""The {{name}} service. Build with `tessera build`, serve with `tessera up`."""

import tessera
from tessera import Request, Response, config, kv


def handle(req: Request) -> Response:
    greeting = config.get("greeting", "Hello")
    visits = kv.open("default").increment("visits")
    return Response.text(f"{greeting} from Python! This is {{name}}, visit {visits}.\n")


# componentize-py exports this class as the service's wasi:http/incoming-handler.
IncomingHandler = tessera.handler(handle)
