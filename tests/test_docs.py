"""What a new user reads first says what the code does."""

import fnmatch
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def ignored(path: str) -> bool:
    patterns = [p.strip() for p in (ROOT / ".gitignore").read_text().splitlines() if p.strip() and not p.startswith("#")]
    return any(fnmatch.fnmatch(Path(path).name, p) or fnmatch.fnmatch(path, p.strip("/")) for p in patterns)


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
    assert "10× larger" in readme and "High 4:4:4 Predictive" in readme  # what --lossless costs


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
