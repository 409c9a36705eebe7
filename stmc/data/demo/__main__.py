"""Command line: ``python -m stmc.data.demo build [--root demo_corpus] [--seed 0] [--scale 1] [--workers 2]``.

``python -m stmc.data.demo packages [--missing]`` prints the Debian packages needed (standard library only, so
it runs before the virtualenv exists); ``build`` is a no-op when the root already holds the same corpus.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from stmc.data.demo import packages


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stmc.data.demo", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="build the corpus (skipped if already built)")
    build.add_argument("--root", type=Path, default=Path(os.environ.get("STMC_DEMO_ROOT", "demo_corpus")))
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--scale", type=float, default=1.0, help="size factor (small values for tests)")
    build.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    build.add_argument("--force", action="store_true", help="rebuild even if already built")
    listing = commands.add_parser("packages", help="print the Debian packages the corpus needs")
    listing.add_argument("--missing", action="store_true", help="only those not installed")
    args = parser.parse_args(argv)

    if args.command == "packages":
        print(" ".join(packages.missing() if args.missing else packages.PACKAGES))
        return 0
    from stmc.data.demo.build import MissingPackages, build_corpus

    try:
        if not build_corpus(args.root, seed=args.seed, scale=args.scale, workers=args.workers, force=args.force):
            print(f"demo corpus already built in {args.root} (seed {args.seed}, scale {args.scale})")
    except MissingPackages as err:
        print(err, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
