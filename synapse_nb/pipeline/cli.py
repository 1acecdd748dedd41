"""Command line: ``python -m synapse_nb demo-data | connectome-data | convert-vnc | run <yaml> | pretrain <yaml> | sweep <yaml>``."""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from ..core.config import ConfigError, read_yaml
from ..core.errors import DataError
from ..data.demo import DEMO_PRESETS, demo_spec, make_demo_dataset
from ..data.vnc import VncSettings, convert_vnc
from . import artifacts as A
from .runner import RunnerError, RunStopped, run_pipeline
from .sweep import run_sweep

logger = logging.getLogger("synapse_nb")


def _demo_data(args: argparse.Namespace) -> int:
    given = {"n_bboxes": args.n_bboxes, "synapses_per_bbox": args.synapses_per_bbox, "seed": args.seed,
             "shape": tuple(args.shape) if args.shape else None}
    try:
        spec = demo_spec(args.preset, **{k: v for k, v in given.items() if v is not None})
    except ValueError as exc:
        raise DataError(f"demo-data: {exc}") from None
    table = make_demo_dataset(args.out, spec)
    logger.info("demo dataset with %d synapses in %d bboxes written to %s", len(table), spec.n_bboxes, args.out)
    return 0


def _connectome_data(args: argparse.Namespace) -> int:
    from ..data.synthetic_connectome import make_synthetic_connectome

    try:
        made = make_synthetic_connectome(args.out, shape_zyx=tuple(args.shape), n_synapses=args.synapses, seed=args.seed,
                                         webknossos=not args.no_webknossos)
    except ValueError as exc:
        raise DataError(f"connectome-data: {exc}") from None
    logger.info("synthetic connectome: %d synapses, %d axons, %d segments in %s x %s x %s voxels (z, y, x), %.0f s; "
                "description %s (set connectome: %s in a parameter file)", made.n_synapses, made.n_axons,
                made.n_segments, *made.shape_zyx, made.seconds, made.description, made.description)
    return 0


def _convert_vnc(args: argparse.Namespace) -> int:
    try:
        settings = VncSettings(link_min_iou=None if args.no_link else args.link_min_iou)
    except ValueError as exc:
        from ..core.errors import DataError

        raise DataError(f"convert-vnc: {exc}") from None
    path = convert_vnc(args.src, args.out, settings=settings)
    logger.info("dataset description written to %s (set dataset: %s in a parameter file)", path, path)
    return 0


def _run(args: argparse.Namespace) -> int:
    result = run_pipeline(args.params, run_dir=args.run_dir, reports_root=args.reports_dir, only=args.only, start=args.start)
    for step in result.steps:
        logger.info("%-12s %-6s %6.1f s  %s", step.notebook, step.status, step.seconds, step.html or "")
    for step, why in result.not_asked.items():
        logger.info("%-12s %s", step, why)
    logger.info("run directory: %s", result.run.path)
    return 0


#: What the ``pretrain`` command runs: the cubes, then the training (with ``pretrain`` forced on).
PRETRAIN_STEPS = ("01_load", "02_pretrain")


def _pretrain(args: argparse.Namespace) -> int:
    values = {**read_yaml(args.params), "pretrain": True}
    result = run_pipeline(values, run_dir=args.run_dir, reports_root=args.reports_dir, only=list(PRETRAIN_STEPS),
                          source=f"{args.params} (with pretrain: true)")
    for step in result.steps:
        logger.info("%-12s %-6s %6.1f s  %s", step.notebook, step.status, step.seconds, step.html or "")
    run = result.run
    weights = run.file(A.PRETRAIN_WEIGHTS)
    logger.info("pretrained weights: %s", weights)
    logger.info("to extract with them: set pretrain: true in %s and run 'python -m synapse_nb run %s --run-dir %s "
                "--from 03_extract', or give weights_path: %s in any parameter file", args.params, args.params, run.path, weights)
    return 0


def _sweep(args: argparse.Namespace) -> int:
    summary = run_sweep(args.spec, sweep_dir=args.sweep_dir, reports_root=args.reports_dir, only=args.only, start=args.start)
    cols = [c for c in ("combination", "status", "seconds", "k", "silhouette", "ari", "error") if c in summary.columns]
    logger.info("sweep summary:\n%s", summary[cols].to_string(index=False))
    failed = int((summary["status"] != "ok").sum())
    if failed:
        logger.error("%d of %d combinations failed", failed, len(summary))
    return 1 if failed else 0


