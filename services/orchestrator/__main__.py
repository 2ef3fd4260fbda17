"""python -m services.orchestrator — run the Orchestrator service."""

from services.common.server import serve
from services.orchestrator.servicer import build_spec

if __name__ == "__main__":
    serve(build_spec())
