"""The `ananke` command: generate, validate, tokenize, health and models over gRPC."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import grpc
from google.protobuf import json_format

from ananke import __version__, cli_tokens
from ananke import constraints as c
from ananke.client import AnankeClient
from ananke.errors import AnankeError
from ananke.request import Message
from ananke.results import TokenChunk
from ananke.transport import DEFAULT_ADDRESS
from ananke.v1 import constraints_pb2, inference_service_pb2

__all__ = [
    "EXIT_AUTH",
    "EXIT_DEADLINE",
    "EXIT_ERROR",
    "EXIT_INVALID",
    "EXIT_OK",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "build_parser",
    "exit_code_for",
    "main",
]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INVALID = 3
EXIT_UNAVAILABLE = 4
EXIT_DEADLINE = 5
EXIT_AUTH = 6
EXIT_INTERRUPTED = 130

EXIT_CODES_HELP = """\
exit codes:
  0  ok (health: SERVING; validate: every constraint compiles)
  1  any other failure
  2  usage error (bad options, unreadable file)
  3  invalid input: INVALID_ARGUMENT, or validation failed
  4  unavailable: UNAVAILABLE, not serving, or overloaded (RESOURCE_EXHAUSTED
     with OVERLOADED); worth retrying later
  5  deadline exceeded (--timeout)
  6  authentication failed: UNAUTHENTICATED or PERMISSION_DENIED
