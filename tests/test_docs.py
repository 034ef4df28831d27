"""What a new user reads first says what the code does."""

import fnmatch
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def ignored(path: str) -> bool:
    """Whether .gitignore ignores `path` (relative to the repository): names, paths and folders (`/out/`)."""
    patterns = [p.strip() for p in (ROOT / ".gitignore").read_text().splitlines() if p.strip() and not p.startswith("#")]
    folders = [p.strip("/") + "/" for p in patterns if p.endswith("/")]
    return (any(fnmatch.fnmatch(Path(path).name, p) or fnmatch.fnmatch(path, p.strip("/")) for p in patterns)
            or any(path.startswith(f) for f in folders))


def bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, re.S)


def test_readme_never_writes_a_key_where_git_add_would_take_it():
    readme = (ROOT / "README.md").read_text()
    written = re.findall(r"keygen -o (\S+)", readme) + re.findall(r"export-key .* -o (\S+)", readme)
    assert written
    for path in written:
        assert path.startswith(("~", "/")) or ignored(path), path


def test_readme_does_not_promise_what_the_test_model_cannot_do():
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert "restores exactly" not in readme
    assert "no realistic faces" in readme and "noise" in readme
    assert "12× larger" in readme and "High 4:4:4 Predictive" in readme  # what --lossless costs


def test_package_docstrings_point_at_the_docs_in_the_project():
    for module in (ROOT / "vidanon").glob("*.py"):
        text = module.read_text()
        assert "DESIGN.md" not in text and "DESIGN §" not in text, module.name
        for doc in re.findall(r"docs/[\w.]+\.md", text):
            assert (ROOT / doc).is_file(), (module.name, doc)


def test_every_test_reliability_md_names_exists():
    """docs/reliability.md says which test holds each promise: each of them must exist."""
    text = (ROOT / "docs" / "reliability.md").read_text()
    named = re.findall(r"`(?:(test_\w+)\.py::)?(test_\w+)(?:\[[^\]]*\])?`", text)
    assert len(named) > 15
    for module, name in named:
        source = (ROOT / "tests" / f"{module or 'test_reliability'}.py").read_text()
        assert f"def {name}(" in source, (module, name)


def test_what_the_readme_commands_write_is_ignored_by_git():
    for path in ("out/sample.mp4", "out/sample.vidanon.json", "restored/cam1.mp4", "master.key", "track7.key"):
        assert ignored(path), path
    assert not ignored("sample_videos/sample.mp4") and not ignored("vidanon/cli.py")


def test_the_readme_says_which_torch_a_cpu_machine_and_a_gpu_server_install():
    readme = (ROOT / "README.md").read_text()
    main_job = bash_blocks(readme)[0]
    assert "torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in main_job  # no CUDA download on a CPU machine
    assert "keygen --if-missing" in main_job  # the quick start can be run twice
    assert "On a GPU server, leave that step out" in readme


def test_ci_runs_exactly_the_readme_test_command():
    readme_tests = bash_blocks((ROOT / "README.md").read_text())[1].strip()
    assert readme_tests in (ROOT / ".ci" / "run").read_text()


def test_every_figure_in_the_readme_comes_from_the_benchmarks():
    """A dB or % figure the README states is one docs/benchmarks.md measured (with the clip it names there)."""
    readme = " ".join((ROOT / "README.md").read_text().split())
    measured = " ".join((ROOT / "docs" / "benchmarks.md").read_text().split())
    figures = re.findall(r"(\d+(?:\.\d+)?(?:–\d+(?:\.\d+)?)? ?(?:dB|%))", readme)
    assert len(figures) >= 5
    for figure in figures:
        numbers = re.findall(r"\d+(?:\.\d+)?", figure)
        for n in numbers:
            assert re.search(rf"(?<![\d.]){re.escape(n)}(?![\d])", measured), f"README figure {figure!r}: {n} is not in docs/benchmarks.md"
