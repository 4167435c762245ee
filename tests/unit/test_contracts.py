"""The contracts in protos/: lint-clean, every RPC reachable over HTTP, stubs not stale."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pb2

ROOT = Path(__file__).resolve().parents[2]


def _descriptor_set() -> descriptor_pb2.FileDescriptorSet:
    descriptors = descriptor_pb2.FileDescriptorSet()
    descriptors.ParseFromString((ROOT / "cairn" / "descriptors.binpb").read_bytes())
    return descriptors


def _cairn_files() -> list[descriptor_pb2.FileDescriptorProto]:
    return [f for f in _descriptor_set().file if f.package.startswith("cairn.")]


def test_committed_stubs_match_the_protos() -> None:
    result = subprocess.run(
        [sys.executable, "scripts/generate_protos.py", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_buf_lint_passes() -> None:
    buf = ROOT / "node_modules" / ".bin" / "buf"
    if not buf.exists():
        pytest.fail("buf is not installed: run `npm ci` (make test does)", pytrace=False)
    result = subprocess.run(
        [str(buf), "lint"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_rpc_has_an_http_binding() -> None:
    methods = []
    for file in _cairn_files():
        for service in file.service:
            for method in service.method:
                rule = method.options.Extensions[annotations_pb2.http]
                pattern = rule.WhichOneof("pattern")
                methods.append(f"{service.name}.{method.name}")
                assert pattern is not None, f"{service.name}.{method.name} has no google.api.http"
                assert getattr(rule, pattern).startswith("/v1"), (method.name, rule)
    assert "TrackerService.SearchRuns" in methods
    assert len(methods) >= 20


def test_packages_match_folders_and_enums_start_unspecified() -> None:
    for file in _cairn_files():
        folder = str(Path(file.name).parent).replace("/", ".")
        assert folder == file.package, file.name
        for enum in file.enum_type:
            assert enum.value[0].number == 0
            assert enum.value[0].name.endswith("_UNSPECIFIED"), enum.name


def test_descriptor_set_carries_comments_for_docs() -> None:
    tracker = next(f for f in _cairn_files() if f.name.endswith("tracker_service.proto"))
    comments = [loc.leading_comments for loc in tracker.source_code_info.location]
    assert any("filter grammar" in c for c in comments)


def test_search_runs_has_additional_get_binding() -> None:
    tracker = next(f for f in _cairn_files() if f.name.endswith("tracker_service.proto"))
    search = next(m for s in tracker.service for m in s.method if m.name == "SearchRuns")
    rule: http_pb2.HttpRule = search.options.Extensions[annotations_pb2.http]
    assert rule.post == "/v1/runs:search"
    assert [b.get for b in rule.additional_bindings] == ["/v1/runs:search"]
