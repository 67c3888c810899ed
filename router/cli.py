"""`submodel route FILE|-`: which sub-model a text would be routed to, and why."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "route", help="show which language sub-model a file or snippet would be routed to",
        description="Route a file (or stdin) the way the server routes a prompt: a --hint beats "
        "the file name, which beats the content; an unsure content detection goes to dense.")
    p.add_argument("file", metavar="FILE|-", help="the text to route; - reads stdin")
    p.add_argument("--hint", help="a language hint, as a client would send it (python, py, "
                   "c++, js, node, java, dense...)")
    p.add_argument("--filename", help="the file name to route by (default: FILE's own name; "
                   "ignored for stdin unless given)")
    p.add_argument("--content-only", action="store_true",
                   help="ignore FILE's name and route by content alone (unless --filename)")
    p.add_argument("--threshold", type=float, default=None,
                   help="confidence below which content detection falls back to dense "
                   "(default: the router's, 0.5)")
    p.add_argument("--languages", default=None,
                   help="comma-separated languages the router may choose "
                   "(default: python,java,cpp,javascript)")
    p.add_argument("--json", action="store_true",
                   help="print JSON: the detection and the content detector's probabilities")
    p.set_defaults(func=run)


def _read(path: str) -> str:
    from submodel.cli import CLIError

    try:
        data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except IsADirectoryError:
        raise CLIError(f"{path} is a directory, not a file") from None
    except OSError as e:
        raise CLIError(f"cannot read {path}: {e.strerror}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CLIError(f"{path} is not UTF-8 text (byte {e.start})") from None


def run(args: argparse.Namespace) -> int:
    from submodel.cli import CLIError
    from submodel.vocabulary import LANGUAGES

    from . import DEFAULT_THRESHOLD, Router, UnknownLanguage

    languages = LANGUAGES if args.languages is None else [
        s for s in (x.strip() for x in args.languages.split(",")) if s]
    threshold = DEFAULT_THRESHOLD if args.threshold is None else args.threshold
    try:
        router = Router(languages, threshold)
    except ValueError as e:
        raise CLIError(str(e)) from None
    text = _read(args.file)
    filename = args.filename
    if filename is None and args.file != "-" and not args.content_only:
        filename = args.file
    try:
        detection = router.detect(text, filename=filename, hint=args.hint)
    except UnknownLanguage as e:
        raise CLIError(str(e)) from None
    if args.json:
        print(json.dumps({"language": detection.language,
                          "confidence": round(detection.confidence, 6),
                          "source": detection.source, "filename": filename, "hint": args.hint,
                          "content_probabilities": {k: round(v, 6) for k, v in
                                                    router.probabilities(text).items()}}))
    else:
        print(f"{detection.language}\t{detection.confidence:.3f}\t{detection.source}")
    return 0
