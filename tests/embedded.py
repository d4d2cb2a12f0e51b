"""Start the embedded MongoDB-wire server (scripts/embedded-store) on a spare
port with a data file of its own, for tests and benchmarks that stop or kill it."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
from pathlib import Path

#: the launcher scripts/install writes; on PATH under scripts/test
LAUNCHER = "embedded-store"


def launcher() -> str | None:
    return shutil.which(LAUNCHER)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedStore:
    """One server process: `start()`, `kill()` (SIGKILL), `stop()` (SIGTERM, graceful)."""

    def __init__(self, data_file: Path, *, durability: str = "commit", port: int | None = None) -> None:
        self.data_file = data_file
        self.durability = durability
        self.port = port or free_port()
        self.log = data_file.with_suffix(".log")
        self.process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/"

    async def start(self, timeout: float = 60.0) -> None:
        path = launcher()
        if path is None:
            raise RuntimeError(f"{LAUNCHER} is not on PATH; run scripts/install")
        # The launcher's own JVM options, and any the caller adds (bench/http_load.py's runs).
        env = {**os.environ, "JAVA_OPTS": os.environ.get("EMBEDDED_STORE_JAVA_OPTS", "")}
        with self.log.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                path, "127.0.0.1", str(self.port), str(self.data_file), self.durability,
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log, env=env,
            )
        async with asyncio.timeout(timeout):
            while True:
                if self.process.returncode is not None:
                    raise RuntimeError(f"the embedded store exited: {self.log.read_text()[-2000:]}")
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                except OSError:
                    await asyncio.sleep(0.2)
                    continue
                writer.close()
                await writer.wait_closed()
                return

    async def _signal(self, sig: signal.Signals) -> int:
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(sig)
        code = await self.process.wait()
        self.process = None
        return code

    async def kill(self) -> int:
        return await self._signal(signal.SIGKILL)

    async def stop(self) -> int:
        return await self._signal(signal.SIGTERM)
