"""python -m services.speech — run the Speech service."""

from services.common.server import serve
from services.speech.servicer import build_spec

if __name__ == "__main__":
    serve(build_spec())
