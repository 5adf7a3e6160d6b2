"""Regenerates gen/ (Python, gRPC and typing stubs, a descriptor set) from protos/.

One command (`make protos`) so the generated code is reproducible; CI runs it
and fails when the committed output differs.
"""

from __future__ import annotations

import pathlib
import shutil
import sys

import grpc_tools
from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
OUT = ROOT / "gen"


def _include_dirs() -> list[str]:
    """googleapis-common-protos ships google/api/*.proto inside site-packages."""
    import google.api

    googleapis_root = pathlib.Path(google.api.__path__[0]).parent.parent
    well_known = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    return [str(PROTOS), str(googleapis_root), str(well_known)]


def main() -> int:
    shutil.rmtree(OUT / "kasvu", ignore_errors=True)
    OUT.mkdir(exist_ok=True)
    sources = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    args = ["protoc", *(f"-I{d}" for d in _include_dirs())]
    args += [
        f"--python_out={OUT}",
        f"--grpc_python_out={OUT}",
        f"--mypy_out={OUT}",
        f"--mypy_grpc_out={OUT}",
        f"--descriptor_set_out={OUT / 'kasvu' / 'descriptors.binpb'}",
        "--include_source_info",
        "--include_imports",
    ]
    (OUT / "kasvu").mkdir(parents=True, exist_ok=True)
    code = protoc.main([*args, *sources])
    if code != 0:
        return int(code)
    for package in (OUT / "kasvu").rglob("*"):
        if package.is_dir():
            (package / "__init__.py").touch()
    (OUT / "kasvu" / "__init__.py").write_text(
        '"""Code generated from protos/ by scripts/gen_protos.py; do not edit."""\n'
    )
    (OUT / "kasvu" / "py.typed").touch()
    return 0


if __name__ == "__main__":
    sys.exit(main())
