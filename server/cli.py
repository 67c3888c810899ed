"""`submodel serve STORE` (the gRPC server) and `submodel generate PROMPT` (a client)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from submodel.cli import CLIError
from submodel.server.chunking import parse_prefill_chunk
from submodel.vocabulary import DEFAULT_STRATEGY, SERVE_DTYPES, WEIGHT_CHOICES

DEFAULT_PORT = 50051
DEFAULT_METRICS_PORT = 9400
DEFAULT_HTTP_PORT = 8000


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve a sub-model store over gRPC and HTTP",
                       description="Serve a sub-model store over gRPC (submodel.v1.Generator, "
                       "health, reflection) and an OpenAI-compatible HTTP API (/v1/models, "
                       "/v1/completions with suffix for fill-in-the-middle, "
                       "/v1/chat/completions; Tabby's completion schema on /v1/completions), "
                       "both over one engine, with Prometheus metrics over HTTP. Model names: "
                       "auto (or the base model's name) routes by content, a language or "
                       "dense forces that sub-model. SIGTERM drains: health turns NOT_SERVING, "
                       "new requests get UNAVAILABLE (HTTP 503), requests in flight finish "
                       "(up to --grace), exit 0.")
    p.add_argument("store", help="store directory written by `submodel prune`")
    p.add_argument("--strategy", default=DEFAULT_STRATEGY,
                   help="how masks are applied: fused (default: masked kernels, languages "
                        "share a batch), swap (the live weights carry one language's mask at "
                        "a time) or replicas (one model per language, a baseline)")
    p.add_argument("--dtype", choices=SERVE_DTYPES,
                   help="compute dtype (default: the store's; a float16 store computes in "
                        "float32, exactly)")
    p.add_argument("--weights", choices=WEIGHT_CHOICES, default="auto",
                   help="how the fused strategy holds the weights: auto (default: gguf for a "
                        "store pruned from a GGUF file, on a CPU with AVX-512 VNNI; full "
                        "otherwise; the log says which and why), full (as stored, in the "
                        "compute dtype: the most tokens/s with many requests in flight), int8 "
                        "(codes and a scale per 32 columns, LM head included, made at load: "
                        "about half the bytes a decode step reads, at the cost of that "
                        "rounding) or gguf (as int8, but every Linear the base GGUF stores as "
                        "Q5_0 or Q8_0 holds exactly its values; needs a store pruned from a "
                        "GGUF)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; anything wider needs "
                        "--tls-cert/--tls-key, --auth-token-file or --insecure)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT,
                   help=f"gRPC port (default {DEFAULT_PORT}; 0 = any free port, logged)")
    p.add_argument("--http-host", default="127.0.0.1",
                   help="address of the OpenAI-compatible HTTP API (default 127.0.0.1; same "
                        "TLS, token and loopback rules as --host)")
    p.add_argument("--http-port", type=int, default=DEFAULT_HTTP_PORT,
                   help=f"port of the HTTP API (default {DEFAULT_HTTP_PORT}; 0 = any free "
                        "port, logged)")
    p.add_argument("--no-http", action="store_true", help="do not serve the HTTP API")
    p.add_argument("--metrics-host", default="127.0.0.1",
                   help="address of the HTTP /metrics endpoint (default 127.0.0.1)")
    p.add_argument("--metrics-port", type=int, default=DEFAULT_METRICS_PORT,
                   help=f"port of /metrics (default {DEFAULT_METRICS_PORT}; 0 = any free port)")
    p.add_argument("--no-metrics", action="store_true", help="do not serve /metrics")
    p.add_argument("--router-threshold", type=float,
                   help="content detections below this confidence go to the dense model "
                        "(default: the router's)")
    p.add_argument("--max-batch", type=int, default=8,
                   help="sequences decoded together (default 8); also the most samples (n) "
                        "one request may ask for")
    p.add_argument("--max-queue", type=int, default=64,
                   help="requests waiting for a slot before RESOURCE_EXHAUSTED (default 64)")
    p.add_argument("--max-context", type=int, default=2048,
                   help="prompt + generated tokens per sequence (default 2048, capped by the "
                        "model)")
    p.add_argument("--prefill-chunk", default="auto",
                   help="while other requests are decoding, each decode step also prefills "
                        "a chunk of the oldest waiting prompt, in the same pass over the "
                        "weights, so a long prompt arriving does not stall their tokens. "
                        "auto (default): each chunk gets the tokens that add about half a "
                        "step to theirs, from measured step times; N: N tokens a step "
                        "(smaller keeps their inter-token latency lower, larger gets the new "
                        "prompt its first token sooner); 0: prefill every prompt whole")
    p.add_argument("--prefix-cache-mb", type=int, default=256,
                   help="keep the keys and values of recent prompts' starts, up to this many "
                        "MiB, so that a prompt extending one seen before (an editor's context "
                        "on every pause in typing) prefills only what is new; per sub-model, "
                        "least recently used out first (default 256: ~21,000 tokens of the "
                        "default model in bf16, ~12 KiB each; 0: off)")
    p.add_argument("--time-slice", type=float, default=0.25,
                   help="seconds a language keeps the engine while others wait (default 0.25)")
    p.add_argument("--grace", type=float, default=30.0,
                   help="on SIGTERM, seconds to let requests in flight finish (default 30)")
    p.add_argument("--tls-cert", help="PEM certificate chain: serve TLS (with --tls-key)")
    p.add_argument("--tls-key", help="PEM private key of --tls-cert")
    p.add_argument("--auth-token-file",
                   help="file holding a bearer token every RPC but health must send as "
                        "metadata 'authorization: Bearer <token>' (HTTP: the Authorization "
                        "header, i.e. the OpenAI client's api_key; /v1/health stays open)")
    p.add_argument("--insecure", action="store_true",
                   help="allow a non-loopback --host or --http-host without TLS or a token")
    p.set_defaults(func=run_serve)

    g = sub.add_parser("generate", help="complete code with a running server (streams)",
                       description="Send a prompt to `submodel serve` and stream the "
                       "completion to the terminal; routing and usage go to stderr.")
    g.add_argument("prompt", nargs="?",
                   help="code to complete; '-' reads stdin; with --file it follows the file")
    g.add_argument("--file", help="file being edited: its contents come first, its name "
                                  "routes the request")
    g.add_argument("--filename", help="file name to route by, without reading a file")
    g.add_argument("--language", help="language hint (python, java, cpp, javascript, dense, "
                                      "or an alias such as py, c++, js)")
    g.add_argument("--server", default=f"127.0.0.1:{DEFAULT_PORT}",
                   help=f"host:port of the server (default 127.0.0.1:{DEFAULT_PORT})")
    g.add_argument("--max-tokens", type=int, help="tokens per sample (server default 256)")
    g.add_argument("--temperature", type=float, help="0 = greedy (the default)")
    g.add_argument("--top-p", type=float, help="nucleus sampling, in (0, 1]")
    g.add_argument("--top-k", type=int, help="keep the k most likely tokens (0 = off)")
    g.add_argument("--stop", action="append", default=[],
                   help="stop before this string (repeatable)")
    g.add_argument("-n", type=int, help="number of samples (default 1)")
    g.add_argument("--seed", type=int, help="sampling seed (reproducible samples)")
    g.add_argument("--timeout", type=float, help="deadline in seconds")
    g.add_argument("--tls", action="store_true", help="use TLS with the system's root CAs")
    g.add_argument("--tls-ca", help="use TLS, trusting this PEM CA or self-signed certificate")
    g.add_argument("--auth-token-file", help="file holding the server's bearer token")
    g.add_argument("-q", "--quiet", action="store_true",
                   help="print only the completion (no routing and usage on stderr)")
    g.set_defaults(func=run_generate)


# ---- serve ------------------------------------------------------------------------------

def _check_serve_args(args: argparse.Namespace) -> None:
    if (args.tls_cert is None) != (args.tls_key is None):
        raise CLIError("--tls-cert and --tls-key go together")
    for flag in ("port", "metrics_port", "http_port"):
        if not 0 <= getattr(args, flag) <= 65535:
            raise CLIError(f"--{flag.replace('_', '-')} must be in 0..65535")
    for flag in ("max_batch", "max_queue", "max_context"):
        if getattr(args, flag) < 1:
            raise CLIError(f"--{flag.replace('_', '-')} must be at least 1")
    try:
        args.prefill_chunk = parse_prefill_chunk(args.prefill_chunk)
    except ValueError as e:
        raise CLIError(str(e)) from None
    if args.prefix_cache_mb < 0:
        raise CLIError("--prefix-cache-mb must be >= 0 (0: off)")
    if args.grace < 0 or args.time_slice <= 0:
        raise CLIError("--grace must be >= 0 and --time-slice > 0")
    if args.router_threshold is not None and not 0 <= args.router_threshold <= 1:
        raise CLIError("--router-threshold must be in [0, 1]")


def run_serve(args: argparse.Namespace) -> int:
    _check_serve_args(args)
    from submodel.server import app, auth
    from submodel.server.http_server import HttpListener
    from submodel.server.metrics import Metrics

    try:
        for host in (args.host, *(() if args.no_http else (args.http_host,))):
            auth.check_bind(host, args.tls_cert is not None, args.auth_token_file is not None,
                            args.insecure)
        token = auth.read_token(args.auth_token_file) if args.auth_token_file else None
        creds = auth.server_credentials(args.tls_cert, args.tls_key) if args.tls_cert else None
    except ValueError as e:
        raise CLIError(str(e)) from None
    if not Path(args.store).is_dir():
        raise CLIError(f"{args.store}: no such store directory (build one with submodel prune)")
    if args.weights not in ("auto", "full") and args.strategy != "fused":
        raise CLIError(f"--weights {args.weights} needs --strategy fused")

    def load_engine(metrics: Metrics):
        import torch

        from submodel.pruning.store import StoreError, open_store
        from submodel.server.engine import Engine

        try:
            store = open_store(args.store)
            return Engine(store, strategy=args.strategy,
                          dtype=getattr(torch, args.dtype) if args.dtype else None,
                          max_batch=args.max_batch, max_context=args.max_context,
                          max_queue=args.max_queue, time_slice=args.time_slice,
                          prefix_cache_mb=args.prefix_cache_mb, weights=args.weights,
                          prefill_chunk=args.prefill_chunk,
                          observer=metrics)
        except (StoreError, ValueError) as e:
            raise CLIError(str(e)) from None

    from submodel.router import DEFAULT_THRESHOLD, Router

    threshold = DEFAULT_THRESHOLD if args.router_threshold is None else args.router_threshold
    listener = app.Listener(args.host, args.port, creds, token)
    http_listener = None if args.no_http else HttpListener(
        args.http_host, args.http_port, args.tls_cert, args.tls_key, token)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        return app.serve(load_engine, lambda langs: Router(langs, threshold), listener,
                         workers=args.max_batch + args.max_queue + 8, grace=args.grace,
                         metrics=Metrics(),
                         metrics_address=None if args.no_metrics
                         else (args.metrics_host, args.metrics_port),
                         http_listener=http_listener)
    except OSError as e:
        raise CLIError(str(e)) from None


# ---- generate ---------------------------------------------------------------------------

def _prompt(args: argparse.Namespace) -> tuple[str, str]:
    """(prompt, filename) from the positional prompt, stdin and --file."""
    text = sys.stdin.read() if args.prompt == "-" else (args.prompt or "")
    filename = args.filename or ""
    if args.file:
        try:
            text = Path(args.file).read_text() + text
        except (OSError, UnicodeDecodeError) as e:
            raise CLIError(f"cannot read {args.file}: {e}") from None
        filename = filename or Path(args.file).name
    if not text:
        raise CLIError("nothing to complete: give a PROMPT, '-' for stdin, or --file")
    return text, filename


def run_generate(args: argparse.Namespace) -> int:
    import grpc

    from submodel.server.auth import read_token
    from submodel.server.client import Client
    from submodel.v1 import submodel_pb2 as pb

    prompt, filename = _prompt(args)
    try:
        token = read_token(args.auth_token_file) if args.auth_token_file else None
    except ValueError as e:
        raise CLIError(str(e)) from None
    fields = {"max_tokens": args.max_tokens, "temperature": args.temperature,
              "top_p": args.top_p, "top_k": args.top_k, "n": args.n, "seed": args.seed,
              "language": args.language}
    request = pb.GenerateRequest(prompt=prompt, filename=filename, stop=args.stop,
                                 **{k: v for k, v in fields.items() if v is not None})
    note = (lambda *a: None) if args.quiet else (lambda s: print(s, file=sys.stderr))
    out = sys.stdout
    many = (args.n or 1) > 1
    with Client(args.server, tls=args.tls, tls_ca=args.tls_ca, token=token) as client:
        try:
            for chunk in client.stream(request, timeout=args.timeout):
                kind = chunk.WhichOneof("chunk")
                if kind == "routing":
                    r = chunk.routing
                    note(f"[routed to {r.language} by {r.source}, confidence "
                         f"{r.confidence:.2f}; sub-model {r.sub_model}]")
                elif kind == "delta" and not many:
                    out.write(chunk.delta.text)
                    out.flush()
                elif kind == "completion":
                    c = chunk.completion
                    if many:
                        out.write(f"### sample {c.index + 1} ({c.finish_reason}, {c.tokens} "
                                  f"tokens)\n{c.text}\n")
                    else:
                        out.write("" if c.text.endswith("\n") else "\n")
                        note(f"[finish: {c.finish_reason}]")
                    out.flush()
                elif kind == "summary":
                    u, t = chunk.summary.usage, chunk.summary.timings
                    note(f"[{u.prompt_tokens} prompt + {u.completion_tokens} generated tokens; "
                         f"first token {t.time_to_first_token_seconds:.2f} s, total "
                         f"{t.total_seconds:.2f} s]")
        except grpc.RpcError as e:
            hint = ""
            if e.code() == grpc.StatusCode.UNAVAILABLE:
                hint = f" (is `submodel serve` running at {args.server}?)"
            raise CLIError(f"{e.code().name}: {e.details()}{hint}") from None
    return 0
