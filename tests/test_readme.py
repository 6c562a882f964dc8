"""README.md and docs/ against the repository: the test command CI runs, and every relative link."""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAGES = [
    "README.md",
    "docs/api.md",
    "docs/training.md",
    "docs/evaluation.md",
    "docs/algorithm.md",
    "docs/development.md",
    "benchmarks/README.md",
]


def _shell_blocks(text):
    return re.findall(r"```sh\n(.*?)```", text, re.S)


def _github_anchor(heading):
    # GitHub's rule: lower case, drop everything but word characters, hyphens and spaces,
    # then spaces become hyphens.
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path):
    anchors, in_code = set(), False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and line.startswith("#"):
            anchors.add(_github_anchor(line.lstrip("#")))
    return anchors


def test_the_readme_test_command_is_the_one_ci_runs():
    # The newcomer's test command must be exactly what .ci/run checks, so that a green CI
    # means the documented command passes.
    ci_command = (ROOT / ".ci/run").read_text().strip().splitlines()[-1]
    commands = [
        line
        for block in _shell_blocks((ROOT / "README.md").read_text())
        for line in block.splitlines()
    ]
    assert ci_command.startswith("ruff format --check .")
    assert ci_command in commands


def test_the_readme_set_up_command_installs_and_runs_the_offline_demo():
    commands = _shell_blocks((ROOT / "README.md").read_text())[0]
    assert 'pip install -e ".[dev]"' in commands
    assert "bin/train --config=configs/mnist_demo.py --workdir=runs/mnist_demo" in commands
    assert 'python -m pip install --quiet -e ".[dev]"' in (ROOT / ".ci/run").read_text()


@pytest.mark.parametrize("page", PAGES)
def test_every_relative_link_names_a_file_and_heading_that_exist(page):
    path = ROOT / page
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text()):
        if re.match(r"[a-z]+:", target):
            continue
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
            broken.append(f"{target} (no such heading)")
    assert not broken, f"{page}: {broken}"
