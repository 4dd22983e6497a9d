"""`abliterate organism build|path`: the built-in model organism."""

from __future__ import annotations

import argparse
import json

from abliterate.cli.console import err, out, stage_progress
from abliterate.organism.arches import ARCHES


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("organism", help="build the built-in model organism")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    build = actions.add_parser("build", help="train the organism into a model directory")
    build.add_argument("--output", required=True, help="directory to write the model to")
    _arch_seed(build)
    build.add_argument("--overwrite", action="store_true", help="replace a non-empty --output")
    build.set_defaults(handler=run_build)

    path = actions.add_parser(
        "path", help="print the cached organism's directory (build if needed)"
    )
    _arch_seed(path)
    path.set_defaults(handler=run_path)

    prefs = actions.add_parser("preferences", help="write DPO preference pairs (for `heal`)")
    prefs.add_argument("--output", required=True, help="JSONL file to write")
    prefs.add_argument("--n", type=int, default=256, help="number of pairs (default 256)")
    prefs.add_argument("--seed", type=int, default=0)
    prefs.set_defaults(handler=run_preferences)


def _arch_seed(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--arch", default="llama", choices=sorted(ARCHES), help="module layout (default: llama)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of corpus and training")


def run_build(args: argparse.Namespace) -> int:
    from abliterate.organism import build_organism

    with stage_progress() as update:
        path = build_organism(
            args.output,
            arch=args.arch,
            seed=args.seed,
            overwrite=args.overwrite,
            on_progress=update,
        )
    info = json.loads((path / "organism.json").read_text())
    m = info["metrics"]
    err.print(
        f"built {args.arch} organism in {info['build_seconds']:.0f}s: refusal on held-out harmful "
        f"{m['harmful_refusal']:.2f}, on harmless {m['harmless_refusal']:.2f}, "
        f"capability {m['capability']:.2f}"
    )
    out.print(str(path), highlight=False)
    return 0


def run_path(args: argparse.Namespace) -> int:
    from abliterate.organism import organism_path

    with stage_progress() as update:
        path = organism_path(args.arch, args.seed, on_progress=update)
    out.print(str(path), highlight=False)
    return 0


def run_preferences(args: argparse.Namespace) -> int:
    from abliterate.organism.preferences import preference_pairs

    pairs = preference_pairs(args.seed, args.n)
    with open(args.output, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(p) + "\n" for p in pairs)
    err.print(f"wrote {len(pairs)} preference pairs to {args.output}")
    return 0
