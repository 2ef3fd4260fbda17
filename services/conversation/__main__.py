"""python -m services.conversation — run the Conversation service."""

from services.common.server import serve
from services.conversation.servicer import build_spec

if __name__ == "__main__":
    serve(build_spec())
