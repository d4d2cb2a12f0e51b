"""The README's "Try it" walk-through, run as written (issue 16), so that a change which breaks
it fails the suite instead of the next newcomer.

The blocks marked for it (```` ```sh try-it ````, and ```` ```python try-it file=NAME ```` for a
file the walk-through saves) are extracted from README.md and run with bash, in order, in one
shell, against a service of the test's own (`rescenter run` in a subprocess, test clock, its own
database, exchange, queues and port; `RESCENTER_URL` points the commands at it). In a block, the
comment lines right under a command are the answer the README shows for it: an HTTP status line
(`# 201 Created`) and the output, shortened. The test compares each answer with what the command
printed:

- ids, times and tokens vary from run to run: both sides have them replaced by `<id>`, `<time>`,
  `<token>` before comparing;
- JSON is compared as a subset: every key the README shows must be there with that value, a list
  shows some of the items in order, `...` on a line of its own stands for the rest, and a string
  ending in `...` for the rest of the string;
- other output line by line, `...` for any number of lines;
- the status is the last one `curl` received in that step (a `curl` stand-in first on PATH
  records it; the README's commands never use `--write-out`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any

import aiohttp

from core.bus import delete_topology
from core.settings import Settings
from tests.embedded import free_port
from tests.harness import isolated_settings

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DEFAULT_URL = "http://127.0.0.1:8080"

BLOCK = re.compile(r"^```(?P<lang>\w+) try-it(?P<attrs>[^\n]*)\n(?P<body>.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
STATUS_LINE = re.compile(r"^(\d{3}) (\S.*)$")
ELLIPSIS = ("...", "…")

# What varies from run to run, in the order they are replaced.
VARYING = [
    (re.compile(r"\beyJ[\w-]+\.[\w-]+\.[\w-]+"), "<token>"),
    (re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b"), "<id>"),
    (re.compile(r"\b[0-9a-f]{32,40}\b"), "<id>"),
    (re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:\d{2}| UTC)?"), "<time>"),
]


# ---------------------------------------------------------------- reading the README


@dataclass
class Step:
    """Commands and the answer the README shows right under them."""

    block: int
    code: list[str]
    status: tuple[int, str] | None = None
    answer: list[str] = field(default_factory=list)

    @property
    def shown(self) -> bool:
        return self.status is not None or bool(self.answer)

    def text(self) -> str:
        return "\n".join(self.code)


@dataclass
class Walk:
    steps: list[Step]
    files: dict[str, str]


def read_walk(text: str) -> Walk:
    steps: list[Step] = []
    files: dict[str, str] = {}
    for number, match in enumerate(BLOCK.finditer(text)):
        body = match.group("body")
        if match.group("lang") == "python":
            name = re.search(r"\bfile=([\w.-]+)", match.group("attrs"))
            assert name, f"```python try-it block {number} names no file=NAME"
            files[name.group(1)] = body
            continue
        assert match.group("lang") in ("sh", "bash", "console"), match.group("lang")
        steps += split_steps(body, number)
    return Walk(steps, files)


def split_steps(body: str, block: int) -> list[Step]:
    """A comment right under a command (no blank line between) is its answer; a comment after a
    blank line is an explanation of what follows."""
    steps: list[Step] = []
    code: list[str] = []
    answer: list[str] | None = None
    for line in body.splitlines():
        is_comment = line.lstrip().startswith("#")
        if answer is not None and is_comment:
            answer.append(line.lstrip()[1:].removeprefix(" "))
            continue
        if answer is not None:
            steps.append(_step(block, code, answer))
            code, answer = [], None
        if is_comment and code and code[-1].strip() and not code[-1].lstrip().startswith("#"):
            answer = [line.lstrip()[1:].removeprefix(" ")]
            continue
        code.append(line)
    if answer is not None:
        steps.append(_step(block, code, answer))
    elif any(line.strip() for line in code):
        steps.append(Step(block, code))
    return steps


def _step(block: int, code: list[str], answer: list[str]) -> Step:
    status = None
    first = STATUS_LINE.match(answer[0]) if answer else None
    if first and first.group(1) in {str(s.value) for s in HTTPStatus}:
        status = (int(first.group(1)), first.group(2))
        answer = answer[1:]
    return Step(block, code, status, answer)


# ---------------------------------------------------------------- comparing answers


def normalize(text: str) -> str:
    for pattern, placeholder in VARYING:
        text = pattern.sub(placeholder, text)
    return text


def _elided(value: str) -> str | None:
    for mark in ELLIPSIS:
        if value.endswith(mark):
            return value[: -len(mark)]
    return None


def json_differences(expected: Any, actual: Any, where: str = "") -> list[str]:
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return [f"{where or '.'}: expected an object, got {actual!r}"]
        found = []
        for key, value in expected.items():
            if key not in actual:
                found.append(f"{where}.{key}: missing")
            else:
                found += json_differences(value, actual[key], f"{where}.{key}")
        return found
    if isinstance(expected, list):
        if not isinstance(actual, list):
            return [f"{where or '.'}: expected a list, got {actual!r}"]
        rest = iter(enumerate(actual))
        for index, item in enumerate(expected):
            if not any(not json_differences(item, candidate) for _, candidate in rest):
                return [f"{where}[{index}]: {item!r} not found (in order) in {actual!r}"]
        return []
    if isinstance(expected, str) and isinstance(actual, str) and (prefix := _elided(expected)) is not None:
        return [] if actual.startswith(prefix) else [f"{where}: {actual!r} does not start with {prefix!r}"]
    return [] if expected == actual else [f"{where or '.'}: expected {expected!r}, got {actual!r}"]


def _parse_expected_json(lines: list[str]) -> Any:
    text = "\n".join(line for line in lines if line.strip() not in ELLIPSIS)
    return json.loads(re.sub(r",(\s*[}\]])", r"\1", text))


def _lines_match(expected: list[str], actual: list[str]) -> bool:
    if not expected:
        return not actual
    head, rest = expected[0], expected[1:]
    if head.strip() in ELLIPSIS:
        return any(_lines_match(rest, actual[i:]) for i in range(len(actual) + 1))
    if not actual:
        return False
    prefix = _elided(head.rstrip())
    same = actual[0].startswith(prefix) if prefix is not None else actual[0] == head.rstrip()
    return same and _lines_match(rest, actual[1:])


def answer_differences(expected_lines: list[str], output: str) -> list[str]:
    """What differs between the answer the README shows and what the command printed."""
    expected_lines = [normalize(line) for line in expected_lines]
    output = normalize(output).strip()
    try:
        expected = _parse_expected_json(expected_lines)
        is_json = isinstance(expected, dict | list)
    except json.JSONDecodeError:
        is_json = False
    if is_json:
        try:
            actual = json.loads(output)
        except json.JSONDecodeError:
            return [f"expected JSON, got {output!r}"]
        return json_differences(expected, actual)
    actual_lines = [line.rstrip() for line in output.splitlines()]
    expected_text = [line.rstrip() for line in expected_lines]
    while expected_text and not expected_text[-1]:
        expected_text.pop()
    return [] if _lines_match(expected_text, actual_lines) else [f"expected {expected_text!r}, got {actual_lines!r}"]


# ---------------------------------------------------------------- without servers


def test_README_has_a_try_it_walk_through_that_shows_every_answer() -> None:
    """Issue 16: the marked blocks are there, every command that calls the service shows its
    answer with its status, and every command goes to $RESCENTER_URL (never to a fixed :8080,
    which is where a developer's own service runs); and the comparison finds what differs."""
    walk = read_walk(README.read_text())
    assert len(walk.steps) >= 20, f"README.md: only {len(walk.steps)} steps in the ```sh try-it blocks"
    assert walk.files, "README.md: the bus walk-through (```python try-it file=NAME) is missing"
    calls = [step for step in walk.steps if re.search(r"\bcurl\b", step.text())]
    assert calls, "README.md: no curl command in the try-it blocks"
    for step in calls:
        assert step.status is not None, f"README.md: no status line ('# 200 OK') under:\n{step.text()}"
        assert HTTPStatus(step.status[0]).phrase == step.status[1], step.status
        assert not re.search(r"(-w\b|--write-out)", step.text()), "the test records statuses with --write-out"
    everything = "\n".join([step.text() for step in walk.steps] + list(walk.files.values()))
    hard_coded = [line for line in everything.splitlines() if re.search(r"(127\.0\.0\.1|localhost):8080", line)]
    assert hard_coded == [f'RESCENTER_URL=${{RESCENTER_URL:-{DEFAULT_URL}}}'], hard_coded
    for topic in ("command.order.place", "user_id", "routing_key=\"#\""):
        assert topic in everything, f"README.md, bus walk-through: {topic} is missing"
    _check_the_comparison_can_fail()


def _check_the_comparison_can_fail() -> None:
    """A value, a missing key, a line, a shortened string that differs: each is found."""
    shown = ['{', '  "state": "delivered",', '  "due_at": "2026-12-05T18:12:08.859000+00:00",', '  ...', '}']
    assert answer_differences(shown, '{"state": "delivered", "due_at": "2031-01-01T00:00:00Z", "late": false}') == []
    assert answer_differences(shown, '{"state": "completed", "due_at": "2031-01-01T00:00:00Z"}')
    assert answer_differences(shown, '{"state": "delivered"}')
    lines = ["order.placed  ORD-1  alice", "...", "order.completed  ORD-4  rescenter"]
    assert answer_differences(lines, "order.placed  ORD-1  alice\nx\ny\norder.completed  ORD-4  rescenter") == []
    assert answer_differences(lines, "order.placed  ORD-1  alice\norder.cancelled  ORD-7  payments")
    shortened = ['{"detail": "empty delivery refused: ..."}']
    assert answer_differences(shortened, '{"detail": "empty delivery refused: x"}') == []
    assert answer_differences(shortened, '{"detail": "refused"}')
    steps = split_steps("curl -s x | jq .\n# 201 Created\n# {\"a\": 1}\n\n# explained\necho hi\n", 0)
    assert [(s.status, s.answer) for s in steps] == [((201, "Created"), ['{"a": 1}']), (None, [])]


# ---------------------------------------------------------------- against a service


def _service_env(settings: Settings, port: int) -> dict[str, str]:
    """The isolated settings as the RESCENTER_<SECTION>__<KEY> variables a process reads; the
    README's commands get them too, so that `rescenter token` signs with the service's secret
    and the bus walk-through finds the service's exchange."""
    values = {
        "SERVICE__ENVIRONMENT": settings.service.environment,
        "HTTP__HOST": "127.0.0.1",
        "HTTP__PORT": str(port),
        "STORE__URL": settings.store.url,
        "STORE__DATABASE": settings.store.database,
        "BUS__URL": settings.bus.url,
        "BUS__EXCHANGE": settings.bus.exchange,
        "BUS__QUEUE_PREFIX": settings.bus.queue_prefix,
        "CLOCK__MODE": settings.clock.mode,
    }
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("RESCENTER_")}
    return {**inherited, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT),
            **{f"RESCENTER_{k}": v for k, v in values.items()}}


