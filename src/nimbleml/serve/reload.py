"""Hot reload: a new version of a model opened, checksummed, warmed and swapped in while the
old one answers what it accepted; through the v2 repository load route, or ``--watch``.

With ``--workers N`` a load spreads to every worker through the run folder (fleet.py): the
route answers once every worker serves the new version; if a worker refuses it, every worker
goes back to the version it served before and the answer names the worker and why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._deps import require
from ..errors import ConfigError
from ..models.base import Model
from .http import HttpError
from .protocol import kind_of

if TYPE_CHECKING:
    from .fleet import Member
    from .server import ModelEntry, Server

log = logging.getLogger("nimbleml.serve")


async def reload_model(
    server: Server, name: str, source: Any, digest: str | None = None
) -> ModelEntry:
    """Open the new version, warm it up, then swap it in atomically; the old version
    answers what it already accepted. A broken version is refused (HttpError 409), and so
    is one whose model file's sha256 is not ``digest`` (when given: the package changed on
    disk since another worker loaded it)."""
    loop = asyncio.get_running_loop()
    old = server.entries.get(name)
    try:
        new = await loop.run_in_executor(None, server.build, name, source)
        if digest is not None and new.content_hash != digest:
            raise ConfigError(
                f"{source} changed since it was loaded (its model file's sha256 is "
                f"{new.content_hash[:12]}…, not {digest[:12]}…)"
            )
        if old is not None:
            same_interface(old.model, new.model)
        await server.start(new)
    except Exception as exc:
        detail = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
        raise HttpError(
            409, f"new version of '{name}' refused, the old one keeps serving: {detail}"
        ) from exc
    server.entries[name] = new  # one assignment on the event loop: requests see old or new
    server.sources[name] = source
    if old is not None:
        _retire(server, old)
    log.info("model '%s' now serves version %s", name, new.version)
    return new


def _retire(server: Server, entry: ModelEntry) -> None:
    entry.ready = False
    task = asyncio.get_running_loop().create_task(entry.batcher.drain())
    server._draining.add(task)  # keep a reference until it is done
    task.add_done_callback(server._draining.discard)


def unload_model(server: Server, name: str) -> None:
    """Stop serving ``name`` (what it accepted is answered)."""
    entry = server.entries.pop(name, None)
    server.sources.pop(name, None)
    if entry is not None:
        _retire(server, entry)


def same_interface(old: Model, new: Model) -> None:
    """A new version must take the inputs the served one takes (names, types, shapes) and
    give the same outputs: clients were written against them. Otherwise serve it under a new
    name."""

    def interface(m: Model) -> tuple[Any, ...]:
        return (
            [(s.name, s.dtype, tuple(d if isinstance(d, int) else -1 for d in s.shape))
             for s in m.inputs],
            m.output_names,
        )  # fmt: skip

    (old_in, old_out), (new_in, new_out) = interface(old), interface(new)
    if old_in != new_in:
        raise ConfigError(
            f"it takes inputs {new_in}, the served version takes {old_in}; load it under a "
            "new model name"
        )
    if old_out != new_out:
        raise ConfigError(
            f"it gives outputs {new_out}, the served version gives {old_out}; load it under "
            "a new model name"
        )


# -- the repository load route --------------------------------------------------------------
def load_source(server: Server, name: str, body: dict[str, Any]) -> Any:
    """The package a load request names (parameters.path), checked: 400 for a field of the
    wrong type or a new model without a path, 403 for a path outside the repository."""
    params = body.get("parameters")
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise HttpError(400, f"'parameters' must be a JSON object, got {kind_of(params)}")
    path = params.get("path")
    if path is not None and (not isinstance(path, str) or not path):
        raise HttpError(400, f"parameters.path must be a package path (text), got {path!r}")
    source = path or server.sources.get(name)
    if source is None:
        raise HttpError(400, f"model '{name}' is new here: give parameters.path to its package")
    repository = server.config.repository
    if path is not None and repository:
        root = Path(repository).resolve()
        if not Path(path).resolve().is_relative_to(root):
            raise HttpError(
                403, f"{path} is outside the model repository {root}; this server loads "
                "packages from there only",
            )  # fmt: skip
    return source


async def load(server: Server, name: str, body: dict[str, Any]) -> dict[str, Any]:
    """The load route: this worker loads the package (a broken one is refused here, 409);
    with several workers it then spreads and the answer waits for all of them."""
    source = load_source(server, name, body)
    member = server.fleet
    if member is None:
        new = await reload_model(server, name, source)
        return {"name": name, "version": new.version, "loaded": True, "workers": 1}
    async with member.lock:
        old = server.entries.get(name)
        old_source = server.sources.get(name)
        new = await reload_model(server, name, source)
        generation = member.publish(name, str(source), new.content_hash)
        member.ack(generation, serving(server), {})
    timeout = server.config.reload_timeout_s
    acks, late, starting = await member.wait(generation, timeout)
    if not member.supervisor_alive():
        raise HttpError(503, "the server is stopping; load the package again once it runs")
    refused = {int(a["pid"]): a["refused"][name] for a in acks if name in a.get("refused", {})}
    if refused:
        back = await _roll_back(server, member, name, old, old_source)
        pids = ", ".join(str(p) for p in refused)
        raise HttpError(
            409, f"new version of '{name}' refused by worker(s) {pids}: "
            f"{next(iter(refused.values()))}; {back}",
        )  # fmt: skip
    if late or starting:
        raise HttpError(
            504, f"model '{name}' version {new.version} serves on worker(s) "
            f"{', '.join(str(a['pid']) for a in acks)}; {_unconfirmed(late, starting)} did not "
            f"confirm it within {timeout:g} s (--reload-timeout-s): they load it when they can",
        )  # fmt: skip
    return {"name": name, "version": new.version, "loaded": True, "workers": len(acks)}


async def _roll_back(
    server: Server, member: Member, name: str, old: ModelEntry | None, old_source: Any
) -> str:
    """Every worker back to what it served before the load; says how that went."""
    async with member.lock:
        try:
            if old is None:
                unload_model(server, name)
                generation = member.publish(name, None, None)
            else:
                await reload_model(server, name, old_source, old.content_hash)
                generation = member.publish(name, str(old_source), old.content_hash)
        except Exception as exc:  # the old package is gone or changed: say so
            return f"going back to the previous version failed here too: {exc}"
        member.ack(generation, serving(server), {})
    _, late, starting = await member.wait(generation, server.config.reload_timeout_s)
    went = "no longer serves it" if old is None else f"serves version {old.version} again"
    if late or starting:
        return f"every worker but {_unconfirmed(late, starting)} {went}"
    return f"every worker {went}"


def _unconfirmed(late: list[int], starting: int) -> str:
    """The workers a load did not hear from: live ones by pid, replacements by count."""
    parts = [f"worker(s) {', '.join(map(str, late))}"] if late else []
    if starting:
        parts.append(f"{starting} worker(s) still starting")
    return " and ".join(parts)


def serving(server: Server) -> dict[str, str]:
    return {name: entry.version for name, entry in server.entries.items()}


# -- following the run folder (each worker) and --watch (one process) ----------------------
async def apply_state(server: Server, member: Member) -> None:
    """Serve what the run folder's state says, where it differs from what is served; then
    acknowledge it (with the models refused and why)."""
    async with member.lock:
        state = member.state()
        generation = int(state["generation"])
        if generation <= member.generation:
            return
        refused: dict[str, str] = {}
        for name, want in state["models"].items():
            entry = server.entries.get(name)
            if want.get("path") is None:
                unload_model(server, name)
            elif entry is None or entry.content_hash != want.get("digest"):
                try:
                    await reload_model(server, name, want["path"], want.get("digest"))
                except Exception as exc:
                    refused[name] = str(getattr(exc, "message", exc))
                    log.warning("%s", refused[name])
        member.ack(generation, serving(server), refused)


async def follow(server: Server, member: Member, stop: asyncio.Event) -> None:
    """Apply the state each time the file is replaced: one stat() every POLL_S. File times
    tick with the kernel's clock (a few ms) and a freed inode number is reused, so two
    writes in one tick may look alike: the file is also read once a second whatever its
    stamp says."""
    from .fleet import POLL_S

    seen, last = member.stamp(), time.monotonic()
    while not stop.is_set():
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), POLL_S)
        stamp = member.stamp()
        if (stamp != seen or time.monotonic() - last > 1.0) and not stop.is_set():
            seen, last = stamp, time.monotonic()
            try:
                await apply_state(server, member)
            except Exception:  # keep following: the next change retries
                log.exception("applying the server's model state failed")


async def watch(server: Server, stop: asyncio.Event) -> None:
    """Reload a model when files in its package folder change (watchfiles debounces a
    burst of writes into one event; a half-written package fails its checksums and is
    refused, and the write that completes it triggers the reload that succeeds)."""
    require("watchfiles", "--watch")
    import watchfiles

    folders = {
        name: Path(src).resolve()
        for name, src in server.sources.items()
        if isinstance(src, str | Path)
    }
    if not folders:
        return
    async for changes in watchfiles.awatch(*folders.values(), stop_event=stop):
        changed = [Path(path) for _, path in changes]
        for name, folder in folders.items():
            if any(p == folder or folder in p.parents for p in changed):
                try:
                    await reload_model(server, name, folder)
                except Exception as exc:
                    log.warning("%s", getattr(exc, "message", exc))


@contextlib.asynccontextmanager
async def reloading(server: Server, watch_folders: bool) -> AsyncIterator[None]:
    """For the app's lifetime: follow the run folder (several workers; applied once before
    the first request) and/or watch the package folders."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    tasks = []
    member = server.fleet
    if member is not None:
        try:  # before the first request: a worker restarted after a crash serves the loads
            await apply_state(server, member)
        except Exception:  # the run folder is unusable: serve, and keep trying
            log.exception("applying the server's model state failed")
        tasks.append(loop.create_task(follow(server, member, stop)))
    if watch_folders:
        tasks.append(loop.create_task(watch(server, stop)))
    try:
        yield
    finally:
        stop.set()
        for task in tasks:
            await task
        if member is not None:
            member.leave()
