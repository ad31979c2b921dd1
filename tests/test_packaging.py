"""The README's two commands, CI and the package metadata agree."""

import configparser
import re
from pathlib import Path

import pytest

import mdcf

ROOT = Path(__file__).resolve().parents[1]


def readme_commands():
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```bash\n(.*?)\n```", text, flags=re.S)[:2]


def test_readme_has_two_setup_commands_and_ci_runs_the_second():
    install_and_run, install_and_test = readme_commands()
    assert "\n" not in install_and_run and "\n" not in install_and_test
    assert "pip install ." in install_and_run
    assert '".[test]"' in install_and_test and "pytest" in install_and_test
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert install_and_test in ci


def test_metadata():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    requires = config["options"]["install_requires"]
    for dependency in ("jax", "optax", "numpy", "scipy", "pandas", "tqdm", "matplotlib"):
        assert re.search(rf"^{dependency}\b", requires, flags=re.M), dependency
    assert "torch" not in requires and "tensorflow" not in requires
    extras = config["options.extras_require"]
    assert {"test", "notebooks", "bench"} <= set(extras)
    assert config["metadata"]["version"] == mdcf.__version__


def test_layout():
    for folder in ("mdcf", "experiments", "notebooks", "benchmarks", "tests"):
        assert (ROOT / folder).is_dir(), folder


DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_readme_is_a_front_door():
    assert len((ROOT / "README.md").read_bytes()) <= 10 * 1024


@pytest.mark.parametrize("page", DOCS, ids=lambda p: p.name)
def test_links_between_pages_resolve(page):
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
        assert (page.parent / target).exists(), f"{page.name} links to {target}, which does not exist"


@pytest.mark.parametrize("page", DOCS, ids=lambda p: p.name)
def test_python_examples_run(page, ml100k_dir, monkeypatch, capsys):
    monkeypatch.setenv("MDCF_DATA_DIR", str(ml100k_dir))
    blocks = re.findall(r"```python\n(.*?)\n```", page.read_text(), flags=re.S)
    if page.name in ("README.md", "data.md", "embeddings.md", "training.md", "devices.md"):
        assert blocks, f"{page.name} lost its examples"
    for block in blocks:
        exec(compile(block, str(page.relative_to(ROOT)), "exec"), {})


def test_command_line_summary_and_its_errors(tmp_path, capsys):
    from mdcf.__main__ import main

    path = tmp_path / "u.data"
    path.write_text("1\t10\t4\t100\n2\t10\t5\t200\n")
    assert main(["summary", str(path)]) == 0
    assert "2 ratings, 2 users, 1 items" in capsys.readouterr().out
    assert main(["summary", "ml-5m"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("mdcf: error: no ratings file at ml-5m (MovieLens names: ml-100k") and "Traceback" not in err
    path.write_text("1\t10\tfour\t100\n")
    assert main(["summary", str(path)]) == 1
    assert "line 1" in capsys.readouterr().err
