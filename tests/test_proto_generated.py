"""The committed generated code is exactly what protoc makes from proto/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[1]
PROTO_DIR = ROOT / "proto"
GENERATED_DIR = ROOT / "orderbook" / "v1"


def test_generated_code_matches_proto(tmp_path):
    found = (PROTO_DIR / "orderbook" / "v1").glob("*.proto")
    protos = sorted(p.relative_to(ROOT).as_posix() for p in found)
    assert protos, "no .proto files found"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-Iproto",
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            *protos,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert result.returncode == 0, result.stderr
    fresh_dir = tmp_path / "orderbook" / "v1"
    fresh = {p.name for p in fresh_dir.iterdir()}
    # One _pb2.py and one _pb2.pyi per .proto.
    assert fresh == {f"{Path(p).stem}_pb2{ext}" for p in protos for ext in (".py", ".pyi")}
    committed = {p.name for p in GENERATED_DIR.iterdir() if p.name.endswith(("_pb2.py", "_pb2.pyi"))}
    assert committed == fresh, "generated files missing from or extra in orderbook/v1"
    stale = [name for name in sorted(fresh) if (fresh_dir / name).read_bytes() != (GENERATED_DIR / name).read_bytes()]
    assert not stale, f"regenerate from proto/: {stale} differ from protoc's output"
