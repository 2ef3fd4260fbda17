"""python -m services.usage — run the Usage service."""

from services.common.server import serve
from services.usage.servicer import build_spec

if __name__ == "__main__":
    serve(build_spec())
