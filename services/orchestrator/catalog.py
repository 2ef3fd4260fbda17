"""The model catalog: which models exist, who serves them (deployments), their limits and prices.

It is data (catalog.json, path from AIMESH_ORCHESTRATOR_CATALOG) so operators add models and
deployments without code. A hosted deployment counts only when it can be reached: it has an
explicit base_url (vLLM, Ollama, llama.cpp) or its provider's API key is configured.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.common.config import ConfigError, Settings
from services.common.errors import not_found
from services.common.names import resource

PROVIDERS = ("triton", "openai", "anthropic")
CAPABILITIES = ("CHAT", "STREAMING", "RETRIEVAL", "SEED", "TOOLS", "JSON_MODE")
MODEL = resource("orchestrator.aimesh.dev/Model")
_MODEL_ID = re.compile(r"^[a-z0-9][a-z0-9.-]{0,62}$")


@dataclass(frozen=True)
class Deployment:
    """One place a model is served: a provider plus its model id there."""

    provider: str
    deployment: str
    weight: int = 1
    # Lower tiers are tried first; deployments within a tier share load by weight.
    priority: int = 0
    # OpenAI-compatible servers other than api.openai.com (vLLM, Ollama, Azure) or a test server.
    base_url: str | None = None

    @property
    def key(self) -> str:
        return f"{self.provider}/{self.deployment}@{self.base_url or ''}"


@dataclass(frozen=True)
class ModelEntry:
    name: str  # "models/<id>"
    display_name: str
    description: str
    context_window_tokens: int
    max_output_tokens: int
    prompt_price_micros_per_million_tokens: int
    completion_price_micros_per_million_tokens: int
    currency_code: str
    capabilities: tuple[str, ...]
    deployments: tuple[Deployment, ...]
    fallback_models: tuple[str, ...] = field(default_factory=tuple)

    @property
    def model_id(self) -> str:
        return self.name.split("/", 1)[1]

    @property
    def provider(self) -> str:
        return min(self.deployments, key=lambda d: d.priority).provider


def _deployment(raw: dict[str, Any], where: str) -> Deployment:
    provider = raw.get("provider")
    if provider not in PROVIDERS:
        raise ConfigError(f"{where}.provider={provider!r}: expected one of {', '.join(PROVIDERS)}")
    if not isinstance(raw.get("deployment"), str) or not raw["deployment"]:
        raise ConfigError(f"{where}.deployment must be a non-empty string")
    weight = int(raw.get("weight", 1))
    if weight < 1:
        raise ConfigError(f"{where}.weight must be >= 1")
    return Deployment(
        provider=provider,
        deployment=raw["deployment"],
        weight=weight,
        priority=int(raw.get("priority", 0)),
        base_url=raw.get("base_url") or None,
    )


def parse_catalog(data: dict[str, Any]) -> list[ModelEntry]:
    """Validate a catalog document; errors name the offending entry."""
    models: list[ModelEntry] = []
    for i, raw in enumerate(data.get("models", [])):
        where = f"models[{i}]"
        model_id = raw.get("name", "")
        if not isinstance(model_id, str) or not _MODEL_ID.match(model_id):
            raise ConfigError(f"{where}.name={model_id!r}: expected 1-63 characters of [a-z0-9-.]")
        caps = tuple(raw.get("capabilities", ["CHAT", "STREAMING"]))
        if any(c not in CAPABILITIES for c in caps):
            raise ConfigError(f"{where}.capabilities={caps!r}: allowed {', '.join(CAPABILITIES)}")
        deployments = tuple(
            _deployment(d, f"{where}.deployments[{j}]")
            for j, d in enumerate(raw.get("deployments", []))
        )
        if not deployments:
            raise ConfigError(f"{where}: a model needs at least one deployment")
        window, max_out = int(raw["context_window_tokens"]), int(raw["max_output_tokens"])
        if not 0 < max_out < window:
            raise ConfigError(f"{where}: need 0 < max_output_tokens < context_window_tokens")
        models.append(
            ModelEntry(
                name=MODEL.format(model_id),
                display_name=str(raw.get("display_name", model_id)),
                description=str(raw.get("description", "")),
                context_window_tokens=window,
                max_output_tokens=max_out,
                prompt_price_micros_per_million_tokens=int(
                    raw.get("prompt_price_micros_per_million_tokens", 0)
                ),
                completion_price_micros_per_million_tokens=int(
                    raw.get("completion_price_micros_per_million_tokens", 0)
                ),
                currency_code=str(raw.get("currency_code", "USD")),
                capabilities=caps,
                deployments=deployments,
                fallback_models=tuple(MODEL.format(m) for m in raw.get("fallback_models", [])),
            )
        )
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise ConfigError("catalog: duplicate model names")
    for m in models:
        for fb in m.fallback_models:
            if fb not in names:
                raise ConfigError(f"catalog: {m.name} falls back to unknown {fb}")
    return models


class Catalog:
    """The models this deployment of the Orchestrator can serve, by name."""

    def __init__(self, models: list[ModelEntry], settings: Settings) -> None:
        self.settings = settings
        usable = []
        for model in models:
            live = tuple(d for d in model.deployments if self.reachable(d))
            if live:
                usable.append(ModelEntry(**{**model.__dict__, "deployments": live}))
        self._models = {m.name: m for m in sorted(usable, key=lambda m: m.name)}

    @classmethod
    def load(cls, settings: Settings, path: str | None = None) -> Catalog:
        source = Path(path or settings.orchestrator_catalog)
        try:
            data = json.loads(source.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"AIMESH_ORCHESTRATOR_CATALOG={source}: {exc}") from None
        return cls(parse_catalog(data), settings)

    def reachable(self, deployment: Deployment) -> bool:
        if deployment.provider == "triton" or deployment.base_url:
            return True
        if deployment.provider == "openai":
            return bool(self.settings.openai_api_key)
        return bool(self.settings.anthropic_api_key)

    def models(self) -> list[ModelEntry]:
        return list(self._models.values())

    def names(self) -> list[str]:
        return list(self._models)

    def get(self, name: str, field_name: str = "model") -> ModelEntry:
        """The model called `name` (`models/{id}`); NOT_FOUND lists the valid ones."""
        MODEL.parse(name, field_name)
        model = self._models.get(name)
        if model is None:
            valid = ", ".join(self.names())
            raise not_found(
                f"unknown model {name}; valid models: {valid}",
                reason="MODEL_NOT_FOUND",
                metadata={"model": name, "valid_models": valid},
            )
        return model

    def chain(self, model: ModelEntry) -> list[ModelEntry]:
        """The model followed by its fallback models (transitively, each once)."""
        out: list[ModelEntry] = []
        todo = [model.name]
        while todo:
            name = todo.pop(0)
            entry = self._models.get(name)
            if entry is None or entry in out:
                continue
            out.append(entry)
            todo.extend(entry.fallback_models)
        return out
