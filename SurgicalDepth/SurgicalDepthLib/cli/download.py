"""``surgical-depth download NAME``: fetch official weights into the cache, with progress and SHA256 check."""
from __future__ import annotations

import argparse


def register(subparsers) -> None:
    from ..weights import WEIGHTS

    p = subparsers.add_parser("download", help="download official Depth Anything weights into the local cache",
                              description="The only command that uses the network. Files are SHA256-checked.")
    p.add_argument("name", choices=sorted(WEIGHTS), metavar="NAME",
                   help=f"registry name, one of: {', '.join(sorted(WEIGHTS))}")
    p.add_argument("--cache-dir", default=None, help="weight cache folder (default ~/.cache/surgical-depth/weights)")
    p.add_argument("--sha256", default=None, help="expected SHA256 of the file, as published with the weights")
    p.add_argument("--trust-on-first-use", action="store_true",
                   help="when no SHA256 is known, record the downloaded file's digest and verify it on every load")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..weights import download

    bar = tqdm(unit="B", unit_scale=True, desc=args.name)

    def progress(done: int, total: int) -> None:
        bar.total = total or None
        bar.update(done - bar.n)

    try:
        path = download(args.name, args.cache_dir, sha256=args.sha256,
                        trust_on_first_use=args.trust_on_first_use, progress=progress)
    finally:
        bar.close()
    print(f"saved {args.name} to {path}")
    return 0
