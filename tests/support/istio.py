"""The deploy-time Istio renderers under istio/tools (scripts beside the manifests, not a
package), importable by tests."""

from __future__ import annotations

import sys
from pathlib import Path

TOOLS = Path(__file__).resolve().parents[2] / "istio" / "tools"
if str(TOOLS) not in sys.path:
    sys.path.insert(0, str(TOOLS))

import mesh_manifests  # noqa: E402
import render  # noqa: E402

__all__ = ["TOOLS", "mesh_manifests", "render"]
