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


def section(text: str, title: str) -> str:
    """A `## title` section of a Markdown text, up to the next heading of the same level."""
    heading = re.search(rf"^## {re.escape(title)}\s*$", text, re.MULTILINE)
    assert heading, f"no '## {title}' section"
    rest = text[heading.end():]
    following = re.search(r"^## ", rest, re.MULTILINE)
    return rest[: following.start()] if following else rest


def test_README_lists_every_queue_with_its_bindings_and_dead_letter_queue() -> None:
    """Issue 12: the queues of docs/asyncapi.json (what the service declares), in README.md."""
    from core.cli import documents
    from core.settings import load_settings

    asyncapi = documents(load_settings())["asyncapi.json"]
    queues = {channel["address"]: (channel["x-bindings"], channel["x-dead-letter-queue"])
              for key, channel in asyncapi["channels"].items() if key.startswith("queue_")}
    rows = re.findall(r"^\| `([\w.]+)` \| (.+?) \| `([\w.]+)` \|$", section(README.read_text(), "Bus: queues, "
                                                                                          "publishing, answers"),
                      re.MULTILINE)
    listed = {queue: (re.findall(r"`([^`]+)`", bindings), dead) for queue, bindings, dead in rows}
    assert listed == queues


def test_README_documents_authentication() -> None:
    text = " ".join(section(README.read_text(), "Authentication").replace("**", "").split())
    for words in ("`roles`", "`sub`", "`aud`", "`exp`", "`iss`", "real clock", "test clock"):
        assert words in text, words


def test_metrics_and_disputes_READMEs_document_how_a_buyer_cancels_while_requirements_are_awaited() -> None:
    """Issue 12, MET-2's first exclusion: the path a buyer takes is DSP-6, accepted by the seller or by silence."""
    for plugin in ("metrics", "disputes"):
        paragraphs = [" ".join(p.split()) for p in (ROOT / "plugins" / plugin / "README.md").read_text().split("\n\n")]
        path = next((p for p in paragraphs if "requirements are awaited" in p and "buyer_cancel_request" in p), None)
        assert path, f"plugins/{plugin}/README.md does not say how a buyer cancels while requirements are awaited"
        for words in ("DSP-6", "MET-2", "accept", "48 h"):
            assert words in path, f"plugins/{plugin}/README.md: {words}"


def _core_imports() -> dict[str, set[str]]:
    """Each core module -> the core modules it imports, TYPE_CHECKING imports included."""
    import ast

    root = Path(__file__).resolve().parent.parent
    modules = {}
    for path in (root / "core").rglob("*.py"):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module in modules:
                named = {f"{node.module}.{a.name}" for a in node.names} & modules.keys()
                graph[name] |= named or {node.module}
    return graph


def test_the_core_has_no_import_cycle_and_hookspecs_lead_back_to_no_wiring() -> None:
    graph = _core_imports()

    def reaches(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph[todo.pop()] - seen:
                seen.add(nxt)
                todo.append(nxt)
        return seen

    cycles = sorted(name for name in graph if name in reaches(name))
    assert not cycles, f"modules on an import cycle: {cycles}"
    # what wires and runs plugins: the hook declarations must not lead back to it
    implementations = {"core.cli", "core.service", "core.plugins", "core.http.core_routes", "core.http.app"}
    assert not (reaches("core.hookspecs") & implementations), reaches("core.hookspecs") & implementations
