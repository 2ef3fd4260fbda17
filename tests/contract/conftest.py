"""Shared fixtures for the contract tests: the committed descriptor set, parsed offline."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# Registering the google.api extensions BEFORE parsing makes their options readable via
# HasExtension/Extensions instead of landing in unknown fields.
from google.api import annotations_pb2, field_behavior_pb2, resource_pb2  # noqa: F401
from google.protobuf import descriptor_pb2

ROOT = Path(__file__).resolve().parents[2]
GEN = ROOT / "gen"
DESCRIPTOR = GEN / "descriptor.binpb"

# Until the lead maps gen/ in pyproject.toml, make generated modules importable for tests.
if str(GEN) not in sys.path:
    sys.path.insert(0, str(GEN))


@pytest.fixture(scope="session")
def fds() -> descriptor_pb2.FileDescriptorSet:
    if not DESCRIPTOR.is_file():
        pytest.fail(f"{DESCRIPTOR} missing: run scripts/gen")
    return descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTOR.read_bytes())


@pytest.fixture(scope="session")
def files_by_name(
    fds: descriptor_pb2.FileDescriptorSet,
) -> dict[str, descriptor_pb2.FileDescriptorProto]:
    return {f.name: f for f in fds.file}


@pytest.fixture(scope="session")
def aimesh_files(fds: descriptor_pb2.FileDescriptorSet) -> list[descriptor_pb2.FileDescriptorProto]:
    files = [f for f in fds.file if f.package.startswith("aimesh.")]
    assert files, "no aimesh.* files in the descriptor set"
    return files


@pytest.fixture(scope="session")
def messages(fds: descriptor_pb2.FileDescriptorSet) -> dict[str, descriptor_pb2.DescriptorProto]:
    """Every message (nested too) by full name, e.g. 'aimesh.auth.v1.ApiKey'."""
    out: dict[str, descriptor_pb2.DescriptorProto] = {}

    def walk(prefix: str, msgs: Iterator[descriptor_pb2.DescriptorProto]) -> None:
        for m in msgs:
            full = f"{prefix}.{m.name}"
            out[full] = m
            walk(full, iter(m.nested_type))

    for f in fds.file:
        walk(f.package, iter(f.message_type))
    return out


@pytest.fixture(scope="session")
def aimesh_methods(
    aimesh_files: list[descriptor_pb2.FileDescriptorProto],
) -> list[tuple[str, descriptor_pb2.MethodDescriptorProto]]:
    """(service full name, method) for every RPC of every aimesh service."""
    return [(f"{f.package}.{s.name}", m) for f in aimesh_files for s in f.service for m in s.method]
