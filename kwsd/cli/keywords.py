"""`kwsd keywords check`: show how each keyword tokenises and what is weak about it."""

from __future__ import annotations

import argparse
import json

from kwsd.cli.common import add_keyword_args, add_model_args, load_spotter_and_keywords


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("keywords", help="inspect keyword lists")
    ksub = p.add_subparsers(dest="keywords_command", metavar="ACTION", required=True)
    check = ksub.add_parser("check", help="print the BPE pieces and warnings per keyword")
    check.add_argument("phrases", nargs="*", metavar="PHRASE")
    add_keyword_args(check)
    add_model_args(check)
    check.add_argument("--json", action="store_true")
    check.set_defaults(func=_check)


def _check(args: argparse.Namespace) -> int:
    args.keywords = [*args.phrases, *args.keywords]
    _, _, keywords = load_spotter_and_keywords(args, "pass phrases, --keywords or --keywords-file")
    if args.json:
        print(
            json.dumps(
                {
                    "keywords": [
                        {
                            "display": k.display,
                            "phrase": k.phrase,
                            "pieces": list(k.pieces),
                            "alternates": [list(s) for s in k.sequences[1:]],
                            "boost": k.boost,
                            "threshold": k.threshold,
                        }
                        for k in keywords.keywords
                    ],
                    "warnings": list(keywords.warnings),
                },
                ensure_ascii=False,
                indent=2,
            )
        )
        return 0
    for k in keywords.keywords:
        line = f"{k.display:<24} {' '.join(k.pieces):<40} :{k.boost:g} #{k.threshold:g}"
        print(line)
        for alt in k.sequences[1:]:
            print(f"{'':<24} {' '.join(alt)}")
    for warning in keywords.warnings:
        print(f"warning: {warning}")
    return 0
