"""The layout's promises, checked on the source: who may import whom, and what ``import edgegen`` loads."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Installed as edgegen.<name> through pyproject's package-dir mapping.
PLUGIN_PACKAGES = ("exporters", "runtimes", "trainers")
# Toolchains `import edgegen` must not load (names as they appear in sys.modules).
TOOLCHAIN_MODULES = (
    "torch",
    "diffusers",
    "transformers",
    "executorch",
    "onnxruntime",
    "coremltools",
    "litert_torch",
    "ai_edge_litert",
    "tensorflow",
)


def module_name(path: Path) -> str:
    """The installed module name of a source file (exporters/onnx.py -> edgegen.exporters.onnx)."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[0] in PLUGIN_PACKAGES:
        parts.insert(0, "edgegen")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth (function-level imports count), made absolute."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module
            found.add(module)
            # `from edgegen import cli` imports edgegen.cli too.
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def sources(*folders: str) -> list[Path]:
    return sorted(path for folder in folders for path in (ROOT / folder).rglob("*.py"))


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


CORE_FILES = [
    path
    for path in sources("edgegen", *PLUGIN_PACKAGES)
    if not any(within(module_name(path), p) for p in ("edgegen.cli", "edgegen.embedded"))
]


def test_the_scanner_sees_what_the_rules_are_about():
    # Guards the tests below against passing because they look at nothing.
    assert module_name(ROOT / "exporters" / "onnx.py") == "edgegen.exporters.onnx"
    assert module_name(ROOT / "edgegen" / "cli" / "__init__.py") == "edgegen.cli"
    assert "edgegen.embedded.demo" in imported_modules(ROOT / "edgegen" / "cli" / "demo.py")  # a function-level import
    assert len(CORE_FILES) > 40 and all(sources(p) for p in PLUGIN_PACKAGES)


@pytest.mark.parametrize("path", CORE_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_core_never_imports_the_cli_or_the_demo(path):
    offending = sorted(
        m for m in imported_modules(path) if within(m, "edgegen.cli") or within(m, "edgegen.embedded.demo")
    )
    assert not offending, f"{path.relative_to(ROOT)} imports {', '.join(offending)}"


@pytest.mark.parametrize("package", PLUGIN_PACKAGES)
def test_exporters_runtimes_and_trainers_never_import_each_other(package):
    others = [f"edgegen.{p}" for p in PLUGIN_PACKAGES if p != package]
    offending = {
        str(path.relative_to(ROOT)): sorted(m for m in imported_modules(path) if any(within(m, o) for o in others))
        for path in sources(package)
    }
    assert not {k: v for k, v in offending.items() if v}


def test_import_edgegen_loads_no_toolchain():
    # A fresh interpreter: this test process has long imported torch.
    code = (
        "import json, sys\n"
        "import edgegen\n"
        f"print(json.dumps(sorted(m for m in {list(TOOLCHAIN_MODULES)!r} if m in sys.modules)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1]) == []
