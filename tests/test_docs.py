"""The documentation as written: the README's and docs/'s Python examples run, every command line
in them names commands, options and choices that the command line has, the API reference covers
the public API, and (where MkDocs is installed) the site builds in strict mode."""

import ast
import enum
import inspect
import os
import re
import shlex
import subprocess
import sys
import tempfile
import typing
from pathlib import Path

import numpy as np
import pytest
import typer.main
from PIL import Image
from typer.testing import CliRunner

import cli
import pyro_vae

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
SHELL = {"bash", "sh", "shell", "console"}


def code_blocks(page: Path, languages: set[str]) -> list[str]:
    return [body for language, body in FENCE.findall(page.read_text()) if language in languages]


def name(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


# The Python examples


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """Examples run in a folder of their own (their tempfile.mkdtemp() too), and what they
    register in the component registries is gone afterwards."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    registries = [
        pyro_vae.PRIORS,
        pyro_vae.LIKELIHOODS,
        pyro_vae.GUIDES,
        pyro_vae.NETWORKS,
        pyro_vae.MODELS,
        pyro_vae.DATASETS,
    ]
    saved = [dict(registry) for registry in registries]
    yield tmp_path
    for registry, entries in zip(registries, saved, strict=True):
        registry.clear()
        registry.update(entries)


def run_python_blocks(page: Path) -> None:
    for block in code_blocks(page, {"python"}):
        exec(compile(block, name(page), "exec"), {"__name__": "__docs__"})


# What each page's examples print, beside running without an error.
PRINTED = {
    "docs/components.md": [
        "monte-carlo KL, validation ELBO",  # the Student-t prior has no closed-form KL
        "Cauchy likelihood: validation ELBO",
        "floored guide: closed-form KL, validation ELBO",
        "own networks: validation ELBO",
    ],
    "docs/python-api.md": [
        "most unusual:",
        "torch.Size([100, 8]) torch.Size([16, 1, 8, 8])",  # load_run's codes and samples
        "ConditionalVAE 784 32",  # build_model
        "validation ELBO:",
        "torch.Size([10, 4, 8])",  # Predictive on Pyro's own SVI
    ],
}
EXAMPLE_PAGES = [page for page in PAGES if page != README and code_blocks(page, {"python"})]


def test_the_pages_with_python_examples_are_those_expected():
    assert set(PRINTED) <= {name(page) for page in EXAMPLE_PAGES}


@pytest.mark.parametrize("page", EXAMPLE_PAGES, ids=name)
def test_python_examples_run(page, sandbox, capsys):
    run_python_blocks(page)
    printed = capsys.readouterr().out
    for expected in PRINTED.get(name(page), []):
        assert expected in printed


def test_the_readme_example_on_your_own_images_runs(sandbox, capsys):
    """The README's commands on a small folder of photos, with a smaller budget added to what it
    writes (of an option given twice, the last counts), then its Python on the run they made."""
    rng = np.random.default_rng(0)
    for i in range(24):
        folder = sandbox / "photos" / ("cats" if i % 2 else "dogs")
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (40 + i % 3, 48, 3), dtype=np.uint8)  # sizes differ
        Image.fromarray(pixels).save(folder / f"{i}.png")
    smaller = {
        # 16×16, not 64×64: a discretized logistic's mean sums 256 bins per pixel
        "train": ["--epochs", "2", "--hidden-dims", "4,8,8", "--image-size", "16"],
        "score": ["--num-samples", "8"],
    }
    commands = [args for args in command_lines(README) if "runs/photos" in args]
    assert [args[0] for args in commands] == ["train", "sample", "encode", "score"]
    for args in commands:
        result = CliRunner().invoke(cli.app, [*args, *smaller.get(args[0], [])])
        assert result.exit_code == 0, f"{shlex.join(args)}:\n{result.output}"
    assert (sandbox / "runs" / "photos" / "samples-seed0.png").is_file()
    assert (sandbox / "codes.csv").is_file() and (sandbox / "scores.csv").is_file()
    run_python_blocks(README)
    assert "torch.Size([16, 3, 16, 16])" in capsys.readouterr().out  # at the run's image size


# The command lines


APP = typer.main.get_command(cli.app)


def command_lines(page: Path) -> list[list[str]]:
    """The arguments after ``pyro-vae`` or ``cli.py`` in every shell line and inline code span of
    ``page`` (or a span that starts with a command and gives an option), up to a ``...`` that
    stands for more."""
    text = page.read_text()
    lines = [
        line for body in code_blocks(page, SHELL) for line in body.replace("\\\n", " ").splitlines()
    ]
    prose = FENCE.sub("", text)
    lines += [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", prose)]
    found = []
    for line in lines:
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError:  # prose in backticks that is no command line
            continue
        if tokens[:1] and tokens[0] in APP.commands and any(t.startswith("--") for t in tokens):
            tokens = ["pyro-vae", *tokens]  # `train --beta 4` in prose: a command line too
        for start, token in enumerate(tokens):
            if token == "pyro-vae" or token.endswith("cli.py"):
                args = []
                for arg in tokens[start + 1 :]:
                    if arg in ("&&", "||", "|", ";", "...") or arg.endswith(";"):
                        break
                    args.append(arg)
                found.append(args)
                break
    return found


def choices_of(command, parameter: str) -> set[str] | None:
    """The values an option or argument of an enum type takes, from its declaration."""
    annotation = inspect.signature(command.callback).parameters[parameter].annotation
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return {member.value for member in annotation}
    return None


def check_command_line(args: list[str]) -> None:
    group_options = {opt for param in APP.get_params(APP.context_class(APP)) for opt in param.opts}
    while args and args[0].startswith("-"):
        assert args[0] in group_options, f"pyro-vae has no option {args[0]}"
        args = args[1:]
    if not args:
        return
    assert args[0] in APP.commands, f"pyro-vae has no command {args[0]!r}"
    command = APP.commands[args[0]]
    context = command.context_class(command, info_name=args[0])
    # The parser takes the command's arguments as well as its options; what is left over is extra.
    given, extra, _ = command.make_parser(context).parse_args(list(args[1:]))
    assert not extra, f"{args[0]} takes no further arguments: {extra}"
    for parameter, value in given.items():
        allowed = choices_of(command, parameter) if parameter != "help" else None
        if allowed is not None and not value.isupper():  # NAME, K: a placeholder
            assert value in allowed, f"{args[0]}'s {parameter} takes {sorted(allowed)}, not {value}"


@pytest.mark.parametrize("page", PAGES, ids=name)
def test_every_command_line_in_the_docs_parses(page):
    for args in command_lines(page):
        try:
            check_command_line(args)
        except Exception as error:  # the parser's own errors name the option
            pytest.fail(f"{name(page)}: pyro-vae {shlex.join(args)}: {error}")


def test_the_command_line_check_can_fail():
    check_command_line(["train", "--likelihood", "bernoulli", "--binarize", "dynamic"])
    for wrong in (
        ["train", "--no-such-option"],
        ["train", "--likelihood", "gaussian-mixture"],
        ["train", "--epochs"],
        ["experiment", "nothing"],
        ["evaluate", "runs/a", "runs/b"],
        ["trian"],
    ):
        with pytest.raises(Exception):  # noqa: B017 (the parser's error or an assertion)
            check_command_line(wrong)


@pytest.mark.parametrize("page", PAGES, ids=name)
def test_the_code_the_docs_name_exists(page):
    """Scripts, tests and modules named by their path: in the checkout, or under pyro_vae/."""
    paths = re.findall(r"(?<![\w./-])((?:[\w-]+/)+[\w-]+\.py)\b", page.read_text())
    for path in paths:
        assert (ROOT / path).is_file() or (ROOT / "pyro_vae" / path).is_file(), (
            f"{name(page)} names {path}, which is not there"
        )


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading, which for headings of letters, digits, spaces and
    punctuation other than hyphens is also MkDocs's."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_the_readme_links_lead_somewhere():
    """The README is read on GitHub, outside MkDocs' strict build: its links checked here."""
    text = README.read_text()
    links = re.findall(r"\]\(([^)\s]+)\)", text) + re.findall(r'(?:src|href)="([^"]+)"', text)
    assert links
    for link in links:
        path, _, anchor = link.partition("#")
        assert (ROOT / path).is_file(), f"the README links to {path}, which is not there"
        if anchor:
            headings = re.findall(r"^#+ (.*)$", (ROOT / path).read_text(), flags=re.MULTILINE)
            assert anchor in {github_anchor(heading) for heading in headings}, link


def test_the_architecture_page_maps_every_module():
    """docs/architecture.md says where each concept lives: every module of the package has its
    row (a package's __init__ excepted), so a new module comes with its place on the map."""
    page = (ROOT / "docs" / "architecture.md").read_text()
    modules = {
        path.relative_to(ROOT / "pyro_vae").as_posix()
        for path in (ROOT / "pyro_vae").rglob("*.py")
        if path.name != "__init__.py" and path.parent.name != "__pycache__"
    }
    missing = sorted(m for m in modules if f"`{m}`" not in page and f"`pyro_vae/{m}`" not in page)
    assert not missing, f"docs/architecture.md does not place {missing}"


# The site


def test_the_api_reference_covers_the_public_api():
    """Every module that pyro_vae/__init__.py takes a public name from has its reference."""
    tree = ast.parse((ROOT / "pyro_vae" / "__init__.py").read_text())
    public = set(pyro_vae.__all__)
    modules = {
        node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        and node.module
        and any(alias.name in public for alias in node.names)
    }
    reference = "".join(page.read_text() for page in (ROOT / "docs" / "reference").glob("*.md"))
    documented = set(re.findall(r"^::: ([\w.]+)$", reference, flags=re.MULTILINE))
    assert modules <= documented, f"no reference page for {sorted(modules - documented)}"


def test_the_site_builds_in_strict_mode(tmp_path):
    for module in ("mkdocs", "material", "mkdocstrings"):
        pytest.importorskip(module, reason="the docs extra: pip install -e '.[docs]'")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},  # Material's notice about MkDocs 2
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "reference" / "runs" / "index.html").is_file()