def _step_arguments(parser: argparse.ArgumentParser) -> None:
    """The options ``run`` and ``sweep`` share: which steps, and where reports go."""
    parser.add_argument("--only", nargs="+", default=None, help="run only these steps (e.g. 01_load)")
    parser.add_argument("--from", dest="start", default=None, help="run from this step on")
    parser.add_argument("--reports-dir", default="reports", help="where reports are published (default reports/)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m synapse_nb", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo-data", help="write the synthetic demo dataset in the seed layout")
    demo.add_argument("--out", default="data/demo", help="output folder (default data/demo)")
    demo.add_argument("--preset", choices=sorted(DEMO_PRESETS), default="default",
                      help="default (3 classes, quick), hard (5 classes that differ in texture/shape, "
                      "brightness nuisance) or brightness (one class, brightness per bbox; for tests)")
    demo.add_argument("--n-bboxes", type=int, default=None, help="default: the preset's")
    demo.add_argument("--synapses-per-bbox", type=int, default=None, help="default: the preset's")
    demo.add_argument("--shape", type=int, nargs=3, metavar=("Z", "Y", "X"), help="bbox shape in voxels")
    demo.add_argument("--seed", type=int, default=None, help="default 0")
    demo.set_defaults(func=_demo_data)
    conn = sub.add_parser("connectome-data", help="write the synthetic connectome (chunked zarr and webKnossos layers, "
                          "synapse table, agglomerates, connectome descriptions)")
    conn.add_argument("--out", default="data/connectome", help="output folder (default data/connectome)")
    conn.add_argument("--shape", type=int, nargs=3, metavar=("Z", "Y", "X"), default=[512, 1024, 1024],
                      help="volume shape in voxels (default 512 1024 1024)")
    conn.add_argument("--synapses", type=int, default=3000, help="number of synapses (default 3000)")
    conn.add_argument("--seed", type=int, default=0, help="default 0")
    conn.add_argument("--no-webknossos", action="store_true", help="write the zarr layers only")
    conn.set_defaults(func=_connectome_data)
    vnc = sub.add_parser("convert-vnc", help="convert the real Drosophila VNC ssTEM stack (CC BY-NC-SA 3.0) into a dataset")
    vnc.add_argument("--src", default="../shared/realdata/drosophila_vnc_sstem", help="source folder holding stack1/")
    vnc.add_argument("--out", default="data/vnc", help="output folder, replaced whole (default data/vnc; never commit it)")
    vnc.add_argument("--link-min-iou", type=float, default=0.5, help="link neurite profiles of neighbouring sections at this IoU")
    vnc.add_argument("--no-link", action="store_true", help="keep neurite ids per section (no linking across sections)")
    vnc.set_defaults(func=_convert_vnc)
    run = sub.add_parser("run", help="run the notebooks on a parameter file")
    run.add_argument("params", help="YAML parameter file, e.g. parameters/demo.yaml")
    run.add_argument("--run-dir", default=None, help="reuse this run directory instead of a new one")
    _step_arguments(run)
    run.set_defaults(func=_run)
    pre = sub.add_parser("pretrain", help="build the cubes and train the network on them (01_load and 02_pretrain, "
                         "with pretrain: true whatever the file says); prints where the weights are")
    pre.add_argument("params", help="YAML parameter file, e.g. parameters/demo_pretrain.yaml")
    pre.add_argument("--run-dir", default=None, help="reuse this run directory (a killed training resumes there)")
    pre.add_argument("--reports-dir", default="reports", help="where reports are published (default reports/)")
    pre.set_defaults(func=_pretrain)
    sweep = sub.add_parser("sweep", help="run every combination of a sweep file (base + grid)")
    sweep.add_argument("spec", help="sweep YAML, e.g. parameters/sweep_segtypes.yaml")
    sweep.add_argument("--sweep-dir", default=None, help="resume this sweep directory (finished combinations are kept)")
    _step_arguments(sweep)
    sweep.set_defaults(func=_sweep)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    try:
        return args.func(args)
    except RunStopped:  # the runner has logged what was kept
        return 3
    except (ConfigError, DataError, RunnerError) as exc:
        logger.error("%s", exc)
        return 2
    except OSError as exc:  # a file or folder the system refused: one line naming it
        where = f": {exc.filename}" if exc.filename else ""
        logger.error("%s%s", exc.strerror or exc, where)
        return 2
    except KeyboardInterrupt:  # the runner has marked the run interrupted; it can be resumed
        logger.error("interrupted; resume with --run-dir <run> --from <step>")
        return 130


if __name__ == "__main__":
    sys.exit(main())
