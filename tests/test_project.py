"""The project's own promises: deps in sync, notebooks without outputs, no machine paths, two commands."""
import json
import re
import subprocess
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def _tracked() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, text=True)
    return [REPO / f for f in out.stdout.split()] if out.returncode == 0 else []


def test_environment_yml_lists_the_pyproject_dependencies():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = set(project["dependencies"]) | set(project["optional-dependencies"]["dev"])
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert set(pip) - {"-e ."} == wanted


def test_notebooks_are_committed_without_outputs():
    for nb_path in sorted((REPO / "notebooks").glob("*.ipynb")):
        nb = json.loads(nb_path.read_text())
        for cell in nb["cells"]:
            if cell["cell_type"] == "code":
                assert not cell.get("outputs") and cell.get("execution_count") is None, nb_path.name


def test_notebooks_have_a_parameters_cell_and_the_cardlib_kernel():
    for nb_path in sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        nb = json.loads(nb_path.read_text())
        assert nb["metadata"]["kernelspec"]["name"] == "cardlib", nb_path.name
        tagged = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(tagged) == 1 and "run_dir" in "".join(tagged[0]["source"]), nb_path.name


def test_no_absolute_paths_of_a_machine_in_tracked_files():
    roots = ["/" + "work/", "/" + "root/", "/" + "home/[a-z]", "/" + "tmp/pytest", "/" + "Users/"]
    pattern = re.compile("|".join(roots))
    offenders = []
    for f in _tracked():
        if f.suffix in {".py", ".md", ".yaml", ".yml", ".toml", ".ipynb", ".json", ".txt", ""} and f.is_file():
            text = f.read_text(errors="ignore")
            if pattern.search(text):
                offenders.append(f.relative_to(REPO).as_posix())
    assert offenders == []


def test_readme_opens_with_the_two_commands_and_ci_runs_the_tests():
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", readme, re.S)
    assert blocks and [line.strip() for line in blocks[0].strip().splitlines() if not line.startswith("#")] == [
        "make run", "make test"]
    assert "make test" in (REPO / ".ci" / "run").read_text()
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^run: setup", makefile, re.M) and re.search(r"^test: setup", makefile, re.M)
    assert "torch==2.14.1 torchvision==0.29.1" in makefile and "--sys-prefix --name cardlib" in makefile
