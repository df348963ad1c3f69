"""The house rules, read off the source: imports flow one way and nothing reads settings at import."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("kernel", "models", "features", "training", "serving", "cli")
# what each top-level package may import from the others (the rest is forbidden)
ALLOWED = {
    "kernel": set(),
    "models": set(),
    "features": {"kernel"},
    "serving": {"kernel", "features", "models"},
    "training": {"kernel", "features", "models"},
    "cli": {"kernel", "features", "models", "training", "serving"},
}


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every project package a module imports, at any depth (inside functions too)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        out += [(node.lineno, n.split(".")[0]) for n in names if n.split(".")[0] in PACKAGES]
    return out


def import_violations() -> list[str]:
    bad = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for line, target in _imports(path):
                if target != package and target not in ALLOWED[package]:
                    bad.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    return bad


def test_imports_flow_one_way():
    assert import_violations() == []


def test_the_rules_themselves_have_no_cycle():
    seen: dict[str, int] = {}

    def visit(p: str, stack: tuple[str, ...]) -> None:
        assert p not in stack, f"cycle: {' -> '.join((*stack, p))}"
        for q in ALLOWED[p]:
            visit(q, (*stack, p))

    for p in PACKAGES:
        visit(p, ())
    assert not seen


def test_the_checker_catches_an_upward_import(tmp_path, monkeypatch):
    """A checker that cannot fail proves nothing: plant a violation and see it reported."""
    fake = tmp_path / "features"
    fake.mkdir()
    (fake / "bad.py").write_text("def f():\n    from training.settings import Settings\n")
    for p in PACKAGES:
        if p != "features":
            (tmp_path / p).mkdir()
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert import_violations() == ["features/bad.py:2 imports training"]


def test_importing_the_service_reads_no_environment_and_loads_no_training_code():
    """Import every module the service needs with an environment that would break any settings read,
    and check that no training, tuning, plotting or CLI library came along."""
    probe = (
        "import os, sys\n"
        "os.environ['LOYALTY_PROFILE'] = 'not-a-profile'\n"  # any Settings() at import would raise
        "os.environ['LOYALTY_SERVING_WORKERS'] = 'many'\n"
        "import serving.service, features.store, features.repo, kernel.model_store\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in"
        " ('training', 'cli', 'optuna', 'matplotlib', 'typer', 'pytest'))\n"
        "print(heavy)\n"
    )
    proc = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_feature_definitions_come_from_an_explicit_spec(tmp_path):
    from features.repo import feast_objects
    from features.repo_spec import RepoSpec
    from kernel.settings import Profile, Settings

    embedded = RepoSpec.from_settings(Settings(data_dir=tmp_path, dataset="shop_a", profile=Profile.embedded))
    production = RepoSpec.from_settings(
        Settings(data_dir=tmp_path, dataset="shop_a", profile=Profile.production, api_keys="k", pseudonym_key="p" * 32)
    )
    src = {o.name: o for o in feast_objects(embedded)}["member_rfm"].batch_source
    assert src.path == str(tmp_path / "shop_a" / "offline" / "member_rfm.parquet")
    src = {o.name: o for o in feast_objects(production)}["member_rfm"].batch_source
    assert type(src).__name__ == "PostgreSQLSource" and src.get_table_query_string() == "shop_a_member_rfm"


def test_materialisation_is_bounded_in_code_and_in_the_rendered_yaml(tmp_path):
    """Feast reads each member's latest row and writes the online store in batches (its
    default converts a whole view at once), whether the store comes from code or the CLI."""
    from feast.repo_config import load_repo_config

    from features.store import MATERIALIZATION, repo_config, write_feature_store_yaml
    from kernel.settings import Settings

    settings = Settings(data_dir=tmp_path, feature_repo_dir=tmp_path / "repo")
    settings.feature_repo_dir.mkdir()
    assert MATERIALIZATION.pull_latest_features and 0 < MATERIALIZATION.online_write_batch_size <= 100_000
    assert repo_config(settings).materialization_config == MATERIALIZATION
    write_feature_store_yaml(settings)
    rendered = load_repo_config(settings.feature_repo_dir, settings.feature_repo_dir / "feature_store.yaml")
    assert rendered.materialization_config == MATERIALIZATION


def test_feast_cli_definitions_read_the_rendered_yaml(tmp_path):
    from features.repo_spec import SPEC_KEY, RepoSpec
    from kernel.settings import Profile

    path = tmp_path / "feature_store.yaml"
    with pytest.raises(FileNotFoundError, match="loyalty-ml features apply"):
        RepoSpec.from_feature_store_yaml(path)
    path.write_text("project: x\n")
    with pytest.raises(ValueError, match=SPEC_KEY):
        RepoSpec.from_feature_store_yaml(path)
    spec = RepoSpec(Profile.production, tmp_path / "offline", "shop_", 14)
    import yaml

    path.write_text(yaml.safe_dump({"project": "x", SPEC_KEY: spec.to_yaml_section()}))
    assert RepoSpec.from_feature_store_yaml(path) == spec
