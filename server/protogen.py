"""Regenerate the committed Python stubs of the gRPC API from its .proto:

    python -m submodel.server.protogen            # writes next to submodel.proto
    python -m submodel.server.protogen --out DIR  # writes DIR/submodel/v1/... (the stale test)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import submodel.v1

PROTO = "submodel/v1/submodel.proto"
GENERATED = ("submodel_pb2.py", "submodel_pb2_grpc.py", "submodel_pb2.pyi")
# The folder that holds submodel/v1/: `protos/` in the source tree, so imports read
# `from submodel.v1 import submodel_pb2`.
PROTO_ROOT = Path(submodel.v1.__file__).resolve().parents[2]


def generate(out: Path = PROTO_ROOT) -> list[Path]:
    """Run protoc (from grpcio-tools) over the API; returns the written files."""
    try:
        from grpc_tools import protoc
    except ImportError:
        raise SystemExit("grpcio-tools is not installed: pip install grpcio-tools") from None
    (out / "submodel" / "v1").mkdir(parents=True, exist_ok=True)
    rc = protoc.main(["protoc", f"-I{PROTO_ROOT}", f"--python_out={out}",
                      f"--grpc_python_out={out}", f"--pyi_out={out}", str(PROTO_ROOT / PROTO)])
    if rc != 0:
        raise SystemExit(f"protoc failed on {PROTO_ROOT / PROTO} (exit {rc})")
    return [out / "submodel" / "v1" / name for name in GENERATED]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=PROTO_ROOT,
                        help="root folder to write submodel/v1/*_pb2* into (default: beside the "
                             ".proto)")
    for path in generate(parser.parse_args(argv).out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
