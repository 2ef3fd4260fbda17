"""python -m services.auth — run the Auth service."""

from services.common.server import serve
from services.auth.servicer import build_spec

if __name__ == "__main__":
    serve(build_spec())
