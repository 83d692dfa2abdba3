"""Every public function and method of the package documents its parameters (numpydoc)."""

import importlib
import inspect
import pkgutil
from dataclasses import is_dataclass

import ensemblevi

# hooks whose parameters torch, Lightning or scvi-tools document
HOOKS = {"forward", "training_step", "validation_step", "configure_optimizers", "extra_repr"}
PUBLIC_PACKAGES = ["ensemblevi"] + [
    f"ensemblevi.{m.name}"
    for m in pkgutil.iter_modules(ensemblevi.__path__)
    if not m.name.startswith("_") and m.name != "cli"
]


def _own(obj) -> bool:
    return getattr(obj, "__module__", "").startswith("ensemblevi")


def _documented_callables():
    seen = set()
    for pkg_name in PUBLIC_PACKAGES:
        pkg = importlib.import_module(pkg_name)
        for name in dir(pkg):
            obj = getattr(pkg, name)
            if name.startswith("_") or not _own(obj) or id(obj) in seen:
                continue
            seen.add(id(obj))
            if inspect.isfunction(obj):
                yield f"{pkg_name}.{name}", obj
            elif inspect.isclass(obj):
                yield f"{pkg_name}.{name}", obj  # the constructor, documented on the class
                for meth_name, meth in vars(obj).items():
                    func = getattr(meth, "__func__", meth)
                    if (
                        meth_name.startswith("_")
                        or meth_name.startswith("on_")
                        or meth_name in HOOKS
                        or not inspect.isfunction(func)
                    ):
                        continue
                    yield f"{pkg_name}.{name}.{meth_name}", func


def _parameters(obj) -> list[str]:
    target = obj.__init__ if inspect.isclass(obj) else obj
    # a class that inherits its constructor is documented (and checked) on the parent
    if inspect.isclass(obj) and (not _own(target) or "__init__" not in vars(obj)):
        if not is_dataclass(obj):
            return []
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):
        return []
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    return [
        name
        for name, p in sig.parameters.items()
        if name not in ("self", "cls") and p.kind not in variadic
    ]


def test_public_callables_have_a_parameters_section():
    missing = []
    for name, obj in _documented_callables():
        params = _parameters(obj)
        doc = inspect.getdoc(obj) or ""
        # a dataclass documents its fields as Attributes
        sections = ("Parameters\n", "Attributes\n") if is_dataclass(obj) else ("Parameters\n",)
        if params and not any(s in doc for s in sections):
            missing.append(f"{name}({', '.join(params)})")
    assert not missing, "no numpydoc Parameters section:\n" + "\n".join(sorted(missing))


def test_the_check_sees_the_package():
    names = [n for n, _ in _documented_callables()]
    # the walk must reach the model class and a plot, or the test above checks nothing
    assert "ensemblevi.model.EnsembleSCVI" in names
    assert any(n.startswith("ensemblevi.pl.") for n in names)
