"""The package's layout (docs/contributing.md): layers without import circles, short modules, short functions."""

import ast
import dataclasses
import pathlib

import trl
from transformers import TrainingArguments

import banel_trl
from banel_trl import BanelConfig


PACKAGE = pathlib.Path(banel_trl.__file__).parent

# Lower layers never import higher ones; within a layer, imports must not form a circle.
LAYERS = {
    "cli": 4,
    "scripts": 4,
    "trainer": 3,
    "collect": 2,
    "evaluation": 2,
    "sampling": 2,
    "thresholds": 2,
    "fitting": 2,
    "region_policy": 2,
    "distillation": 2,
    "hub": 2,
    "report": 2,
    "tasks": 2,
    "posterior": 1,
    "rejection": 1,
    "metrics": 1,
    "scoring": 1,
    "regions": 1,
    "ledger": 1,
    "manifest": 1,
    "rewards": 1,
    "reward_logs": 1,
    "data": 1,
    "config": 1,
    "config_checks": 1,
    "generation_arguments": 1,
    "models": 1,
    "distributed": 1,
    "callbacks": 1,
    "testing": 1,
    "vllm_generation": 1,
    "configs": 1,
    "templates": 1,
}
MAX_MODULE_LINES = 400  # issue 27's bar
MAX_FUNCTION_LINES = 60


def modules():
    return sorted(path for path in PACKAGE.rglob("*.py") if path.name != "__init__.py" or path.parent != PACKAGE)


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def internal_imports(path: pathlib.Path) -> set[str]:
    """Every banel_trl module `path` imports, at module level or inside functions."""
    package = module_name(path).split(".")[:-1] if path.name != "__init__.py" else module_name(path).split(".")
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join([*base, *(node.module.split(".") if node.module else [])])
                names = [target] if node.module else [".".join([*base, alias.name]) for alias in node.names]
                imported.update(names)
            elif node.module and node.module.split(".")[0] == "banel_trl":
                imported.add(node.module.removeprefix("banel_trl").lstrip("."))
        elif isinstance(node, ast.Import):
            imported.update(a.name.removeprefix("banel_trl.") for a in node.names if a.name.startswith("banel_trl."))
    return imported


def test_no_import_goes_up_a_layer_or_round_a_circle():
    graph = {module_name(path): internal_imports(path) for path in modules()}
    for module, imports in graph.items():
        assert "" not in imports, f"{module} imports the package facade banel_trl"
        for target in imports:
            assert LAYERS[target.split(".")[0]] <= LAYERS[module.split(".")[0]], f"{module} imports {target}"

    def visit(module, path):
        for target in graph.get(module, ()):
            if target in graph:
                assert target not in path, f"import circle: {' -> '.join([*path, target])}"
                visit(target, [*path, target])

    for module in graph:
        visit(module, [module])


def test_modules_are_short():
    for path in modules():
        source = path.read_text()
        assert source.count("\n") <= MAX_MODULE_LINES, f"{path.name}: {source.count(chr(10))} lines"


def test_functions_are_short():
    for path in modules():
        source = path.read_text()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                # Code lines, from the signature to the end, without the docstring.
                docstring = ast.get_docstring(node, clean=False) is not None
                length = node.end_lineno - node.lineno + 1
                length -= node.body[0].end_lineno - node.body[0].lineno + 1 if docstring else 0
                assert length <= MAX_FUNCTION_LINES, f"{path.name}: {node.name} has {length} lines"


MAX_BANEL_FIELDS = 12  # issue 27's bar


def test_banel_config_has_at_most_12_banel_specific_fields():
    # BaNEL's own options: BanelConfig's fields that are neither TrainingArguments' nor GRPOConfig's (the generation
    # and vLLM arguments mirror GRPOConfig's, with their meaning there).
    shared = {field.name for field in dataclasses.fields(trl.GRPOConfig)}
    shared |= {field.name for field in dataclasses.fields(TrainingArguments)}
    own = [field.name for field in dataclasses.fields(BanelConfig) if field.name not in shared]
    assert "max_reward_evaluations" in own and "use_vllm" not in own and "learning_rate" not in own
    assert len(own) <= MAX_BANEL_FIELDS, f"{len(own)} BaNEL-specific fields: {own}"
