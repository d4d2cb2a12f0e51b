"""Meta-tests, as Datasette keeps its hooks honest: every hook has a one-line
docstring and is documented in README.md with its exact signature, and the
committed API documents are up to date."""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from core import hookspecs

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"

HOOKS = {
    name: function
    for name, function in inspect.getmembers(hookspecs, inspect.isfunction)
    if hasattr(function, "rescenter_spec")
}


def signature(name: str) -> str:
    """`veto_order(services, order)`: how README.md names a hook."""
    return f"{name}({', '.join(inspect.signature(HOOKS[name]).parameters)})"


def hooks_section() -> str:
    """The "Hooks" section of README.md, up to the next heading of the same level or above."""
    assert README.is_file(), "README.md is missing: it must document every hook in a 'Hooks' section"
    text = README.read_text()
    heading = re.search(r"^(#+)\s*(?:Plugin\s+)?Hooks\b.*$", text, re.MULTILINE | re.IGNORECASE)
    assert heading, "README.md has no 'Hooks' section"
    level = len(heading.group(1))
    rest = text[heading.end():]
    following = re.search(rf"^#{{1,{level}}}\s", rest, re.MULTILINE)
    return rest[: following.start()] if following else rest


def test_hookspecs_are_found() -> None:
    assert {"veto_order", "register_routes", "register_subscriptions"} <= set(HOOKS)


@pytest.mark.parametrize("name", sorted(HOOKS))
def test_every_hook_has_a_one_line_docstring(name: str) -> None:
    doc = inspect.getdoc(HOOKS[name])
    assert doc, f"{name} has no docstring"
    assert "\n" not in doc.strip(), f"{name}: the docstring should be one line"


@pytest.mark.parametrize("name", sorted(HOOKS))
def test_every_hook_is_documented_in_README_with_its_exact_signature(name: str) -> None:
    assert f"`{signature(name)}`" in hooks_section(), f"README.md, Hooks: `{signature(name)}` is missing"


def test_README_documents_no_hook_that_does_not_exist() -> None:
    documented = re.findall(r"^\s*(?:[-*]|#+)\s*`(\w+)\(", hooks_section(), re.MULTILINE)
    assert documented, "the Hooks section lists no hook as `hook_name(args)`"
    assert set(documented) <= set(HOOKS), f"documented but not in core/hookspecs.py: {set(documented) - set(HOOKS)}"


def test_docs_openapi_and_asyncapi_are_up_to_date() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RESCENTER_")}
    result = subprocess.run([sys.executable, "-m", "core.cli", "docs", "--check"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"{result.stderr.strip()} (run `python -m core.cli docs` and commit docs/)"
    for name in ("openapi.json", "asyncapi.json"):
        assert (ROOT / "docs" / name).is_file()
