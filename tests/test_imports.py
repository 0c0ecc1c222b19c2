"""Imports keep their promises: the pure modules load no I/O, no process group and no C++ core, and
the C++ core has one importer."""

import ast
import subprocess
import sys

import pytest
from conftest import ROOT, cli_env

HEAVY = ("h5py", "aria_hpc._C", "aria_hpc.distributed", "torch.distributed", "torch", "deepspeed")
PURE = {  # module -> what it may load of HEAVY (torch itself imports torch.distributed)
    "aria_hpc.regions.allocation": (),
    "aria_hpc.regions.sampler": (),
    "aria_hpc.bank.plan": (),
    "aria_hpc.eval.metrics": (),
    "aria_hpc.train.losses": ("torch", "torch.distributed"),
    "aria_hpc.regions": (),
    "aria_hpc.bank": (),
}


@pytest.mark.parametrize("module", sorted(PURE))
def test_pure_modules_load_nothing_heavy(module):
    code = (f"import sys, {module}; "
            f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=cli_env(), capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    loaded = {m for m in res.stdout.strip().split(",") if m}
    assert loaded <= set(PURE[module]), f"importing {module} loads {sorted(loaded - set(PURE[module]))}"


def test_package_names_still_resolve_on_first_use():
    from aria_hpc import bank, regions

    assert regions.RegionTable.__module__ == "aria_hpc.regions.table"
    assert bank.Bank.__module__ == "aria_hpc.bank.reader"
    with pytest.raises(AttributeError):
        regions.no_such_name  # noqa: B018


def test_one_module_imports_the_cpp_core_and_it_has_a_stub():
    importers = []
    for path in (ROOT / "aria_hpc").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "aria_hpc" and any(a.name == "_C" for a in node.names):
                importers.append(path.relative_to(ROOT).as_posix())
            elif isinstance(node, ast.Import) and any(a.name == "aria_hpc._C" for a in node.names):
                importers.append(path.relative_to(ROOT).as_posix())
    assert importers == ["aria_hpc/native.py"]
    stub = ast.parse((ROOT / "aria_hpc" / "_C.pyi").read_text())
    names = {n.name for n in stub.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    import aria_hpc._C as core

    public = {n for n in dir(core) if not n.startswith("_") and n != "cuda_compiled"}
    assert public <= names, f"_C.pyi lacks {sorted(public - names)}"
