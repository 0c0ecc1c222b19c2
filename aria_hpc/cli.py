"""aria-hpc: one console script. Each subcommand parses its arguments, loads its config and calls its
stage; the tables it prints (regions, bank status, eval) are formatted here."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from aria_hpc.config import Config, dump_yaml, load_config, save_resolved
from aria_hpc.entry import exit_code, parse_args
from aria_hpc.errors import UserError
from aria_hpc.fsio import require_writable


def _add_shard_array_args(p: argparse.ArgumentParser, rebuild_help: str) -> None:
    """CONFIG [key=value ...] --executor --shard i --rebuild: a stage built as one array task per shard."""
    _add_config_args(p)
    p.add_argument("--executor", choices=("local", "slurm", "debug"), help="one submitit array task per shard")
    p.add_argument("--shard", type=int, metavar="i", help="only shard i (a hand-made array task)")
    p.add_argument("--rebuild", action="store_true", help=rebuild_help)


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML config file (see configs/)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. aria.alpha=0.5")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")


def _resolve(args: argparse.Namespace) -> Config | None:
    cfg = load_config(args.config, args.overrides)
    print(dump_yaml(cfg), end="")
    return None if args.dry_run else cfg


def _start_run(args: argparse.Namespace) -> tuple[Config, Path] | None:
    """Resolve the config (None on --dry-run) and save it into run.dir, for run-directory commands."""
    cfg = _resolve(args)
    if cfg is None:
        return None
    run_dir = Path(cfg.run.dir)
    require_writable(run_dir, "run.dir")
    save_resolved(cfg, run_dir)
    return cfg, run_dir


def cmd_simulate(args: argparse.Namespace) -> int:
    from aria_hpc.regions.simulate import TABLE_HEADER, run_simulation, table_row

    started = _start_run(args)
    if started is None:
        return 0
    cfg, run_dir = started
    print(TABLE_HEADER)
    with open(run_dir / "metrics.jsonl", "w") as log:
        for rec in run_simulation(cfg):
            log.write(json.dumps(rec) + "\n")
            print(table_row(rec))
    print(f"wrote {run_dir / 'metrics.jsonl'} and {run_dir / 'config.yaml'}")
    return 0


def _parse_shard(text: str | None, shards: int) -> list[int]:
    if text is None:
        return list(range(shards))
    i, sep, n = text.partition("/")
    try:
        index, count = int(i), int(n)
    except ValueError:
        raise UserError(f"--shard takes i/n (e.g. --shard 3/8), not '{text}'") from None
    if not sep or count != shards or not 0 <= index < count:
        raise UserError(f"--shard {text}: need 0 <= i < n and n equal to embed.shards ({shards})")
    return [index]


def cmd_embed(args: argparse.Namespace) -> int:
    import shutil

    from tqdm import tqdm

    from aria_hpc.conditioning.embeddings import build_shards, open_pool_and_encoder, shard_range, stores_tokens

    cfg = _resolve(args)
    if cfg is None:
        return 0
    shards = _parse_shard(args.shard, cfg.embed.shards)
    embed_dir = Path(cfg.embed.dir)
    require_writable(embed_dir, "embed.dir")
    if args.rebuild and embed_dir.exists():
        shutil.rmtree(embed_dir)
    save_resolved(cfg, embed_dir / "runs" / f"embed-{'all' if args.shard is None else args.shard.replace('/', 'of')}")
    pool, encoder = open_pool_and_encoder(cfg)
    print(f"pool: {len(pool)} prompts (dropped {pool.dropped['empty']} empty and {pool.dropped['duplicate']} "
          f"duplicate), digest {pool.digest[:16]}; encoder {encoder.model_dir} ({encoder.dim}-d)", flush=True)
    bars: dict[int, tqdm] = {}

    def progress(index: int, done: int) -> None:
        start, stop = shard_range(len(pool), index, cfg.embed.shards)
        if index not in bars:
            bars[index] = tqdm(total=stop - start, desc=f"shard {index}/{cfg.embed.shards}", unit="prompt",
                               disable=args.quiet)
        bars[index].n = done
        bars[index].refresh()
        if args.quiet:
            print(f"shard {index}: {done}/{stop - start} rows", flush=True)

    for result in build_shards(embed_dir, pool, encoder, shards, cfg.embed.shards,
                               batch_size=cfg.text_encoder.batch_size, store_tokens=stores_tokens(cfg, pool),
                               progress=progress):
        if result.index in bars:
            bars.pop(result.index).close()
        state = ("already complete" if result.resumed_from == result.rows else
                 f"resumed at row {result.resumed_from}" if result.resumed_from else "built")
        print(f"shard {result.index}/{cfg.embed.shards}: {result.rows} rows, {state}", flush=True)
    return 0


def cmd_signatures(args: argparse.Namespace) -> int:
    """Teacher signatures (regions.features=teacher): every shard, one (--shard i, an array task), or
    one submitit array task per shard (--executor)."""
    import shutil
    import time

    from aria_hpc.build import signatures

    cfg = _resolve(args)
    if cfg is None:
        return 0
    root = signatures.signature_paths(cfg)[0].parent
    require_writable(root, "the signatures directory (embed.dir/signatures)")
    if args.rebuild and args.shard is None:
        shutil.rmtree(root, ignore_errors=True)
    t0 = time.perf_counter()
    if args.shard is not None:
        forwards = signatures.build_signature_shard(cfg, args.shard)
    else:
        forwards = signatures.build_signatures(cfg, args.executor, log=lambda msg: print(msg, flush=True))
    elapsed = time.perf_counter() - t0
    rate = f" ({elapsed / forwards * 1e3:.2f} ms a forward)" if forwards else " (every shard already complete)"
    print(f"signatures in {root}: {forwards} teacher forwards in {elapsed:.1f}s{rate}")
    return 0


def cmd_pairs(args: argparse.Namespace) -> int:
    """The paired set of a pipeline teacher: every shard, one (--shard i, an array task), or one
    submitit array task per shard (--executor)."""
    import shutil
    import time

    from aria_hpc import pairs

    cfg = _resolve(args)
    if cfg is None:
        return 0
    if pairs.source_of(cfg) == "world":
        print("the shapes world keeps its own paired set: nothing to build (aria-hpc pairs is for a pipeline teacher)")
        return 0
    root = Path(cfg.pairs.dir)
    require_writable(root, "pairs.dir")
    if args.rebuild and args.shard is None:
        shutil.rmtree(root, ignore_errors=True)
    t0 = time.perf_counter()
    last = [t0]

    def progress(done: int) -> None:  # plain lines (a log file and a terminal read the same), every 10 s
        if time.perf_counter() - last[0] >= 10 or args.quiet:
            last[0] = time.perf_counter()
            print(f"pairs: {done} rows of the shard written ({time.perf_counter() - t0:.0f}s)", flush=True)
    if args.shard is not None:
        made = pairs.build_shard(cfg, args.shard, progress=progress)
    else:
        made = pairs.build_pairs(cfg, args.executor, log=lambda msg: print(msg, flush=True), progress=progress)
    elapsed = time.perf_counter() - t0
    rate = f" ({elapsed / made:.2f} s an image)" if made else " (every shard already complete)"
    print(f"paired set in {root} ({pairs.source_of(cfg)}): {made} rows made in {elapsed:.1f}s{rate}")
    return 0


def cmd_regions(args: argparse.Namespace) -> int:
    import time

    from aria_hpc.build import regions as region_build
    from aria_hpc.conditioning.embeddings import EmbeddingStore
    from aria_hpc.conditioning.kmeans import save_regions

    cfg = _resolve(args)
    if cfg is None:
        return 0
    rc = cfg.regions
    require_writable(Path(rc.path).parent, "the directory of regions.path")
    store = EmbeddingStore(cfg.embed.dir, cfg.embed.shards)
    t0 = time.perf_counter()
    if args.centroids:
        print(f"wrote {region_build.save_centroids(cfg, store)} (now `--shard i` for each of {cfg.embed.shards} "
              "embedding shards, then `--merge`)")
        return 0
    if args.shard is not None:
        region_build.shard_count_ok(cfg)
        print(f"wrote {region_build.assign_shard(cfg, args.shard)}")
        return 0
    if args.merge:
        regions = region_build.merge_parts(cfg, store)
        save_regions(regions, Path(rc.path), region_build.map_attrs(cfg, store))
    else:
        regions = region_build.build_regions(cfg, args.executor, log=lambda msg: print(msg, flush=True))
    elapsed = time.perf_counter() - t0
    path = Path(rc.path)
    save_resolved(cfg, Path(rc.path).parent / "runs" / "regions")
    print("\n".join(region_build.summary_lines(cfg, store, regions, elapsed)))
    print(f"wrote {path}")
    return 0


def cmd_teacher(args: argparse.Namespace) -> int:
    from aria_hpc.build.teacher import report_lines, train_teacher

    started = _start_run(args)
    if started is None:
        return 0
    cfg, run_dir = started
    report = train_teacher(cfg, run_dir, log=lambda msg: print(msg, flush=True))
    print("\n" + "\n".join(report_lines(report)))
    print(f"wrote {run_dir / 'teacher'}, {run_dir / 'judge'} and {run_dir / 'teacher_eval.json'}")
    return 0


def cmd_bank(args: argparse.Namespace) -> int:
    from aria_hpc.build.bank import build_bank, check_read_only_bank

    if args.shards is not None:
        args.overrides = [*args.overrides, f"bank.shards={args.shards}"]
    cfg = _resolve(args)
    if cfg is None:
        return 0
    if not cfg.bank.dir:
        raise UserError("bank.dir is not set: give the directory the bank lives in (bank.dir=runs/bank)")
    if args.status:
        print_bank_status(Path(cfg.bank.dir))
        return 0
    bank_dir = Path(cfg.bank.dir)
    read_only = bank_dir.is_dir() and not os.access(bank_dir, os.W_OK | os.X_OK)
    if not read_only:
        require_writable(bank_dir, "bank.dir")
        save_resolved(cfg, bank_dir / "runs" / f"bank-{'all' if args.shard is None else args.shard}")
    from tqdm import tqdm

    bars: dict[int, tqdm] = {}

    def progress(index: int, done: int, total: int) -> None:
        if args.quiet:
            print(f"shard {index}: {done}/{total} entries", flush=True)
            return
        bar = bars.setdefault(index, tqdm(total=total, desc=f"shard {index}", unit="entry"))
        bar.n = done
        bar.refresh()
        if done == total:
            bar.close()

    if args.verify:  # every file the bank is built from is hashed too, not only its shards
        os.environ["ARIA_VERIFY"] = "1"
    if read_only:
        if args.rebuild or args.shard is not None:
            raise UserError(f"bank {bank_dir} is read-only: --rebuild and --shard need write access to it")
        result = check_read_only_bank(cfg, verify=args.verify, log=lambda msg: print(msg, flush=True))
    else:
        result = build_bank(cfg, shards=None if args.shard is None else [args.shard], rebuild=args.rebuild,
                            executor=args.executor, verify=args.verify, log=lambda msg: print(msg, flush=True),
                            progress=progress)
    m = result["manifest"]
    state = "complete" if m["complete"] else f"incomplete (missing shards {m['missing'][:8]})"
    print(f"teacher forwards: {result['teacher_forwards']}")
    print(f"bank {cfg.bank.dir}: {m['entries']} entries in {len(m['shards'])} shards, {state}")
    return 0


def print_bank_status(bank_dir: Path) -> None:
    from aria_hpc.build.bank import status_lines

    print("\n".join(status_lines(bank_dir)))


def cmd_train(args: argparse.Namespace) -> int:
    from aria_hpc.train.command import train_command

    return train_command(args.config, args.overrides, args.dry_run)


def cmd_eval(args: argparse.Namespace) -> int:
    from aria_hpc.eval.evaluate import evaluate_run, result_lines

    overrides = [a for a in args.run_dirs if "=" in a]
    for run_dir in [a for a in args.run_dirs if "=" not in a]:
        result = evaluate_run(run_dir, overrides, log=lambda msg: print(msg, flush=True))
        print("\n".join(result_lines(run_dir, result)))
        print(f"wrote {Path(run_dir) / 'eval.json'}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from aria_hpc.eval.report import write_report

    out = write_report(args.run_dirs, args.out, baseline=args.baseline)
    print("\n".join(out["table"]))
    print(f"wrote {out['report']} ({len(out['figures'])} figures)")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from aria_hpc.launch import sweep

    if args.status:
        sweep.status(args.sweep)
        return 0
    if args.collect:
        result = sweep.collect(sweep.load_sweep(args.sweep))
    else:
        result = sweep.run_sweep(args.sweep, args.executor, log=lambda msg: print(msg, flush=True))
    print(Path(result["results_md"]).read_text(), end="")
    return 0 if set(result["counts"]) <= {"finished"} else 1


def cmd_demo(args: argparse.Namespace) -> int:
    from aria_hpc.demo import run_demo

    result = run_demo(args.out, config=args.config, overrides=args.overrides, full=args.full,
                      executor=args.executor, rebuild_bank=args.rebuild, log=lambda msg: print(msg, flush=True))
    seeds = result["seeds"]
    print(f"\nThis run: seed(s) {seeds}" + (", fewer than 3, so not a verdict (the seed spread is in the committed "
                                            "study below)" if len(seeds) < 3 else ""))
    print("\n".join(result["table"]))
    print(f"report: {result['report']}")
    if not result["committed"]:
        print("\nNo committed study runs this config (configs/studies/*.yaml, docs/study/): the table above is the "
              "only evidence")
    for title, rows in result["committed"]:
        print(f"\nCommitted study (trained earlier, not this run), {title}:")
        print("\n".join(rows))
    return 0


def cmd_study(args: argparse.Namespace) -> int:
    from aria_hpc.launch.study import load_study, run_study, write_study_report

    study = load_study(args.study)
    if args.report_only:
        print(f"report: {write_study_report(study)}")
        return 0
    result = run_study(study, args.executor, only=args.regime, log=lambda msg: print(msg, flush=True))
    print(f"[study] {result['members_run']} member(s) run in {result['wall_s']:.0f}s; report: {result['report']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aria-hpc",
        description="ARIA / Random Conditioning distillation of text-conditioned diffusion models.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("simulate", help="run ARIA's allocation loop on a synthetic discrepancy landscape")
    _add_config_args(p)
    p.set_defaults(func=cmd_simulate)
    p = sub.add_parser("embed", help="embed the prompt pool into HDF5 shards (resumable; --shard i/n)")
    _add_config_args(p)
    p.add_argument("--shard", metavar="i/n", help="build only shard i of n (a job-array task)")
    p.add_argument("--rebuild", action="store_true", help="delete embed.dir and build it again")
    p.add_argument("--quiet", action="store_true", help="progress as plain lines instead of a bar")
    p.set_defaults(func=cmd_embed)
    p = sub.add_parser("signatures", help="teacher signatures of every prompt, the features of "
                       "regions.features=teacher (resumable; --shard i, --executor)")
    _add_shard_array_args(p, "delete the signatures and compute them again")
    p.set_defaults(func=cmd_signatures)
    p = sub.add_parser("pairs", help="the paired set of a pipeline teacher: latents the teacher generates "
                       "for pool prompts, or pairs.images encoded (resumable; --shard i, --executor)")
    _add_shard_array_args(p, "delete pairs.dir and build it again")
    p.add_argument("--quiet", action="store_true", help="a progress line every batch")
    p.set_defaults(func=cmd_pairs)
    p = sub.add_parser("regions", help="k-means regions of the conditioning space from the embeddings "
                       "(--executor: assignment as a job array over the embedding shards)")
    _add_config_args(p)
    p.add_argument("--executor", choices=("local", "slurm", "debug"),
                   help="train here, assign each embedding shard in a submitit array task, merge here")
    step = p.add_mutually_exclusive_group()
    step.add_argument("--centroids", action="store_true", help="only train and save the centroids (a hand-made array)")
    step.add_argument("--shard", type=int, metavar="i", help="only assign embedding shard i to the saved centroids")
    step.add_argument("--merge", action="store_true", help="only write regions.h5 from the assigned shards")
    p.set_defaults(func=cmd_regions)
    p = sub.add_parser("bank", help="cache teacher outputs in HDF5 shards (idempotent; --shard i, --executor)")
    _add_config_args(p)
    p.add_argument("--shards", type=int, help="number of shards (overrides bank.shards)")
    p.add_argument("--shard", type=int, metavar="i", help="build only shard i (a job-array task)")
    p.add_argument("--executor", choices=("local", "slurm", "debug"),
                   help="submit one submitit array task per missing shard instead of building in-process")
    p.add_argument("--rebuild", action="store_true", help="replace a bank built with another fingerprint")
    p.add_argument("--verify", action="store_true",
                   help="hash every shard, and the pool, embeddings and region map it is built from, again, even "
                        "those verified before (a bad shard is set aside and rebuilt; ARIA_VERIFY=1 does this for "
                        "any command)")
    p.add_argument("--quiet", action="store_true", help="progress as plain lines instead of bars")
    p.add_argument("--status", action="store_true",
                   help="print entries, regions covered and bytes per shard kind (planned / written back); "
                        "builds nothing")
    p.set_defaults(func=cmd_bank)
    p = sub.add_parser("train", help="distil a student (RC / ARIA / paired) on DeepSpeed; resumes by default")
    _add_config_args(p)
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("teacher", help="train the shapes-world teacher and judge, and measure the teacher")
    _add_config_args(p)
    p.set_defaults(func=cmd_teacher)
    p = sub.add_parser("eval", help="evaluate run directories against the teacher (writes RUN_DIR/eval.json)")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR [eval.key=value ...]",
                   help="run directories, then optional eval.* / judge.* overrides")
    p.set_defaults(func=cmd_eval)
    p = sub.add_parser("report", help="markdown report with figures comparing evaluated runs")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", default="runs/report", help="report directory (default runs/report)")
    p.add_argument("--baseline", default="rc", help="the label the others are compared with (default rc)")
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("sweep", help="launch a sweep (grid/zip x seeds) through submitit; skips finished members")
    p.add_argument("sweep", metavar="SWEEP.yaml")
    p.add_argument("--executor", choices=("local", "slurm", "debug"), default="local",
                   help="submitit executor (default local)")
    p.add_argument("--status", action="store_true", help="show each member's state and exit")
    p.add_argument("--collect", action="store_true", help="only rewrite results.csv / results.md")
    p.set_defaults(func=cmd_sweep)
    p = sub.add_parser("demo", help="the main job: RC vs ARIA students of the shipped shapes teacher, end to end")
    p.add_argument("--out", default="runs/demo", help="where everything goes (default runs/demo)")
    p.add_argument("--config", help="base config (default configs/regimes/shape_holdout_diluted.yaml, the "
                   "regime with RC's largest held-out gap; its settings come from configs/demo.yaml)")
    p.add_argument("--full", action="store_true", help="add the paired policy and run 3 seeds")
    p.add_argument("--executor", choices=("local", "debug"), default="local",
                   help="submitit executor for the members (debug: in this process)")
    p.add_argument("--rebuild", action="store_true",
                   help="replace a bank under --out built with another configuration (e.g. after changing regions.k)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides of the demo config")
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("study", help="policies x seeds on each world regime; committed summaries and a report "
                                     "(resumable)")
    p.add_argument("study", help="study YAML (e.g. configs/studies/select.yaml)")
    p.add_argument("--executor", choices=("local", "slurm", "debug"), default="local",
                   help="submitit executor for the members (local: launch.array_parallelism at a time)")
    p.add_argument("--regime", action="append", help="run only this regime (repeatable)")
    p.add_argument("--report-only", action="store_true", help="rewrite the report from the committed summaries")
    p.set_defaults(func=cmd_study)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parse_args(build_parser(), argv)
    return exit_code(lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
