"""Building a Config: defaults <- a YAML file (and the files it is based on) <- dotted overrides.

An unknown key is an error naming the key and its nearest valid spelling; values are checked against
the field types; the schema's checks run once the config is built (``load_config``).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from aria_hpc.config.keys import MOVED, REMOVED
from aria_hpc.config.schema import Config
from aria_hpc.errors import ConfigError
from aria_hpc.fsio import atomic_write_text


def read_yaml(path: Path, missing: str) -> Any:
    """The parsed YAML of a file; ConfigError `missing` when it does not exist, one line when it is not YAML."""
    if not path.is_file():
        raise ConfigError(missing)
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {yaml_problem(exc)}") from None


def yaml_problem(exc: yaml.YAMLError) -> str:
    """One line with the position and the cause of a YAML error (its own text spans several lines)."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context = getattr(exc, "context", None)
    return f"{where}{problem}" + (f" ({context})" if context else "") + "; fix the file's syntax there"


def move_keys(data: dict) -> list[str]:
    """Rename, in place, the keys of one file's sections that keys.MOVED gives a new place; the old
    spellings found. A key already given under its new name wins over its old spelling."""
    found = []
    for old, new in MOVED.items():
        (section, name), (new_section, new_name) = old.split("."), new.split(".")
        values = data.get(section)
        if isinstance(values, dict) and name in values:
            found.append(old)
            target = data.setdefault(new_section, {})
            if isinstance(target, dict):
                target.setdefault(new_name, values.pop(name))
    return found


def drop_removed(data: dict) -> list[str]:
    """Delete, in place, the keys of one file's sections that keys.REMOVED lists; the keys found."""
    found = []
    for key in REMOVED:
        section, name = key.split(".")
        values = data.get(section)
        if isinstance(values, dict) and name in values:
            del values[name]
            found.append(key)
    return found


def removed_note(where: str, keys: list[str]) -> str:
    return (f"aria-hpc: note: {where}: {', '.join(keys)} no longer exist{'s' if len(keys) == 1 else ''} "
            f"({'; '.join(REMOVED[k] for k in keys)}); ignored (delete them)")


def read_config_mapping(path: Path, _chain: tuple[Path, ...] = (), *, stored: bool = False) -> dict:
    """A config file's sections; `base: other.yaml` (relative to the file) is read first and this
    file's sections are merged over it, key by key (a preset is a few lines over another one).
    Keys spelled the way an older version did are renamed (move_keys), with a note on stderr unless
    the file is `stored`: a config.yaml that a run wrote, which nobody is asked to edit."""
    data = read_yaml(path, f"config file {path} does not exist (pass a YAML file, e.g. configs/debug.yaml)")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of config sections, not {type(data).__name__}")
    moved, removed = move_keys(data), drop_removed(data)
    if moved and not stored:
        print(f"aria-hpc: note: {path}: {', '.join(moved)} moved to {', '.join(MOVED[k] for k in moved)}; "
              "read as such (rename them in the file)", file=sys.stderr, flush=True)
    if removed and not stored:
        print(removed_note(str(path), removed), file=sys.stderr, flush=True)
    if "base" not in data:
        return data
    base = Path(str(data.pop("base")))
    base = base if base.is_absolute() else path.parent / base
    if base.resolve() in _chain:
        raise ConfigError(f"{path}: 'base: {base}' makes a cycle of config files")
    merged = read_config_mapping(base, (*_chain, path.resolve()), stored=stored)
    for section, values in data.items():
        if isinstance(values, dict) and isinstance(merged.get(section), dict):
            merged[section] = {**merged[section], **values}
        else:
            merged[section] = values
    return merged


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (), *,
                stored: bool = False) -> Config:
    """Defaults <- YAML file (and the files it is based on) <- dotted overrides, type-checked and
    validated; `stored`: the file is a run's own config.yaml (read_config_mapping)."""
    cfg = Config()
    if path is not None:
        mapping = read_config_mapping(Path(path), stored=stored)
        try:
            _apply_mapping(cfg, mapping, prefix="")
        except ConfigError as exc:  # name the file: the key may be a typo in it
            raise ConfigError(f"{path}: {exc}") from None
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override '{item}' is not of the form key=value (e.g. train.lr=1e-4)")
        key = key.strip()
        if key in REMOVED:
            print(removed_note("override", [key]), file=sys.stderr, flush=True)
            continue
        if key in MOVED:
            print(f"aria-hpc: note: override {key} moved to {MOVED[key]}; read as such", file=sys.stderr, flush=True)
        _set_dotted(cfg, MOVED.get(key, key), yaml.safe_load(raw) if raw.strip() else raw)
    resolve_teacher(cfg)
    cfg.validate()
    return cfg