@contextlib.asynccontextmanager
async def service_process(settings: Settings, env: dict[str, str], port: int, log: Path) -> Any:
    """`rescenter run` of this checkout, as scripts/run starts it, until /readyz answers."""
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "core.cli", "run", stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out,
            env=env, cwd=ROOT)
    try:
        async with aiohttp.ClientSession() as session:
            async with asyncio.timeout(30):
                while True:
                    assert process.returncode is None, f"the service exited:\n{log.read_text()[-3000:]}"
                    with contextlib.suppress(aiohttp.ClientError):
                        async with session.get(f"http://127.0.0.1:{port}/readyz") as response:
                            if response.status == 200:
                                break
                    await asyncio.sleep(0.2)
        yield process
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 20)
            except TimeoutError:
                process.kill()
                await process.wait()
        from pymongo import AsyncMongoClient

        client: AsyncMongoClient[Any] = AsyncMongoClient(settings.store.url)
        await client.drop_database(settings.store.database)
        await client.close()
        await delete_topology(settings.bus, {"core", "disputes", "reviews", "availability", "blocking", "metrics"})


def _stand_ins(directory: Path) -> None:
    """What a checkout has after scripts/run, for this checkout's code: `.venv/bin/rescenter` and
    `.venv/bin/python`; and a `curl` first on PATH that records each answer's status."""
    venv = directory / ".venv" / "bin"
    venv.mkdir(parents=True)
    scripts = {
        venv / "rescenter": f'exec {sys.executable} -m core.cli "$@"\n',
        venv / "python": f'exec {sys.executable} "$@"\n',
        directory / "bin" / "curl": f'exec {shutil.which("curl")} "$@" --write-out '
                                    "'%{stderr}@@status %{http_code}\\n' 2>>\"$STATUS_LOG\"\n",
    }
    for path, body in scripts.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("#!/bin/sh\n" + body)
        path.chmod(0o755)


