"""``surgical-depth download NAME``: fetch official weights into the cache, with progress and SHA256 check."""
from __future__ import annotations

import argparse
import urllib.error
from pathlib import Path

from . import progress_of


def register(subparsers) -> None:
    from ..weights import WEIGHTS

    p = subparsers.add_parser("download", help="download official Depth Anything weights into the local cache",
                              description="The only command that uses the network. Files are SHA256-checked. "
                                          "Licences of the weights: " + ", ".join(
                                              f"{name} {WEIGHTS[name].license}" for name in sorted(WEIGHTS))
                                          + " (CC-BY-NC-4.0: non-commercial use only).")
    p.add_argument("name", choices=sorted(WEIGHTS), metavar="NAME",
                   help=f"registry name, one of: {', '.join(sorted(WEIGHTS))} (licences: see above)")
    p.add_argument("--cache-dir", default=None,
                   help="weight cache folder (default $SURGICAL_DEPTH_CACHE, else ~/.cache/surgical-depth/weights; "
                        "models are loaded by name from that default: set the variable to use another folder)")
    p.add_argument("--sha256", default=None, help="expected SHA256 of the file, as published with the weights")
    p.add_argument("--trust-on-first-use", action="store_true",
                   help="when no SHA256 is known, record the downloaded file's digest and verify it on every load")
    p.set_defaults(func=run)


def _check_cache_dir(cache_dir: str | None) -> None:
    """Refuse a ``--cache-dir`` that is (or lies under) a file, naming the flag, before anything is created."""
    if cache_dir is None:
        return
    folder = Path(cache_dir)
    blocking = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if blocking is not None and not blocking.is_dir():
        where = "is a file" if blocking == folder else f"lies under the file {blocking}"
        raise ValueError(f"--cache-dir {folder} {where}; give a folder")


def run(args: argparse.Namespace) -> int:
    from ..weights import WEIGHTS, download

    _check_cache_dir(args.cache_dir)
    url = WEIGHTS[args.name].url
    stage = None  # opened at the first call, when the size (0 = unknown) and the bytes resumed from are known

    def progress(done: int, total: int) -> None:
        nonlocal stage
        if stage is None:
            stage = progress_of(args).stage("download", total or None, unit="B", desc=args.name, initial=done)
        stage.update(done - stage.step)

    try:
        path = download(args.name, args.cache_dir, sha256=args.sha256,
                        trust_on_first_use=args.trust_on_first_use, progress=progress)
    except urllib.error.URLError as exc:  # urllib's str() is "<urlopen error ...>" without the URL
        reason = getattr(exc.reason, "strerror", None) or exc.reason
        if isinstance(exc, urllib.error.HTTPError):
            reason = f"HTTP {exc.code} {exc.reason}"
        raise OSError(f"download {args.name}: cannot reach {url} ({reason})") from None
    except (TimeoutError, ConnectionError) as exc:  # the connection lost or the response broken while reading
        again = " to resume it" if args.sha256 or WEIGHTS[args.name].sha256 else ""  # resumable: a digest to check
        raise OSError(f"download {args.name}: {url} broke off ({str(exc) or type(exc).__name__}); run the command "
                      f"again{again}") from None
    finally:
        if stage is not None:
            stage.close()
    licence = WEIGHTS[args.name].license
    print(f"saved {args.name} to {path} (licence {licence}{licence_note(licence)})")
    args.result = {"name": args.name, "path": str(path), "license": licence}
    return 0


def licence_note(licence: str) -> str:
    """What a user must know about a weights licence beyond its name (``""`` when nothing)."""
    return ": non-commercial use only" if "-NC" in licence.upper() else ""
