"""The README's two commands, CI and the package metadata agree."""

import configparser
import re
from pathlib import Path

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


def test_readme_python_examples_run(ml100k_dir, monkeypatch, capsys):
    monkeypatch.setenv("MDCF_DATA_DIR", str(ml100k_dir))
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)\n```", text, flags=re.S)
    assert blocks
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})


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
