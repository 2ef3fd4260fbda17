"""The Auth service: orgs, users, memberships and roles, API keys (hashed), signing keys; JWT
issue/refresh/JWKS and Envoy ext_authz Check."""
