"""``maskadapter merge``: complete the dataset-level files of a batch run (``segment``) that did not finish."""

from __future__ import annotations

import argparse
import sys

__all__ = ["register", "run_merge"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``merge`` sub-command."""
    p = subparsers.add_parser(
        "merge", help="merge the per-image records of an interrupted segment run",
        description="Write manifest.json (and with --format coco panoptic.json and instances.json) of a "
                    "`maskadapter segment` output folder from its per-image records, e.g. after a crash. "
                    "Images without a record are listed as missing; re-running the segment command "
                    "computes just those.")
    p.add_argument("output", help="the output folder of `maskadapter segment`")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_merge)


def run_merge(args: argparse.Namespace) -> int:
    """Merge; print the counts; exit status 1 when images failed or are missing."""
    from ..inference.batch import merge_outputs

    report = merge_outputs(args.output, progress=not args.quiet)
    print(f"{report.total} images: {report.ok} segmented, {report.failed} failed, {report.missing} missing; "
          f"wrote {', '.join(str(report.output_dir / f) for f in report.files)}")
    for path, error in report.failures[:10]:
        print(f"failed: {path}: {error}", file=sys.stderr)
    return 1 if report.failed or report.missing else 0
