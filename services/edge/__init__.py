"""The OpenAI-compatible HTTP edge: `/openai/v1/...` behind the gateway, calling the gRPC
services."""
