"""The dependency arrows point inward: the pure core imports nothing of ours
outside itself and nothing that does I/O; the codec knows only the core; no
package but the CLI reaches into the server."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "orderbook"

# Third-party modules each layer may use.
CORE_ALLOWED_EXTERNAL = {"sortedcontainers"}
IO_MODULES = {"asyncio", "socket", "sanic", "websockets", "redis", "urllib", "http", "subprocess", "time"}


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    pkg = ".".join(path.relative_to(PKG.parent).with_suffix("").parts[:-1])
    # Imports under `if TYPE_CHECKING:` are for annotations only.
    typing_only = {
        id(n)
        for branch in ast.walk(tree)
        if isinstance(branch, ast.If) and getattr(branch.test, "id", None) == "TYPE_CHECKING"
        for stmt in branch.body
        for n in ast.walk(stmt)
    }
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                out.add(".".join(base + ([node.module] if node.module else [])))
            elif node.module:
                out.add(node.module)
    return out


def modules(sub: str) -> list[Path]:
    return sorted((PKG / sub).rglob("*.py"))


@pytest.mark.parametrize("path", modules("core"), ids=lambda p: p.name)
def test_core_is_pure(path):
    for name in imports_of(path):
        top = name.split(".")[0]
        if top == "orderbook":
            assert name.startswith("orderbook.core"), f"{path.name} imports {name}"
        else:
            assert top not in IO_MODULES, f"{path.name} imports {name} (I/O or clock)"
            assert top in CORE_ALLOWED_EXTERNAL or top in _stdlib(), f"{path.name} imports {name}"


@pytest.mark.parametrize("sub", ["wire", "feeds", "client", "replication", "replay"])
def test_outer_layers_never_import_the_server(sub):
    for path in modules(sub):
        for name in imports_of(path):
            assert not name.startswith("orderbook.server"), f"{sub}/{path.name} imports {name}"


# Readers, verification, pacing and windows are pure: files, sockets and the
# clock belong to files.py, player.py, recorder.py and endtoend.py.
REPLAY_PURE = sorted(
    [*(PKG / "replay" / "formats").glob("*.py")]
    + [PKG / "replay" / f"{name}.py" for name in ("records", "verify", "pacing", "window")]
)


@pytest.mark.parametrize("path", REPLAY_PURE, ids=lambda p: p.name)
def test_replay_readers_are_pure(path):
    for name in imports_of(path):
        top = name.split(".")[0]
        if top == "orderbook":
            assert name.startswith(("orderbook.core", "orderbook.wire", "orderbook.replay")), (
                f"{path.name} imports {name}"
            )
            assert not name.startswith(
                (
                    "orderbook.replay.files",
                    "orderbook.replay.player",
                    "orderbook.replay.endtoend",
                    "orderbook.replay.recorder",
                )
            ), f"{path.name} imports {name}"
        elif name != "urllib.parse":  # string parsing only
            assert top not in IO_MODULES | {"gzip", "io", "os", "pathlib"}, f"{path.name} imports {name} (I/O or clock)"
    # Nor do they open files themselves.
    assert "open(" not in path.read_text().replace("gzip.open(", ""), f"{path.name} opens a file"


def test_only_the_wire_imports_generated_code():
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG)
        if rel.parts[0] in ("wire", "v1"):
            continue
        for name in imports_of(path):
            assert not name.startswith("orderbook.v1"), f"{rel} imports {name}"


def _stdlib() -> frozenset[str]:
    import sys

    return frozenset(sys.stdlib_module_names)