"""

_KIND_NAMES = {"json-schema", "regex", "lark", "gbnf"}


def exit_code_for(error: AnankeError) -> int:
    """The exit code for a failed call (see EXIT_CODES_HELP)."""
    code = error.code
    if code is grpc.StatusCode.INVALID_ARGUMENT:
        return EXIT_INVALID
    if code is grpc.StatusCode.UNAVAILABLE or (
        code is grpc.StatusCode.RESOURCE_EXHAUSTED and error.reason == "OVERLOADED"
    ):
        return EXIT_UNAVAILABLE
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return EXIT_DEADLINE
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return EXIT_AUTH
    return EXIT_ERROR


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _connection_options(env: Mapping[str, str]) -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("connection")
    group.add_argument(
        "--address",
        default=env.get("ANANKE_ADDR") or DEFAULT_ADDRESS,
        help="server host:port; https:// turns TLS on (env ANANKE_ADDR; default %(default)s)",
    )
    group.add_argument(
        "--api-key",
        default=env.get("ANANKE_API_KEY") or None,
        help="sent as 'authorization: Bearer KEY' (env ANANKE_API_KEY)",
    )
    group.add_argument(
        "--timeout", type=_positive_float, help="deadline of the call in seconds (default: none)"
    )
    group.add_argument("--tls", action="store_true", help="use TLS with the system roots")
    group.add_argument("--ca-cert", metavar="FILE", help="PEM roots to verify the server (TLS)")
    group.add_argument("--client-cert", metavar="FILE", help="PEM client certificate (mTLS)")
    group.add_argument("--client-key", metavar="FILE", help="PEM client key (mTLS)")
    group.add_argument("--server-name", help="TLS name to verify instead of the host")
    group.add_argument(
        "--no-retry", action="store_true", help="do not retry UNAVAILABLE (default: 4 attempts)"
    )
    return parent


def build_parser(env: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    """The argument parser; `env` supplies ANANKE_ADDR / ANANKE_API_KEY defaults."""
    env = os.environ if env is None else env
    parent = _connection_options(env)
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="ananke",
        description="Client of the Ananke constrained-generation service (gRPC ananke.v1).",
        epilog=EXIT_CODES_HELP,
        formatter_class=fmt,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    gen = sub.add_parser(
        "generate",
        parents=[parent],
        help="generate text under constraints, streamed as it arrives",
        description="Generate under constraints; tokens are printed as they arrive. "
        "Several constraint options apply together (all of them).",
        epilog=EXIT_CODES_HELP,
        formatter_class=fmt,
    )
    gen.add_argument("prompt", metavar="PROMPT", help="the prompt ('-' reads standard input)")
    cons = gen.add_argument_group("constraints")
    cons.add_argument("--json-schema", metavar="FILE", help="JSON Schema file the output obeys")
    cons.add_argument("--regex", metavar="PATTERN", help="regex the whole output matches")
    cons.add_argument(
        "--grammar", metavar="FILE", help="grammar file: Lark, or GBNF when it has '::=' rules"
    )
    cons.add_argument("--gbnf", action="store_true", help="read --grammar as GBNF")
    cons.add_argument(
        "--choice", action="append", default=[], metavar="TEXT", help="an allowed output (repeat)"
    )
    samp = gen.add_argument_group("sampling")
    samp.add_argument("--max-tokens", type=int, metavar="N", help="most tokens to generate")
    samp.add_argument("--temperature", type=float, help="0 (greedy, the default) to 2")
    samp.add_argument("--top-p", type=float, help="nucleus mass in (0, 1]")
    samp.add_argument("--top-k", type=int, help="sample among the k likeliest tokens")
    samp.add_argument("--seed", type=int, help="random seed, for reproducible sampling")
    samp.add_argument(
        "--stop", action="append", default=[], metavar="TEXT", help="stop sequence (repeat)"
    )
    cli_tokens.add_sampling_options(samp)
    gen.add_argument(
        "--chat", action="store_true", help="send PROMPT as a user chat message (chat template)"
    )
    gen.add_argument("--system", metavar="TEXT", help="system message (implies --chat)")
    gen.add_argument("--request-id", help="request id echoed in provenance and server logs")
    gen.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object (text, finish_reason, usage, provenance) at the end",
    )
    gen.add_argument("-q", "--quiet", action="store_true", help="no summary line on standard error")
    gen.set_defaults(handler=_cmd_generate)

    val = sub.add_parser(
        "validate",
        parents=[parent],
        help="compile constraints without generating; print a verdict per file",
        description="Compile constraint files on the server and print one verdict each.",
        epilog=EXIT_CODES_HELP,
        formatter_class=fmt,
    )
    val.add_argument("files", nargs="+", metavar="FILE", help="constraint file ('-': stdin)")
    val.add_argument(
        "--kind",
        choices=sorted(_KIND_NAMES),
        default="json-schema",
        help="what the files hold (default: %(default)s)",
    )
    val.add_argument("--json", action="store_true", help="print the response as JSON")
    val.set_defaults(handler=_cmd_validate)

    health = sub.add_parser(
        "health",
        parents=[parent],
        help="grpc.health.v1 check: exit 0 when SERVING, 4 otherwise",
        epilog=EXIT_CODES_HELP,
        formatter_class=fmt,
    )
    health.add_argument(
        "--service", default="", help="service to check (default: the whole server)"
    )
    health.set_defaults(handler=_cmd_health)

    models = sub.add_parser(
        "models",
        parents=[parent],
        help="describe the served model, engine and limits",
        epilog=EXIT_CODES_HELP,
        formatter_class=fmt,
    )
    models.add_argument("--json", action="store_true", help="print the response as JSON")
    models.set_defaults(handler=_cmd_models)

    stats = sub.add_parser(
        "stats",
        parents=[parent],
        help="the server's load and compile cache counters",
        epilog=EXIT_CODES_HELP,
        formatter_class=fmt,
    )
    stats.set_defaults(handler=_cmd_stats)
    cli_tokens.add_parsers(sub, parent, EXIT_CODES_HELP, _cmd_tokenize, _cmd_detokenize)
    return parser


class _UsageError(Exception):
    """A usage problem found after parsing (for example an unreadable file)."""


def _read_text(path: str, stdin: TextIO) -> str:
    if path == "-":
        return stdin.read()
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise _UsageError(f"cannot read {path}: {exc}") from exc


def _read_bytes(path: str | None) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise _UsageError(f"cannot read {path}: {exc}") from exc


def _client(args: argparse.Namespace) -> AnankeClient:
    from ananke.retry import NO_RETRY

    cert, key = args.client_cert, args.client_key
    if (cert is None) != (key is None):
        raise _UsageError("--client-cert and --client-key go together")
    return AnankeClient(
        args.address,
        api_key=args.api_key,
        tls=args.tls,
        root_certificates=_read_bytes(args.ca_cert),
        client_certificate=_read_bytes(cert),
        client_key=_read_bytes(key),
        server_name=args.server_name,
        timeout=args.timeout,
        retry=NO_RETRY if args.no_retry else None,
    )


def _enum_name(name: str, prefix: str) -> str:
    return name.removeprefix(prefix)


def _cmd_generate(args: argparse.Namespace, out: TextIO, err: TextIO, stdin: TextIO) -> int:
    prompt = stdin.read() if args.prompt == "-" else args.prompt
    built: list[constraints_pb2.ConstraintIR] = []
    if args.json_schema:
        built.append(c.json_schema(_read_text(args.json_schema, stdin), name=args.json_schema))
    if args.regex is not None:
        built.append(c.regex(args.regex, name="--regex"))
    if args.grammar:
        text = _read_text(args.grammar, stdin)
        built.append(c.grammar(text, "gbnf" if args.gbnf else None, name=args.grammar))
    elif args.gbnf:
        raise _UsageError("--gbnf needs --grammar FILE")
    if args.choice:
        built.append(c.choice(args.choice, name="--choice"))
    chat = args.chat or args.system is not None
    messages: list[Message] | None = None
    if chat:
        messages = [("system", args.system)] if args.system else []
        messages.append(("user", prompt))
    with _client(args) as client:
        stream = client.generate_stream(
            None if chat else prompt,
            messages=messages,
            constraints=built,
            max_tokens=args.max_tokens,
            temperature=args.temperature,
            top_p=args.top_p,
            top_k=args.top_k,
            seed=args.seed,
            stop=args.stop,
            request_id=args.request_id,
            **cli_tokens.sampling_kwargs(args),
        )
        with stream:
            if args.json or (args.n or 1) > 1:
                result = stream.collect()
                if not args.json:
                    cli_tokens.print_candidates(result, out)
                    return EXIT_OK
                out.write(json.dumps(result.to_dict(), ensure_ascii=False) + "\n")
                return EXIT_OK
            for event in stream:
                if isinstance(event, TokenChunk) and event.text:
                    out.write(event.text)
                    out.flush()
            result = stream.result
    if out.isatty() and not result.text.endswith("\n"):
        out.write("\n")
    if not args.quiet:
        usage = result.usage
        err.write(
            f"[{result.finish_reason_name.lower()}; {usage.prompt_tokens} prompt + "
            f"{usage.completion_tokens} completion tokens; check {result.check_verdict.lower()}; "
            f"request {result.request_id}]\n"
        )
        if result.logprobs:
            cli_tokens.print_logprobs(result.logprobs, err)
    return EXIT_OK


def _regex_file(text: str, name: str) -> constraints_pb2.ConstraintIR:
    # An editor's final newline is not part of the pattern.
    return c.regex(text.rstrip("\r\n"), name=name)


_KINDS: dict[str, Callable[[str, str], constraints_pb2.ConstraintIR]] = {
    "json-schema": lambda text, name: c.json_schema(text, name=name),
    "regex": _regex_file,
    "lark": lambda text, name: c.lark(text, name=name),
    "gbnf": lambda text, name: c.gbnf(text, name=name),
}


def _cmd_validate(args: argparse.Namespace, out: TextIO, err: TextIO, stdin: TextIO) -> int:
    build = _KINDS[args.kind]
    built = [build(_read_text(path, stdin), path) for path in args.files]
    with _client(args) as client:
        response = client.validate_constraints(built)
    if args.json:
        out.write(_to_json(response) + "\n")
    else:
        _print_verdicts(response, out)
    return EXIT_OK if response.ok else EXIT_INVALID


def _print_verdicts(
    response: inference_service_pb2.ValidateConstraintsResponse, out: TextIO
) -> None:
    for verdict in response.verdicts:
        kind = _enum_name(
            constraints_pb2.ConstraintKind.Name(verdict.kind), "CONSTRAINT_KIND_"
        ).lower()
        label = f"[{verdict.index}] {verdict.name or '(unnamed)'} ({kind})"
        if verdict.ok:
            out.write(f"ok     {label}\n")
        else:
            e = verdict.error
            where = f" at {e.line}:{e.column}" if e.line else ""
            field = f" ({e.field})" if e.field else ""
            out.write(f"error  {label}: {e.reason}{where}: {e.message}{field}\n")
        for warning in verdict.warnings:
            out.write(f"       warning: {warning}\n")
    if response.HasField("combined_error"):
        e = response.combined_error
        out.write(f"error  (together): {e.reason}: {e.message}\n")
    if response.ok:
        out.write(f"ok: all {len(response.verdicts)} compile; digest {response.digest}\n")
    else:
        failed = sum(1 for v in response.verdicts if not v.ok)
        total = len(response.verdicts)
        out.write(f"invalid: {failed} of {total} do not compile\n" if failed else "invalid\n")


def _cmd_health(args: argparse.Namespace, out: TextIO, err: TextIO, stdin: TextIO) -> int:
    with _client(args) as client:
        status = client.health(args.service)
    out.write(status + "\n")
    return EXIT_OK if status == "SERVING" else EXIT_UNAVAILABLE


def _cmd_models(args: argparse.Namespace, out: TextIO, err: TextIO, stdin: TextIO) -> int:
    with _client(args) as client:
        info = client.model_info()
    if args.json:
        out.write(_to_json(info) + "\n")
        return EXIT_OK
    kinds = ", ".join(
        _enum_name(constraints_pb2.ConstraintKind.Name(k), "CONSTRAINT_KIND_").lower()
        for k in info.supported_constraint_kinds
    )
    rows = [
        ("model", f"{info.model_id} (revision {info.model_revision or '-'})"),
        ("engine", f"{info.engine_name} {info.engine_version}"),
        ("llguidance", info.llguidance_version),
        ("service", info.service_version),
        ("context length", str(info.context_length)),
        ("vocab size", str(info.vocab_size)),
        ("max tokens", str(info.max_tokens_limit)),
        ("max constraint bytes", str(info.max_constraint_bytes)),
        ("constraint kinds", kinds),
    ]
    if info.HasField("engine_settings"):
        e = info.engine_settings
        rows.append(
            (
                "engine settings",
                f"tensor parallel {e.tensor_parallel_size}, {e.dtype}, "
                f"quantization {e.quantization or 'none'}, KV cache {e.kv_cache_dtype}, "
                f"prefix caching {'on' if e.enable_prefix_caching else 'off'}, "
                f"{e.max_num_seqs} sequences / {e.max_num_batched_tokens} tokens per step, "
                f"executor {e.distributed_executor_backend}",
            )
        )
    for key, value in rows:
        out.write(f"{key + ':':22}{value}\n")
    return EXIT_OK


def _cmd_stats(args: argparse.Namespace, out: TextIO, err: TextIO, stdin: TextIO) -> int:
    with _client(args) as client:
        stats = client.server_stats()
    out.write(_to_json(stats) + "\n")
    return EXIT_OK


def _cmd_tokenize(args: argparse.Namespace, out: TextIO, err: TextIO, stdin: TextIO) -> int:
    text = stdin.read() if args.text == "-" else args.text
    with _client(args) as client:
        return cli_tokens.tokenize(client, args, text, out)


def _cmd_detokenize(args: argparse.Namespace, out: TextIO, err: TextIO, stdin: TextIO) -> int:
    with _client(args) as client:
        return cli_tokens.detokenize(client, args, out)


def _to_json(message: Any) -> str:
    data = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return json.dumps(data, ensure_ascii=False)


def _report(error: AnankeError, err: TextIO) -> None:
    err.write(f"ananke: error: {error.code_name}")
    if error.reason:
        err.write(f" {error.reason}")
    err.write(f": {error.message}\n")
    for violation in error.field_violations:
        err.write(f"  {violation.field}: {violation.description}\n")
    if error.retry_delay is not None:
        err.write(f"  retry after {error.retry_delay:g}s\n")


def main(
    argv: Sequence[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    stdin: TextIO | None = None,
) -> int:
    """Run the CLI; returns the exit code."""
    out, err, inp = stdout or sys.stdout, stderr or sys.stderr, stdin or sys.stdin
    parser = build_parser(env)
    args = parser.parse_args(argv)
    try:
        code: int = args.handler(args, out, err, inp)
    except (_UsageError, ValueError) as exc:
        # ValueError: an option the client refuses to send (a negative --seed).
        err.write(f"ananke: error: {exc}\n")
        return EXIT_USAGE
    except AnankeError as exc:
        out.flush()
        _report(exc, err)
        return exit_code_for(exc)
    except KeyboardInterrupt:
        err.write("\nananke: interrupted\n")
        return EXIT_INTERRUPTED
    return code


if __name__ == "__main__":
    sys.exit(main())
