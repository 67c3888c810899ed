"""A small Python client of the Generator API (used by `submodel generate` and the bench)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc

from submodel.v1 import submodel_pb2 as pb
from submodel.v1 import submodel_pb2_grpc as pb_grpc


class Client:
    """One channel to a server. TLS when `tls` or `tls_ca` is given (`tls_ca`: the PEM of the
    CA, or of a self-signed server certificate; otherwise the system's roots)."""

    def __init__(self, target: str, *, tls: bool = False,
                 tls_ca: str | Path | None = None, token: str | None = None) -> None:
        if tls or tls_ca is not None:
            roots = Path(tls_ca).read_bytes() if tls_ca is not None else None
            self.channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(roots))
        else:
            self.channel = grpc.insecure_channel(target)
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.stub = pb_grpc.GeneratorStub(self.channel)

    def generate(self, request: pb.GenerateRequest,
                 timeout: float | None = None) -> pb.GenerateResponse:
        return self.stub.Generate(request, timeout=timeout, metadata=self.metadata)

    def stream(self, request: pb.GenerateRequest,
               timeout: float | None = None) -> Iterator[pb.GenerateChunk]:
        """The chunks as they come; the returned call also has .cancel()."""
        return self.stub.GenerateStream(request, timeout=timeout, metadata=self.metadata)

    def detect(self, text: str, filename: str = "", language: str | None = None,
               timeout: float | None = None) -> pb.Routing:
        request = pb.DetectLanguageRequest(text=text, filename=filename, language=language)
        return self.stub.DetectLanguage(request, timeout=timeout, metadata=self.metadata).routing

    def sub_models(self, timeout: float | None = None) -> pb.ListSubModelsResponse:
        return self.stub.ListSubModels(pb.ListSubModelsRequest(), timeout=timeout,
                                       metadata=self.metadata)

    def reload(self, timeout: float | None = None) -> pb.ReloadSubModelsResponse:
        return self.stub.ReloadSubModels(pb.ReloadSubModelsRequest(), timeout=timeout,
                                         metadata=self.metadata)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
