"""The typed config tree: presets load, overrides are typed, bad input is one clear line and exit 2."""



import pytest
import yaml
from conftest import ROOT

from aria_hpc.config import MOVED, Config, all_keys, changed_keys, dump_yaml, flatten, load_config, save_resolved
from aria_hpc.errors import ConfigError

PRESETS = sorted(p for p in (ROOT / "configs").glob("**/*.yaml") if not {"sweeps", "studies"} & set(p.parts))
SWEEPS = sorted((ROOT / "configs" / "sweeps").glob("*.yaml"))
STUDIES = sorted((ROOT / "configs" / "studies").glob("**/*.yaml"))  # v2 and the pinned v1


def test_there_are_presets():
    assert {p.name for p in PRESETS} >= {"debug.yaml", "simulate.yaml"}


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.name)
def test_every_preset_loads(path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_every_shipped_sweep_resolves_all_its_members(path):
    from aria_hpc.launch.sweep import load_sweep, members

    assert len(members(load_sweep(path))) >= 2


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.name)
def test_every_shipped_study_resolves_all_its_members(path):
    from aria_hpc.launch.study import load_study, regime_members

    study = load_study(path)  # resolves every member's config
    assert len(study.seeds) >= 3 and all(len(regime_members(study, r)) >= 6 for r in study.regimes)


def test_overrides_are_typed():
    cfg = load_config(None, ["train.lr=1e-4", "aria.alpha=2", "aria.importance=true", "bank.dir=/x",
                             "train.policy=rc", "seed=7"])
    assert cfg.train.lr == 1e-4 and isinstance(cfg.aria.alpha, float) and cfg.aria.alpha == 2.0
    assert cfg.aria.importance is True and cfg.bank.dir == "/x" and cfg.train.policy == "rc" and cfg.seed == 7
    assert load_config(None, ["bank.dir=null"]).bank.dir is None


@pytest.mark.parametrize("overrides, match", [
    (["aria.alpah=1"], r"unknown config key 'aria.alpah' \(did you mean 'aria.alpha'\?\)"),
    (["trian.steps=3"], r"unknown config key 'trian.steps' \(did you mean 'train.steps'\?\)"),
    (["train=3"], r"is a section"),
    (["train.steps=ten"], r"'train.steps' must be of type int"),
    (["train.steps=2.5"], r"'train.steps' must be of type int"),
    (["aria.importance=1"], r"'aria.importance' must be of type bool"),
    (["train.policy=random"], r"'train.policy' must be one of paired, rc, aria"),
    (["aria.eps=1.5"], r"aria.eps must be in \[0, 1\]"),
    (["aria.beta=0"], r"aria.beta must be in \(0, 1\]"),
    (["train.steps"], r"not of the form key=value"),
    (["bank.mode=hybrid"], r"bank.mode=hybrid needs bank.dir"),
    (["bank.mode=lazy"], r"'bank.mode' must be one of cached, hybrid, live"),
    (["bank.dir=b", "bank.max_reuse=0"], r"bank.max_reuse and bank.writeback_every must be >= 1"),
])
def test_bad_overrides(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, overrides)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("train:\n  steps: 3\n   lr: 1\n")  # position and cause survive, on one line
    with pytest.raises(ConfigError, match=r"^\S+bad.yaml is not valid YAML: line 3, column 6: mapping values are "
                                          r"not allowed here; fix the file's syntax there$"):
        load_config(bad)
    bad.write_text("train:\n\tsteps: 3\n")
    with pytest.raises(ConfigError, match=r"line 2, column 1: found character '\\t' that cannot start any token "
                                          r"\(while scanning for the next token\)"):
        load_config(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)
    bad.write_text("train:\n  stepz: 3\n")
    with pytest.raises(ConfigError, match="did you mean 'train.steps'"):
        load_config(bad)


def _numeric_keys():
    import typing

    cfg, out = Config(), []
    for key in all_keys():
        *parents, leaf = key.split(".")
        obj = cfg
        for part in parents:
            obj = getattr(obj, part)
        if typing.get_type_hints(type(obj))[leaf] in (int, float):
            out.append(key)
    return out


# the only numeric fields where a negative value means something
SIGNED = {"simulate.drift_per_step", "teacher.logit_mean"}


@pytest.mark.parametrize("key", _numeric_keys())
def test_every_numeric_field_is_range_checked_and_finite(key):
    """A new numeric field without a range check fails here: -1 is out of range for all but SIGNED."""
    for bad in ((".inf", "-.inf", ".nan", "1e999") if key in SIGNED else ("-1", ".inf", "-.inf", ".nan", "1e999")):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            load_config(None, [f"{key}={bad}"])


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(ROOT / "configs" / "simulate.yaml", ["aria.alpha=0.5"])
    path = save_resolved(cfg, tmp_path / "run")
    assert load_config(path) == cfg
    assert yaml.safe_load(dump_yaml(cfg))["aria"]["alpha"] == 0.5
    assert "aria.sync_every" in all_keys() and "bank.dir" in all_keys()


