"""mkdocs hooks for the flagcore documentation site (mkdocs.yml: ``hooks:``).

Pending pages: ``extra.pending_pages`` in mkdocs.yml names pages that other branches write and
that may not exist yet in a given checkout. While one is missing, the hook drops its nav entry
and turns links to it into plain text, so ``mkdocs build --strict`` passes before and after the
page lands; once the file exists nothing is changed. Only the pages named there are treated
this way: any other missing page or broken link still fails the strict build.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any

log = logging.getLogger("mkdocs.hooks.flagcore")

_missing: set[str] = set()


def _pending(config: Any) -> list[str]:
    return list((config.get("extra") or {}).get("pending_pages") or [])


def _prune(nav: Any) -> Any:
    """The nav without entries pointing at a missing pending page (and without emptied sections)."""
    if isinstance(nav, list):
        out = [x for x in (_prune(item) for item in nav) if x is not None]
        return out or None
    if isinstance(nav, dict):
        out = {}
        for title, target in nav.items():
            kept = _prune(target)
            if kept is not None:
                out[title] = kept
        return out or None
    if isinstance(nav, str) and nav in _missing:
        return None
    return nav


def on_config(config: Any) -> Any:
    _missing.clear()
    for page in _pending(config):
        if not os.path.exists(os.path.join(config["docs_dir"], page)):
            _missing.add(page)
    if _missing:
        log.info(
            "pending pages not in this checkout (left out of the nav): %s",
            ", ".join(sorted(_missing)),
        )
        if config.get("nav"):
            config["nav"] = _prune(config["nav"])
    return config


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if not _missing:
        return markdown
    here = os.path.dirname(page.file.src_uri)
    names = "|".join(re.escape(os.path.basename(m)) for m in _missing)
    pattern = re.compile(r"\[([^\]]+)\]\(((?:\.\./|\./)*[\w/-]*(?:" + names + r"))(#[^)]*)?\)")

    def unlink(m: re.Match) -> str:
        target = os.path.normpath(os.path.join(here, m.group(2))).replace(os.sep, "/")
        return m.group(1) if target in _missing else m.group(0)

    return pattern.sub(unlink, markdown)
