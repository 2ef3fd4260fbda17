"""python -m services.knowledge — run the Knowledge service."""

from services.common.server import serve
from services.knowledge.servicer import build_spec

if __name__ == "__main__":
    serve(build_spec())
