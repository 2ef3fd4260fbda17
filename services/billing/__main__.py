"""python -m services.billing — run the Billing service."""

from services.common.server import serve
from services.billing.servicer import build_spec

if __name__ == "__main__":
    serve(build_spec())
