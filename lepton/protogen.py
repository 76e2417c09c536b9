"""Generates the Python gRPC stubs in lepton/v1 from proto/lepton/v1/*.proto.

Run by setup.py's build step and usable by hand (`python -m lepton.protogen`)
after editing a .proto. A stamp file records a hash of the sources so that
`is_fresh()` (used by a test and by the dev entry points) can tell whether the
stubs on disk were generated from the .proto files on disk.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
OUT_DIR = ROOT
STAMP = ROOT / "lepton" / "v1" / ".protos.sha256"


def proto_files(proto_dir: Path = PROTO_DIR) -> list[Path]:
    return sorted((proto_dir / "lepton" / "v1").glob("*.proto"))


def sources_digest(proto_dir: Path = PROTO_DIR) -> str:
    h = hashlib.sha256()
    for p in proto_files(proto_dir):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def is_fresh() -> bool:
    """True when the generated stubs exist and match the .proto sources."""
    if not STAMP.exists():
        return False
    for p in proto_files():
        if not (STAMP.parent / f"{p.stem}_pb2.py").exists():
            return False
    return STAMP.read_text().strip() == sources_digest()


def generate(proto_dir: Path = PROTO_DIR, out_dir: Path = OUT_DIR) -> list[Path]:
    """Runs protoc (from grpcio-tools) and writes *_pb2.py, *_pb2.pyi, *_pb2_grpc.py."""
    import grpc_tools
    from grpc_tools import protoc  # build-time dependency

    files = proto_files(proto_dir)
    if not files:
        raise SystemExit(f"no .proto files under {proto_dir}")
    include = str(Path(grpc_tools.__file__).parent / "_proto")
    args = [
        "grpc_tools.protoc",
        f"-I{proto_dir}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *[str(f) for f in files],
    ]
    rc = protoc.main(args)
    if rc != 0:
        raise SystemExit(f"protoc failed with exit code {rc}")
    stamp = out_dir / "lepton" / "v1" / ".protos.sha256"
    stamp.write_text(sources_digest(proto_dir) + "\n")
    return [out_dir / "lepton" / "v1" / f"{f.stem}_pb2.py" for f in files]


def ensure_fresh() -> None:
    """Regenerates the stubs in a source checkout when they are stale."""
    if PROTO_DIR.exists() and not is_fresh():
        generate()


if __name__ == "__main__":
    for path in generate():
        print(f"generated {path.relative_to(ROOT)}", file=sys.stderr)
