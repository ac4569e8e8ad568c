"""Every ``from resnets... import ...`` line that README.md and docs/*.md show must import: a reader copies them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
IMPORT = re.compile(r"(from resnets[\w.]* import .+|import resnets[\w.]*)$")


def documented_imports() -> list[tuple[str, str]]:
    found = []
    for doc in DOCS:
        for block in re.findall(r"```python\n(.*?)```", doc.read_text(), re.DOTALL):
            lines = iter(block.splitlines())
            for line in lines:
                match = IMPORT.match(line.split("#", 1)[0].strip())
                if match is None:
                    continue
                statement = match.group(1).strip()
                while statement.count("(") > statement.count(")"):  # a parenthesised import over several lines
                    statement += " " + next(lines).split("#", 1)[0].strip()
                found.append((doc.name, statement))
    return sorted(set(found))


def test_the_docs_show_imports_at_all():
    assert len(documented_imports()) >= 10


@pytest.mark.parametrize("doc,line", documented_imports())
def test_documented_import_works(doc, line):
    exec(compile(line, f"{doc}: {line}", "exec"), {})
