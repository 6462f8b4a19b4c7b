"""The snippet runner itself: markers are read, unmarked blocks and missing output are caught."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import snippets
from snippets import blocks, missing_output, outputs, problems, script

PAGE = """# A page

<!-- test: run -->
```bash
echo one
echo two
```

<!-- test: output -->
```text
one
...
two
```

```python
print("unmarked")
```

<!-- test: skip -->
```bash
false
```

```text
plain text needs no marker
```
"""


def test_markers_and_their_problems(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(snippets, "REPO", tmp_path)  # page paths are made relative to it
    page = tmp_path / "page.md"
    page.write_text(PAGE)
    found = blocks(page)
    assert [(b.language, b.kind) for b in found] == [("bash", "run"), ("text", "output"), ("python", ""),
                                                     ("bash", "skip"), ("text", "")]
    assert [p.split(": ", 1)[1] for p in problems(found)] == [
        "a ```python block without a `<!-- test: ... -->` marker", "a skipped block must say why"]


def test_output_is_matched_in_order() -> None:
    assert missing_output("one\n...\ntwo\n", "zero\none\nx\ntwo\n") is None
    assert missing_output("two\none\n", "one\ntwo\n") == "one"


def test_a_failing_block_stops_the_script_and_is_located(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(snippets, "REPO", tmp_path)
    page = tmp_path / "page.md"
    page.write_text("<!-- test: run -->\n```bash\necho before\nfalse\necho after\n```\n")
    done = subprocess.run(["bash", "-c", script(blocks(page), python="python3")], capture_output=True, text=True,
                          check=False)
    assert done.returncode != 0
    assert outputs(done.stdout) == {0: "before\n"}
