"""Python SDK helpers for aimesh clients (on top of the generated stubs in gen/)."""
