"""The Orchestrator service: the model catalog and provider routing: streaming generation with
fallback, circuit breakers and guardrails."""
