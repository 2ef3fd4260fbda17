"""python -m services.auth — run the Auth service."""

from services.auth.servicer import build_spec
from services.common.server import serve

if __name__ == "__main__":
    serve(build_spec())