def test_moved_keys_still_load_and_say_where_they_went(tmp_path, capfd):
    """teacher.<recipe field> became teacher_recipe.<field>: a file, a `base:` chain, an override and a
    checkpoint's flat config that spell the old key all read it under the new one. A user's file gets
    one note line; a run's own config.yaml (stored) none; the new spelling wins where both are given."""
    assert MOVED["teacher.steps"] == "teacher_recipe.steps" and "teacher.dir" not in MOVED
    old = tmp_path / "old.yaml"
    old.write_text("teacher:\n  dir: null\n  steps: 7\n  lr: 0.002\n")
    cfg = load_config(old)
    note = capfd.readouterr().err.strip().splitlines()
    assert len(note) == 1 and "teacher.steps, teacher.lr moved to teacher_recipe.steps, teacher_recipe.lr" in note[0]
    assert cfg.teacher_recipe.steps == 7 and cfg.teacher_recipe.lr == 0.002 and cfg.teacher.dir is None
    assert load_config(old, stored=True) == cfg and capfd.readouterr().err == ""

    child = tmp_path / "child.yaml"
    child.write_text("base: old.yaml\nteacher_recipe:\n  steps: 9\nteacher:\n  lr: 0.003\n")
    cfg = load_config(child)
    assert cfg.teacher_recipe.steps == 9 and cfg.teacher_recipe.lr == 0.003  # the child wins, either spelling
    both = tmp_path / "both.yaml"
    both.write_text("teacher:\n  steps: 7\nteacher_recipe:\n  steps: 8\n")
    assert load_config(both).teacher_recipe.steps == 8
    capfd.readouterr()
    assert load_config(None, ["teacher.batch_size=5"]).teacher_recipe.batch_size == 5
    assert "override teacher.batch_size moved to teacher_recipe.batch_size" in capfd.readouterr().err

    then = {k.replace("teacher_recipe.", "teacher."): v for k, v in flatten(Config()).items()}
    assert changed_keys(flatten(Config()), then) == []  # a checkpoint written before the move resumes
    then["teacher.steps"] = 1
    assert changed_keys(flatten(Config()), then) == ["teacher_recipe.steps"]
    with pytest.raises(ConfigError, match="unknown config key 'teacher.stepz'"):
        load_config(None, ["teacher.stepz=1"])


def test_removed_keys_still_load_with_a_note(tmp_path, capfd):
    """bank.prefetch was removed (no code read it): a file, an override and a checkpoint's flat config
    that still hold it load, the key ignored; a user's file and an override get one note line each."""
    old = tmp_path / "old.yaml"
    old.write_text("bank:\n  prefetch: 4\n  entries: 123\n")
    cfg = load_config(old)
    note = capfd.readouterr().err.strip().splitlines()
    assert len(note) == 1 and "bank.prefetch no longer exists (no code read it" in note[0] and "ignored" in note[0]
    assert cfg.bank.entries == 123 and not hasattr(cfg.bank, "prefetch")
    assert load_config(old, stored=True) == cfg and capfd.readouterr().err == ""
    assert load_config(None, ["bank.prefetch=3"]) == load_config(None)
    assert "override: bank.prefetch no longer exists" in capfd.readouterr().err
    then = {**flatten(Config()), "bank.prefetch": 2}
    assert changed_keys(flatten(Config()), then) == []  # a checkpoint written with it resumes


def test_cli_unknown_key_is_one_line_and_exit_2(aria_cli, tmp_path):
    res = aria_cli("simulate", "configs/debug.yaml", "aria.alpah=1", f"run.dir={tmp_path}/r")
    assert res.returncode == 2
    assert res.stderr.strip() == "aria-hpc: error: unknown config key 'aria.alpah' (did you mean 'aria.alpha'?)"
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "r").exists()  # nothing written before the config was valid


def test_cli_missing_config_file(aria_cli, tmp_path):
    res = aria_cli("simulate", str(tmp_path / "missing.yaml"))
    assert res.returncode == 2 and "does not exist" in res.stderr and "Traceback" not in res.stderr


def test_cli_dry_run_prints_resolved_config_and_writes_nothing(aria_cli, tmp_path):
    res = aria_cli("simulate", "configs/debug.yaml", "aria.alpha=0.25", f"run.dir={tmp_path}/r", "--dry-run")
    assert res.returncode == 0, res.stderr
    assert yaml.safe_load(res.stdout)["aria"]["alpha"] == 0.25
    assert not (tmp_path / "r").exists()


def test_every_config_field_has_a_docstring():
    """The schema documents itself: every leaf field is followed by its docstring (config/schema.py)."""
    import ast
    import dataclasses

    from aria_hpc.config import schema

    tree = ast.parse(open(schema.__file__).read())
    documented = set()
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
        for field_node, after in zip(cls.body, cls.body[1:]):
            if (isinstance(field_node, ast.AnnAssign) and isinstance(after, ast.Expr)
                    and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str)):
                documented.add(f"{cls.name}.{field_node.target.id}")
    leaves = [f"{type(section).__name__}.{f.name}" for section in
              [getattr(Config(), s.name) for s in dataclasses.fields(Config)] if dataclasses.is_dataclass(section)
              for f in dataclasses.fields(section)] + ["Config.seed"]
    assert not [k for k in leaves if k not in documented]
