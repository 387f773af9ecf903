"""The console's files work under a strict Content-Security-Policy (`default-src 'self'`): no inline
script, style or event handler, nothing loaded from another host, and every file they name exists."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STATIC = ROOT / "static"


def test_pages_have_no_inline_code_and_load_only_their_own_files():
    for page in STATIC.glob("*.html"):
        html = page.read_text()
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), f"{page.name}: inline script"
        assert "<style" not in html and not re.search(r"\sstyle=", html), f"{page.name}: inline style"
        assert not re.search(r"\son[a-z]+=", html), f"{page.name}: inline event handler"
        for ref in re.findall(r'(?:src|href)="([^"#]+)"', html):
            assert not re.match(r"[a-z]+:|//", ref), f"{page.name}: loads {ref} from elsewhere"
            if ref.startswith("static/"):
                assert (ROOT / ref).is_file(), f"{page.name}: {ref} is missing"


def test_scripts_never_write_html_or_inline_styles_and_import_only_their_neighbours():
    for script in (STATIC / "js").glob("*.js"):
        code = script.read_text()
        # text from the API (people's names, file names) only ever goes in as text nodes
        assert not re.search(r"\.(innerHTML|outerHTML)\s*=|insertAdjacentHTML|document\.write", code), script.name
        assert not re.search(r"setAttribute\(\s*[\"']style|\beval\(|new Function\(", code), script.name
        for module in re.findall(r'from\s+"([^"]+)"', code):
            assert module.startswith("./") and (script.parent / module).is_file(), f"{script.name}: {module}"
