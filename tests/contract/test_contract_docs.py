"""The docs say what the code does: the committed gateway configuration is what
scripts/gateway.py renders (and Envoy accepts it), the filter order written in the docs is the
rendered chain, and no doc points outside the repository or at a file that does not exist."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from scripts import gateway

ROOT = Path(__file__).resolve().parents[2]
# Where the filter chain is written out for readers.
FILTER_ORDER_DOCS = [ROOT / "README.md", ROOT / "envoy" / "README.md", ROOT / "docs" / "DESIGN.md",
                     ROOT / "scripts" / "gateway.py"]


def _markdown_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "*.md"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split()
    return [ROOT / name for name in listed if "node_modules" not in name and (ROOT / name).exists()]


def test_committed_gateway_configs_are_fresh() -> None:
    for path, text in gateway.reference_configs().items():
        assert path.exists() and path.read_text() == text, (
            f"{path.relative_to(ROOT)} is stale: run .venv/bin/python -m scripts.gateway reference"
        )


def test_committed_gateway_configs_pass_envoy_validation(tmp_path: Path) -> None:
    """`envoy --mode validate` on both files, as Envoy would load them: the local one from the
    repository root (its paths are relative to it), the pod's with its /etc/envoy mount."""
    result = gateway.validate(Path("envoy") / "envoy.yaml", cwd=ROOT)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]

    pod = tmp_path / "envoy.k8s.yaml"
    pod.write_text((gateway.ENVOY_DIR / "envoy.k8s.yaml").read_text().replace(
        f"{gateway.K8S_CONFIG_DIR}/descriptor.binpb", str(gateway.DESCRIPTOR)))
    result = gateway.validate(pod)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


def _rendered_filter_names() -> list[str]:
    config = gateway.render(gateway.Settings.from_env({}))
    (listener,) = config["static_resources"]["listeners"]
    (hcm,) = listener["filter_chains"][0]["filters"]
    return [f["name"].removeprefix("envoy.filters.http.") for f in hcm["typed_config"]["http_filters"]]


@pytest.mark.parametrize("doc", FILTER_ORDER_DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_documented_filter_order_is_the_rendered_chain(doc: Path) -> None:
    chain = " → ".join(_rendered_filter_names())
    text = " ".join(doc.read_text().split())  # line breaks and indentation do not matter
    assert chain in text, f"{doc.relative_to(ROOT)} must say the filter order as rendered:\n  {chain}"


def test_docs_point_inside_the_repository() -> None:
    """Relative links and `path` mentions resolve to files in the repository; nothing
    reaches above its root (a reader of a fresh clone has nothing there)."""
    problems = []
    for doc in _markdown_files():
        text = doc.read_text()
        targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
        targets += re.findall(r"`(\.\./[^`\s]+)`", text)
        for target in targets:
            if re.match(r"[a-z]+:", target):  # https:, mailto: ...
                continue
            resolved = (doc.parent / target).resolve()
            where = f"{doc.relative_to(ROOT)}: {target}"
            if not resolved.is_relative_to(ROOT):
                problems.append(f"{where} points outside the repository")
            elif not resolved.exists():
                problems.append(f"{where} does not exist")
        for absolute in re.findall(r"(?<![\w.~])(/(?:work|home|tmp)/[^\s`)]+)", text):
            problems.append(f"{doc.relative_to(ROOT)}: absolute path {absolute}")
    assert not problems, "\n".join(problems)
