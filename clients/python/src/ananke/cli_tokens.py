"""The `ananke` command's tokenize and detokenize subcommands, and the
generate options for candidates, log probabilities and sampling controls."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from google.protobuf import json_format

from ananke.client import AnankeClient
from ananke.request import Message
from ananke.results import GenerationResult
from ananke.v1 import generation_pb2

__all__ = [
    "add_parsers",
    "add_sampling_options",
    "detokenize",
    "print_candidates",
    "print_logprobs",
    "sampling_kwargs",
    "tokenize",
]

Handler = Callable[[argparse.Namespace, TextIO, TextIO, TextIO], int]


def _bias(text: str) -> tuple[int, float]:
    token, sep, value = text.partition("=")
    try:
        if not sep:
            raise ValueError
        return int(token), float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected TOKEN_ID=BIAS, got {text!r}") from None


def add_sampling_options(group: Any) -> None:
    """The generate options beyond the basic sampling knobs."""
    group.add_argument("--n", type=int, metavar="N", help="candidates to generate (default 1)")
    group.add_argument(
        "--logprobs", type=int, metavar="K", help="per-token log probabilities with K alternatives"
    )
    group.add_argument(
        "--prompt-logprobs", type=int, metavar="K", help="prompt-token log probabilities (K alts)"
    )
    group.add_argument("--min-tokens", type=int, metavar="N", help="tokens before EOS may end it")
    group.add_argument(
        "--stop-token-id",
        type=int,
        action="append",
        default=[],
        metavar="ID",
        help="token id that ends generation (repeat)",
    )
    group.add_argument("--repetition-penalty", type=float, help="in (0, 2]; 1 is off")
    group.add_argument("--presence-penalty", type=float, help="-2 to 2; 0 is off")
    group.add_argument("--frequency-penalty", type=float, help="-2 to 2; 0 is off")
    group.add_argument(
        "--logit-bias",
        type=_bias,
        action="append",
        default=[],
        metavar="ID=BIAS",
        help="add BIAS (-100 to 100) to a token's logit (repeat)",
    )
    group.add_argument(
        "--ignore-eos", action="store_true", default=None, help="generate until --max-tokens"
    )


def sampling_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The generate() keyword arguments for the options above."""
    return {
        "n": args.n,
        "logprobs": args.logprobs,
        "prompt_logprobs": args.prompt_logprobs,
        "min_tokens": args.min_tokens,
        "stop_token_ids": args.stop_token_id,
        "repetition_penalty": args.repetition_penalty,
        "presence_penalty": args.presence_penalty,
        "frequency_penalty": args.frequency_penalty,
        "logit_bias": dict(args.logit_bias) or None,
        "ignore_eos": args.ignore_eos,
    }


def add_parsers(
    sub: Any,
    parent: argparse.ArgumentParser,
    epilog: str,
    tokenize_handler: Handler,
    detokenize_handler: Handler,
) -> None:
    """Registers the tokenize and detokenize subcommands."""
    fmt = argparse.RawDescriptionHelpFormatter
    tok = sub.add_parser(
        "tokenize",
        parents=[parent],
        help="token ids of a prompt, as generate would send it",
        epilog=epilog,
        formatter_class=fmt,
    )
    tok.add_argument("text", metavar="TEXT", help="the text ('-' reads standard input)")
    tok.add_argument(
        "--chat", action="store_true", help="send TEXT as a user chat message (chat template)"
    )
    tok.add_argument("--system", metavar="TEXT", help="system message (implies --chat)")
    tok.add_argument("--tokens", action="store_true", help="also print each token's text")
    tok.add_argument("--json", action="store_true", help="print the response as JSON")
    tok.set_defaults(handler=tokenize_handler)
    detok = sub.add_parser(
        "detokenize",
        parents=[parent],
        help="the text of token ids",
        epilog=epilog,
        formatter_class=fmt,
    )
    detok.add_argument("token_ids", nargs="+", type=int, metavar="ID", help="token ids")
    detok.add_argument(
        "--skip-special-tokens", action="store_true", help="leave special tokens out"
    )
    detok.set_defaults(handler=detokenize_handler)


def tokenize(client: AnankeClient, args: argparse.Namespace, text: str, out: TextIO) -> int:
    """Prints the ids (one line), or each token, or the JSON response."""
    messages: list[Message] | None = None
    if args.chat or args.system is not None:
        messages = [("system", args.system)] if args.system else []
        messages.append(("user", text))
    response = client.tokenize(
        None if messages is not None else text,
        messages=messages,
        return_tokens=args.tokens or args.json,
    )
    if args.json:
        data = json_format.MessageToDict(response, preserving_proto_field_name=True)
        out.write(json.dumps(data, ensure_ascii=False) + "\n")
    elif args.tokens:
        for token in response.tokens:
            out.write(f"{token.token_id}\t{json.dumps(token.text, ensure_ascii=False)}\n")
        out.write(f"{response.count} tokens\n")
    else:
        out.write(" ".join(str(t) for t in response.token_ids) + "\n")
    return 0


def detokenize(client: AnankeClient, args: argparse.Namespace, out: TextIO) -> int:
    """Prints the text of the ids."""
    out.write(client.detokenize(args.token_ids, skip_special_tokens=args.skip_special_tokens))
    out.write("\n")
    return 0


def print_candidates(result: GenerationResult, out: TextIO) -> None:
    """Each candidate's text under a header with its finish reason and check."""
    for candidate in result.candidates:
        out.write(
            f"--- candidate {candidate.index} ({candidate.finish_reason_name.lower()}, "
            f"check {candidate.check_verdict.lower()}, "
            f"{candidate.usage.completion_tokens} tokens) ---\n"
        )
        out.write(candidate.text + ("" if candidate.text.endswith("\n") else "\n"))


def print_logprobs(positions: Sequence[generation_pb2.PositionLogprobs], err: TextIO) -> None:
    """One line per output token: its text, logprob and the alternatives."""
    for position in positions:
        token = position.token
        alternatives = ", ".join(
            f"{json.dumps(t.text, ensure_ascii=False)} {t.logprob:.3f}" for t in position.top
        )
        line = f"{json.dumps(token.text, ensure_ascii=False)}\t{token.logprob:.3f}"
        err.write(line + (f"\t[{alternatives}]" if alternatives else "") + "\n")
