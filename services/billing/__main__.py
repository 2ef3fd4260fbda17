"""python -m services.billing — run the Billing service."""

from services.billing.servicer import build_spec
from services.common.server import serve

if __name__ == "__main__":
    serve(build_spec())
