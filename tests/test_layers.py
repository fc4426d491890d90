"""The package's layering (pyproject.toml, [tool.importlinter]) and its imports: all at module level, so the
layers are what the import statements say."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import zoft

SOURCE = Path(zoft.__file__).parent
# Optional extras: imported where they are used, so zoft works without them.
OPTIONAL = {("sinks.py", "torch.utils.tensorboard")}


def function_level_imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for function in ast.walk(ast.parse(path.read_text())):
        if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
            for node in ast.walk(function):
                if isinstance(node, ast.Import):
                    found += [(node.lineno, alias.name) for alias in node.names]
                elif isinstance(node, ast.ImportFrom):
                    found.append((node.lineno, node.module or "."))
    return found


def test_no_module_imports_inside_a_function_but_the_optional_extras():
    hidden = [f"{path.relative_to(SOURCE)}:{line} imports {module}"
              for path in sorted(SOURCE.rglob("*.py")) for line, module in function_level_imports(path)
              if (str(path.relative_to(SOURCE)), module) not in OPTIONAL]
    assert hidden == []


def test_the_checker_sees_a_function_level_import(tmp_path):
    module = tmp_path / "module.py"
    module.write_text("import os\n\ndef f():\n    from json import dumps\n    return dumps\n")
    assert function_level_imports(module) == [(4, "json")]


def test_the_layers_contract_is_kept():
    lint_imports = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert lint_imports, "import-linter is a dev dependency: pip install -e '.[dev]'"
    result = subprocess.run([lint_imports], capture_output=True, text=True, cwd=SOURCE.parent.parent, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout
