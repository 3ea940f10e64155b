"""The documentation and the habits around it: generated pages are current, the README stays a
landing page whose links resolve, every docs page is in the site's nav, no comment cites a file
outside the repository, the type stubs match the compiled module, the package ships its type
information, and (where mkdocs is installed) the site builds with --strict."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
sys.path.insert(0, str(ROOT / "tools"))

import bench_tables  # noqa: E402
import mkdocs_hooks  # noqa: E402

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _pending_pages() -> set[str]:
    """extra.pending_pages of mkdocs.yml: pages other branches write (see tools/mkdocs_hooks.py)."""
    text = (ROOT / "mkdocs.yml").read_text()
    block = text.split("pending_pages:", 1)[1]
    pages = []
    for line in block.splitlines()[1:]:
        m = re.match(r"^\s+- (\S+\.md)\s*$", line)
        if not m:
            break
        pages.append(m.group(1))
    return set(pages)


def _nav_pages() -> list[str]:
    text = (ROOT / "mkdocs.yml").read_text()
    nav = text.split("\nnav:\n", 1)[1]
    return re.findall(r":\s+(\S+\.md)\s*$", nav, flags=re.M)


def _local_targets(text: str) -> list[str]:
    out = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue
        out.append(target.split("#", 1)[0])
    return out


def test_benchmark_tables_are_current(capsys):
    rc = bench_tables.main(["--check"])
    assert rc == 0, capsys.readouterr().out + f"\nregenerate with `{bench_tables.REGENERATE}`"


def test_benchmark_tables_survive_an_unknown_layout(tmp_path, monkeypatch):
    (tmp_path / "energy.json").write_text('{"unexpected": 1}')
    (tmp_path / "new_bench.json").write_text("{}")
    monkeypatch.setattr(bench_tables, "RESULTS", str(tmp_path))
    assert "layout not recognised" in bench_tables.render("energy")
    assert "No results recorded yet" in bench_tables.render("rules")
    assert "`bench/results/new_bench.json`" in bench_tables.render("other")


def test_readme_is_a_landing_page():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    for command in (
        'pip install torch==2.13.0 ".[demo]" && flagcore demo',
        'pip install torch==2.13.0 ".[test]" && python -m pytest',
    ):
        assert f"```bash\n{command}\n```" in text


@pytest.mark.parametrize("page", ["README.md", "CONTRIBUTING.md"])
def test_top_level_links_resolve(page):
    pending = {f"docs/{p}" for p in _pending_pages()}
    for target in _local_targets((ROOT / page).read_text()):
        assert (ROOT / target).exists() or target in pending, f"{page}: broken link {target}"


def test_docs_links_resolve():
    pending = _pending_pages()
    for md in DOCS.rglob("*.md"):
        rel = md.relative_to(DOCS)
        for target in _local_targets(md.read_text()):
            resolved = os.path.normpath(os.path.join(os.path.dirname(str(rel)), target)).replace(
                os.sep, "/"
            )
            assert (DOCS / resolved).exists() or resolved in pending, (
                f"docs/{rel}: broken link {target}"
            )


def test_nav_lists_every_page_and_nothing_missing():
    nav = _nav_pages()
    pending = _pending_pages()
    assert len(nav) == len(set(nav)), "a page is listed twice in the nav"
    pages = {str(p.relative_to(DOCS)).replace(os.sep, "/") for p in DOCS.rglob("*.md")}
    assert set(nav) - pages <= pending, (
        f"nav entries without a page: {sorted(set(nav) - pages - pending)}"
    )
    assert pages <= set(nav), f"pages missing from the nav: {sorted(pages - set(nav))}"
    assert pending <= set(nav)


def test_hook_drops_only_missing_pending_pages(tmp_path):
    (tmp_path / "here.md").write_text("x")
    (tmp_path / "landed.md").write_text("x")
    nav = [
        {"Home": "here.md"},
        {"Topic": [{"A": "landed.md"}, {"B": "absent.md"}]},
        {"C": "absent.md"},
    ]
    config = {
        "docs_dir": str(tmp_path),
        "nav": nav,
        "extra": {"pending_pages": ["landed.md", "absent.md"]},
    }
    out = mkdocs_hooks.on_config(config)
    assert out["nav"] == [{"Home": "here.md"}, {"Topic": [{"A": "landed.md"}]}]
    page = SimpleNamespace(file=SimpleNamespace(src_uri="sub/page.md"))
    md = "see [the rules](../absent.md#x), [landed](../landed.md) and [code](absent.md.txt)"
    assert mkdocs_hooks.on_page_markdown(md, page, config, None) == (
        "see the rules, [landed](../landed.md) and [code](absent.md.txt)"
    )


def test_hook_changes_nothing_once_every_page_exists(tmp_path):
    (tmp_path / "a.md").write_text("x")
    nav = [{"A": "a.md"}]
    config = {"docs_dir": str(tmp_path), "nav": list(nav), "extra": {"pending_pages": ["a.md"]}}
    assert mkdocs_hooks.on_config(config)["nav"] == nav
    page = SimpleNamespace(file=SimpleNamespace(src_uri="index.md"))
    assert mkdocs_hooks.on_page_markdown("[a](a.md)", page, config, None) == "[a](a.md)"


def _tracked_text_files() -> list[Path]:
    try:
        out = subprocess.run(
            ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    files = []
    for name in out.stdout.splitlines():
        p = ROOT / name
        if (
            p.suffix
            in {
                ".py",
                ".pyi",
                ".hpp",
                ".cpp",
                ".cu",
                ".cuh",
                ".md",
                ".toml",
                ".yml",
                ".yaml",
                ".sh",
                ".txt",
            }
            and p.exists()
        ):
            files.append(p)
    return files


def test_no_file_cites_a_spec_outside_the_repository():
    stale = [
        "/work/" + "shared",
        "../" + "shared/",
        "SPEC_" + "FA.md",
        "SPEC_" + "ENERGY.md",
        "README_" + "energy.md",
    ]
    bad = []
    for p in _tracked_text_files():
        text = p.read_text(errors="replace")
        bad += [f"{p.relative_to(ROOT)}: {s}" for s in stale if s in text]
    assert not bad, "cite docs/spec_fa.md or docs/spec_energy.md instead: " + "; ".join(bad)


def test_license_is_apache_2():
    text = (ROOT / "LICENSE").read_text()
    assert (
        "Apache License" in text
        and "Version 2.0, January 2004" in text
        and "END OF TERMS AND CONDITIONS" in text
    )
    assert 'license = { text = "Apache-2.0" }' in (ROOT / "pyproject.toml").read_text()


def test_package_ships_its_type_information():
    import flagcore

    pkg = Path(flagcore.__file__).parent
    assert (pkg / "py.typed").exists() and (pkg / "_core.pyi").exists()
    assert (ROOT / "python" / "flagcore" / "py.typed").exists()


@pytest.mark.skipif(
    importlib.util.find_spec("pybind11_stubgen") is None, reason="pybind11-stubgen not installed"
)
def test_core_stubs_match_the_compiled_module():
    out = subprocess.run(
        ["bash", str(ROOT / "tools" / "gen_stubs.sh"), "--check"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings") is None,
    reason="mkdocs/mkdocstrings not installed (the docs extra)",
)
def test_site_builds_strict(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert out.returncode == 0, out.stdout + out.stderr
    api = (tmp_path / "site" / "api" / "flagcore" / "index.html").read_text()
    assert "flag_aggregate" in api and "reconstruction_ratios" in api  # the reference is generated