def _split(text: str) -> dict[int, str]:
    """What each step printed, between the markers the script prints (`@@step N`, `@@step end`)."""
    parts = re.split(r"^@@step (\d+|end)\n", text, flags=re.MULTILINE)
    return {int(number): body for number, body in zip(parts[1::2], parts[2::2], strict=True) if number != "end"}


async def test_README_try_it_walk_through_runs_as_written() -> None:
    """Issue 16: every command of the walk-through (tokens, an order from placement to its
    completion by ORD-4, a DSP-7 extension and a DSP-5 request left to silence with the test
    clock, the timeline's rule ids, MET-1/MET-4 figures, a plugin switched off and on, the bus
    walk-through) answers what the README says it answers."""
    for tool in ("curl", "jq"):
        assert shutil.which(tool), f"{tool} is missing (scripts/install installs it)"
    walk = read_walk(README.read_text())
    assert len(walk.steps) >= 20 and walk.files, "README.md: the try-it blocks are missing"
    settings = isolated_settings(uuid.uuid4().hex[:10])
    port = free_port()
    env = _service_env(settings, port)
    with tempfile.TemporaryDirectory(prefix="rescenter-try-it-") as tmp:
        directory = Path(tmp)
        _stand_ins(directory)
        for name, body in walk.files.items():
            (directory / name).write_text(body)
        status_log = directory / "statuses"
        status_log.touch()
        script = ["cd \"$WALK_DIR\""]
        for number, step in enumerate(walk.steps):
            script += [f"printf '\\n@@step {number}\\n'", f"printf '@@step {number}\\n' >>\"$STATUS_LOG\""]
            script += step.code
        script.append("printf '\\n@@step end\\n'")
        walk_env = {**env, "RESCENTER_URL": f"http://127.0.0.1:{port}", "STATUS_LOG": str(status_log),
                    "WALK_DIR": tmp, "PATH": f"{directory / 'bin'}:{env['PATH']}"}
        async with service_process(settings, env, port, directory / "service.log"):
            bash = await asyncio.create_subprocess_exec(
                "bash", "-c", "\n".join(script), stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, env=walk_env, cwd=tmp)
            try:
                stdout, stderr = await asyncio.wait_for(bash.communicate(), 90)
            except TimeoutError:
                bash.kill()
                raise AssertionError("the walk-through took more than 90 s") from None
        outputs = _split(stdout.decode())
        statuses = {n: re.findall(r"^@@status (\d{3})$", text, re.MULTILINE)
                    for n, text in _split(status_log.read_text()).items()}
    problems = []
    for number, step in enumerate(walk.steps):
        if not step.shown:
            continue
        found = []
        if step.status is not None:
            got = statuses.get(number) or ["no curl"]
            if got[-1] != str(step.status[0]):
                found.append(f"status: expected {step.status[0]}, got {got[-1]}")
        if step.answer:
            found += answer_differences(step.answer, outputs.get(number, ""))
        if found:
            problems.append(f"--- step {number} (block {step.block}):\n{step.text()}\n" + "\n".join(found)
                            + f"\n--- it printed:\n{outputs.get(number, '')}")
    assert not problems, "\n\n".join(problems) + f"\n\n--- stderr:\n{stderr.decode()[-3000:]}"
