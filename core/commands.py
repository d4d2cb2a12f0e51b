"""What a plugin declares to add a command-line command (hook `register_commands`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from core.clock import Clock
    from core.settings import Settings
    from core.store import Store


@dataclass(frozen=True)
class CommandContext:
    """What a plugin's command works with: the configuration, a connected store and the
    service's clock (in test clock mode, the shared test instant)."""

    settings: Settings
    store: Store
    clock: Clock
    out: TextIO = field(default_factory=lambda: sys.stdout)


@dataclass(frozen=True)
class Command:
    """A plugin's command-line command: `rescenter <plugin> <name> [arguments]`.
    `run` returns the exit status."""

    name: str
    help: str
    run: Callable[[CommandContext, argparse.Namespace], Awaitable[int]]
    #: adds the command's own arguments to its parser
    arguments: Callable[[argparse.ArgumentParser], None] | None = None


__all__ = ["Command", "CommandContext"]