def resolve_teacher(cfg: Config) -> None:
    """Fill what the config leaves unset from the teacher: a Stable Diffusion pipeline directory
    brings its own text encoder(s), VAE and tokenizer length; a key set to something else than the
    pipeline's own part is an error naming both (one teacher, one conditioning)."""
    from aria_hpc.errors import UserError
    from aria_hpc.models.pipeline import is_pipeline, read_layout

    te, e = cfg.text_encoder, cfg.eval
    if not is_pipeline(cfg.teacher.dir):
        te.max_length = 24 if te.max_length is None else te.max_length
        e.guidance_scale = 1.0 if e.guidance_scale is None else e.guidance_scale
        return
    try:
        layout = read_layout(cfg.teacher.dir)
    except UserError as exc:
        raise ConfigError(f"teacher.dir: {exc}") from None
    own = {"text_encoder.dir": (cfg.teacher.dir, {layout.path, *layout.text_encoders[:1]} if layout.family == "sd"
                                else {layout.path}),
           "bank.vae_dir": (str(layout.vae), {layout.vae})}
    for key, (default, accepted) in own.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value is not None and Path(value).resolve() not in {p.resolve() for p in accepted}:
            raise ConfigError(f"{key}={value} contradicts the teacher pipeline's own {default} (teacher.dir="
                              f"{cfg.teacher.dir}): unset {key}, or use a teacher whose pipeline holds {value}")
        setattr(getattr(cfg, section), name, default)
    te.max_length = layout.max_length if te.max_length is None else te.max_length
    # the pipelines' own defaults: 7.5 for SD-1.x / 2.x / SDXL, 7.0 for SD3
    e.guidance_scale = (7.0 if layout.family == "sd3" else 7.5) if e.guidance_scale is None else e.guidance_scale


def to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def save_resolved(cfg: Config, run_dir: str | Path) -> Path:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    out = run_dir / "config.yaml"
    atomic_write_text(out, dump_yaml(cfg))
    return out


def all_keys(obj: Any = None, prefix: str = "") -> list[str]:
    """Every dotted key of the config tree (for messages and tests)."""
    obj = Config() if obj is None else obj
    keys = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        name = f"{prefix}{f.name}"
        keys.extend(all_keys(value, name + ".") if dataclasses.is_dataclass(value) else [name])
    return keys


def _unknown(key: str, valid: list[str]) -> ConfigError:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return ConfigError(f"unknown config key '{key}'{hint}")


def _apply_mapping(obj: Any, data: dict[str, Any], prefix: str) -> None:
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if not isinstance(key, str) or not any(f.name == key for f in dataclasses.fields(obj)):
            raise _unknown(str(dotted), all_keys())
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{dotted}' is a section; give it a mapping, not {value!r}")
            _apply_mapping(current, value, dotted + ".")
        else:
            setattr(obj, key, _coerce(dotted, value, _field_type(obj, key)))


def _set_dotted(cfg: Config, key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    obj: Any = cfg
    for part in parents:
        child = getattr(obj, part, None) if part in {f.name for f in dataclasses.fields(obj)} else None
        if not dataclasses.is_dataclass(child):
            raise _unknown(key, all_keys())
        obj = child
    if leaf not in {f.name for f in dataclasses.fields(obj)}:
        raise _unknown(key, all_keys())
    if dataclasses.is_dataclass(getattr(obj, leaf)):
        raise ConfigError(f"config key '{key}' is a section; override one of its fields, e.g. {key}.<field>=...")
    setattr(obj, leaf, _coerce(key, value, _field_type(obj, leaf)))


def _field_type(obj: Any, name: str) -> Any:
    return typing.get_type_hints(type(obj))[name]


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check (and where unambiguous convert) a value to a field's declared type."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"config key '{key}' must be one of {', '.join(map(str, choices))}; got {value!r}")
        return value
    if origin is list:
        (item_type,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"config key '{key}' must be a list; got {value!r}")
        return [_coerce(f"{key}[{i}]", v, item_type) for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(key, value, args[0])
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is not None:
            if not math.isfinite(number):
                raise ConfigError(f"config key '{key}' must be a finite number; got {value!r}")
            return number
    elif tp is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"config key '{key}' must be of type {getattr(tp, '__name__', tp)}; got {value!r}")
