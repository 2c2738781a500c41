"""Flat copies of the modeling code, for Hugging Face remote code (``trust_remote_code``).

transformers loads remote code as the files of one folder and only follows relative
imports of files in that same folder (``from .name import ...``). ``bundle_sources``
starts from the entry modules (the HF config and model), follows every import of
``xlstm_lm`` / ``xlstm_lm_kernels`` through the package tree, and returns one flat
source per module (``xlstm_lm/layers/mlstm.py`` -> ``xlstm_lm_layers_mlstm.py``) with
its imports rewritten to flat relative ones. The result runs where neither package
is installed. Rewriting works on the AST's line spans, so code is copied verbatim.

Modules that need packages an exported model must not depend on (the Triton
kernels) are left out; an import of one becomes ``raise ImportError(...)`` at the
same place, which only the Triton backends reach. Every bundled file is checked
with transformers' own remote-code import scanner before it is written.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

import xlstm_lm
import xlstm_lm_kernels

#: import name -> folder of the package
PACKAGE_ROOTS = {
    "xlstm_lm": Path(xlstm_lm.__file__).resolve().parent,
    "xlstm_lm_kernels": Path(xlstm_lm_kernels.__file__).resolve().parent,
}

#: module -> file name (without .py) of the entry points named in config.json's auto_map
ENTRY_MODULES = {
    "xlstm_lm.hf.configuration": "configuration_xlstm_lm",
    "xlstm_lm.hf.modeling": "modeling_xlstm_lm",
}

#: modules that need Triton: not shipped, their imports raise ImportError when reached
EXCLUDED_MODULES = {
    "xlstm_lm_kernels.mlstm.chunkwise_triton": "the Triton mLSTM kernels are not shipped with exported models",
    "xlstm_lm_kernels.mlstm.step_triton": "the Triton mLSTM kernels are not shipped with exported models",
}

#: third-party imports an exported model may use (transformers depends on all of them)
ALLOWED_EXTERNAL = {"torch", "transformers", "numpy", "yaml", "safetensors", "huggingface_hub", "tokenizers"}


class BundleError(RuntimeError):
    """The modeling code cannot be flattened (an import form or dependency we cannot ship)."""


def flat_name(module: str) -> str:
    """File name (no .py) of ``module`` in the flat bundle."""
    return ENTRY_MODULES.get(module, module.replace(".", "_"))


def module_file(module: str) -> Path | None:
    """Source file of an xlstm_lm / xlstm_lm_kernels module or package, or None."""
    top, *rest = module.split(".")
    root = PACKAGE_ROOTS.get(top)
    if root is None:
        return None
    base = root.joinpath(*rest)
    if base.with_suffix(".py").is_file() and rest:
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def _is_package(module: str) -> bool:
    f = module_file(module)
    return f is not None and f.name == "__init__.py"


def _resolve(module: str, node: ast.ImportFrom) -> str:
    """Absolute module named by a (possibly relative) ``from X import`` in ``module``."""
    if node.level == 0:
        return node.module or ""
    package = module if _is_package(module) else module.rpartition(".")[0]
    parts = package.split(".")
    if node.level - 1 > len(parts) - 1:
        raise BundleError(f"{module}: relative import beyond the top-level package")
    base = parts[: len(parts) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


@dataclass
class _Edit:
    start: int  # first line (0-based)
    end: int  # last line (0-based, inclusive)
    lines: list[str]


def _rewrite_import(module: str, node: ast.ImportFrom, target: str, indent: str, queue: list[str]) -> list[str]:
    """Flat replacement lines for one internal ``from target import names``."""
    if target in EXCLUDED_MODULES:
        return [f"{indent}raise ImportError({EXCLUDED_MODULES[target] + f' ({target})'!r})"]
    if module_file(target) is None:
        raise BundleError(f"{module} imports {target}, which is not a module of {sorted(PACKAGE_ROOTS)}")
    plain, lines = [], []
    for alias in node.names:
        sub = f"{target}.{alias.name}"
        if alias.name != "*" and module_file(sub) is not None and (_is_package(target) and module_file(sub) != module_file(target)):
            # `from package import submodule`: a module object, not a name in the package
            queue.append(sub)
            flat = flat_name(sub)
            lines.append(f"{indent}from . import {flat} as {alias.asname or alias.name}")
            # transformers finds the files to copy by `from .name import` lines only
            lines.append(f"{indent}from .{flat} import __name__ as _{flat}_module_name  # noqa: F401")
        else:
            plain.append(alias.name if alias.asname is None else f"{alias.name} as {alias.asname}")
    if plain:
        queue.append(target)
        lines.insert(0, f"{indent}from .{flat_name(target)} import {', '.join(plain)}")
    return lines


def _check_external(module: str, name: str) -> None:
    top = name.split(".")[0]
    if top in PACKAGE_ROOTS or top == "__future__" or top in sys.stdlib_module_names or top in ALLOWED_EXTERNAL:
        return
    raise BundleError(
        f"{module} imports {name!r}, which an exported model cannot depend on (allowed: the standard library and "
        f"{sorted(ALLOWED_EXTERNAL)}); import it lazily inside a try block or move it out of the modeling code"
    )


def _import_nodes(node: ast.AST, in_try: bool = False):
    """Every import statement, with whether it sits in a ``try`` body (optional
    dependencies, which transformers' remote-code check skips as well)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child, in_try
        else:
            yield from _import_nodes(child, in_try or isinstance(child, ast.Try))


def flatten_module(module: str, queue: list[str]) -> str:
    """Source of ``module`` with its internal imports made flat; appends what it needs to ``queue``."""
    path = module_file(module)
    if path is None:
        raise BundleError(f"cannot find the source of {module}")
    source = path.read_text(encoding="utf-8")
    lines = source.splitlines(keepends=True)
    edits: list[_Edit] = []
    for node, in_try in _import_nodes(ast.parse(source, filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in PACKAGE_ROOTS:
                    raise BundleError(
                        f"{path}:{node.lineno}: `import {alias.name}` cannot be flattened; use `from ... import name`"
                    )
                if not in_try:
                    _check_external(module, alias.name)
            continue
        target = _resolve(module, node)
        if target.split(".")[0] not in PACKAGE_ROOTS:
            if node.level == 0 and not in_try:
                _check_external(module, target)
            continue
        first, last = node.lineno - 1, node.end_lineno - 1
        head, tail = lines[first][: node.col_offset], lines[last][node.end_col_offset :]
        if head.strip() or tail.strip().split("#")[0].strip():
            raise BundleError(f"{path}:{node.lineno}: put this import on lines of its own to bundle it")
        edits.append(_Edit(first, last, _rewrite_import(module, node, target, head, queue)))
    for edit in sorted(edits, key=lambda e: e.start, reverse=True):
        lines[edit.start : edit.end + 1] = [ln + "\n" for ln in edit.lines]
    rel = path.relative_to(PACKAGE_ROOTS[module.split(".")[0]].parent)
    header = f"# Generated by xlstm_lm.hf.bundle from {module} ({rel}); do not edit.\n"
    return header + "".join(lines)


def bundle_sources(entry_modules: list[str] | None = None) -> dict[str, str]:
    """``{file name: source}`` of the flat bundle reached from ``entry_modules``."""
    queue = list(entry_modules or ENTRY_MODULES)
    out: dict[str, str] = {}
    while queue:
        module = queue.pop()
        name = flat_name(module) + ".py"
        if name in out:
            continue
        out[name] = flatten_module(module, queue)
    return out


def write_bundle(directory: str | Path, entry_modules: list[str] | None = None) -> list[str]:
    """Write the flat bundle into ``directory``; returns the file names. Checks every
    file with transformers' remote-code scanner (relative imports must exist)."""
    from transformers.dynamic_module_utils import get_relative_imports

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    sources = bundle_sources(entry_modules)
    for name, source in sources.items():
        (directory / name).write_text(source, encoding="utf-8")
    for name in sources:
        for rel in get_relative_imports(directory / name):
            if f"{rel}.py" not in sources:
                raise BundleError(f"bundled {name} imports .{rel}, which is not in the bundle")
    return sorted(sources)


__all__ = ["BundleError", "bundle_sources", "flat_name", "write_bundle"]
