"""The repository's references to its own files hold: pyproject's package-data globs each match a file
and together cover every non-Python file of the package (so a wheel has them all), and the paths that
comments, docs and scripts cite (docs/..., tests/..., ../shared/...) exist."""
import re
import subprocess
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "navitrain"
# a repository path: not part of a longer name, nor another project's "owner/repo:path"
CITED = re.compile(r"(?<![\w./:-])((?:\.\./)*(?:docs|tests|scripts|src|benchmarks|shared)/[\w./*-]*[\w*])")
MD_LINK = re.compile(r"\]\(([^)#\s]+)")


def _tracked(*suffixes: str) -> list[Path]:
    """The repository's files (git's list; without git, the tree less hidden and build folders)."""
    try:
        listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                                text=True, check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):  # an unpacked sdist, say
        listed = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*")
                  if not any(part.startswith(".") or part in ("build", "dist") for part in p.relative_to(ROOT).parts)]
    return [ROOT / f for f in listed if f.endswith(suffixes) and (ROOT / f).is_file()]


def test_package_data_globs_match_and_cover_the_package():
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["navitrain"]
    matched = set()
    for pattern in globs:
        found = set(PACKAGE.glob(pattern))
        assert found, f"package-data glob {pattern!r} matches nothing under src/navitrain"
        matched |= found
    data = {p for p in PACKAGE.rglob("*") if p.is_file() and p.suffix not in (".py", ".pyc")
            and "__pycache__" not in p.parts}
    assert data - matched == set(), "files a wheel would leave out"


def test_cited_paths_exist():
    missing = []
    for file in _tracked(".py", ".sh", ".md", ".toml"):
        text = file.read_text(errors="replace")
        refs = [m.group(1).rstrip(".") for m in CITED.finditer(text)]
        if file.suffix == ".md":
            refs += [m.group(1) for m in MD_LINK.finditer(text) if not m.group(1).startswith(("http", "mailto:"))]
        for ref in refs:
            if "*" in ref:  # a glob ("docs/benchmark-logs/run*"): something must match it
                if not list(ROOT.glob(ref)):
                    missing.append(f"{file.relative_to(ROOT)}: {ref}")
            elif not ((ROOT / ref).exists() or (file.parent / ref).exists()):
                missing.append(f"{file.relative_to(ROOT)}: {ref}")
    assert missing == []
