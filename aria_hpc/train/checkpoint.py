"""What a checkpoint is, whether it is complete, and what resuming from RUN_DIR may do.

A checkpoint is RUN_DIR/checkpoints/<tag>/: DeepSpeed's files, one `aria_rank<r>.pt` per rank (the
region table's unsynced sums, the EMA, the RNG, the source cursor) and `aria_meta.json`, which rank 0
writes last, after every rank has saved, listing every file of the tag with its size. `latest` names
the tag to resume from. A tag whose meta is missing, or whose listed files are missing or of another
size, is incomplete: the resume check names what is missing and the newest complete checkpoint beside
it, and never falls back to starting over by itself.
"""

from __future__ import annotations

import json
from pathlib import Path

from aria_hpc.errors import UserError

META = "aria_meta.json"
LATEST = "latest"


def rank_file(rank: int) -> str:
    return f"aria_rank{rank}.pt"


def tag_files(tag_dir: Path) -> dict[str, int]:
    """Every file of a tag directory but the meta, with its size (what the meta lists)."""
    return {str(p.relative_to(tag_dir)): p.stat().st_size for p in sorted(tag_dir.rglob("*"))
            if p.is_file() and p.name != META}


def incomplete(tag_dir: Path) -> str | None:
    """Why the checkpoint in tag_dir cannot be resumed from (None when it is complete)."""
    if not tag_dir.is_dir():
        return "does not exist"
    meta_path = tag_dir / META
    if not meta_path.is_file():
        return f"has no {META} (it is written last, so saving was interrupted)"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return f"has an unreadable {META}"
    # checkpoints written before the file list existed: at least every rank's own file
    files = meta.get("files") or {rank_file(r): None for r in range(int(meta.get("world_size", 1)))}
    missing = [name for name in files if not (tag_dir / name).is_file()]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        return f"lacks {', '.join(missing[:3])}{more}"
    for name, size in files.items():
        if size is not None and (tag_dir / name).stat().st_size != size:
            return f"has {name} of {(tag_dir / name).stat().st_size} bytes, written as {size}"
    return None


def complete_tags(ckpt_dir: Path) -> list[str]:
    """The regular (step*) checkpoints that are complete, oldest first."""
    if not ckpt_dir.is_dir():
        return []
    return [p.name for p in sorted(ckpt_dir.glob("step*")) if p.is_dir() and incomplete(p) is None]


def way_back(ckpt_dir: Path, bad: str | None = None) -> str:
    """How to go on: resume from the newest complete checkpoint other than `bad`, or start elsewhere."""
    complete = [t for t in complete_tags(ckpt_dir) if t != bad]
    if complete:
        return (f"resume from the complete checkpoint {complete[-1]} with "
                f"`echo {complete[-1]} > {ckpt_dir / LATEST}`, or point run.dir elsewhere to start over")
    return f"no complete checkpoint is left in {ckpt_dir}: point run.dir elsewhere to start over"


def resume_tag(ckpt_dir: Path) -> str | None:
    """The tag to resume from, None to start a new run, or UserError when neither is safe.

    Starting a new run is refused while complete checkpoints exist without `latest` (it would
    overwrite them); an incomplete `latest` names the newest complete checkpoint as the way back."""
    latest = ckpt_dir / LATEST
    if latest.is_file():
        tag = latest.read_text().strip()
        why = incomplete(ckpt_dir / tag)
        if why is None:
            return tag
        raise UserError(f"{latest} names {ckpt_dir / tag}, which {why}: {way_back(ckpt_dir, tag)}")
    complete = complete_tags(ckpt_dir)
    if complete:
        raise UserError(f"{ckpt_dir} holds complete checkpoints (newest {complete[-1]}) but no {LATEST}: "
                        f"{way_back(ckpt_dir)}")
    return None


def truncate_metrics(path: Path, step: int) -> None:
    """Resuming: drop records after the resumed step, so the log reads as one uninterrupted run."""
    from aria_hpc.fsio import atomic_write_text

    if not path.is_file():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    atomic_write_text(path, "".join(line + "\n" for line in keep))


def set_aside_metrics(path: Path) -> Path | None:
    """Starting a new run: an older metrics.jsonl (a run killed before its first checkpoint) is
    renamed to metrics.jsonl.<n>, never appended to; returns the new name."""
    if not path.is_file() or path.stat().st_size == 0:
        return None
    n = 1
    while path.with_name(f"{path.name}.{n}").exists():
        n += 1
    aside = path.with_name(f"{path.name}.{n}")
    path.rename(aside)
    return aside


def prune(ckpt_dir: Path, keep: int) -> None:
    import shutil

    tags = sorted(p for p in ckpt_dir.glob("step*") if p.is_dir())
    for old in tags[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
