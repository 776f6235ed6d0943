"""Where each served adapter lives: on the model (device), in host memory, or only on disk / in the registry.

An LRU over three tiers. ``device_slots`` adapters sit on the model (hooked in, on
its device, routable); up to ``memory_slots`` more are kept built in host memory,
cheap to put back; the rest are only a source to read again. Reading a source
(files, safetensors, checks) happens on a loader thread, against a stand-in for
the model, so requests for resident adapters keep flowing meanwhile; only the
cheap last step — moving the built adapter onto the model — runs on the engine's
worker thread, between batches, since that thread alone touches the model.

Names: clients see *public* names (``sentiment``, or ``sentiment@2`` for a
registry version); the model knows each adapter under an *internal* name that
``check_name`` accepts (``sentiment_2``). A name becomes visible only once its
adapter is fully built, so no request is ever answered by a half-loaded adapter.
"""

from __future__ import annotations

import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..adapter import BASE_NAME, Adapter, check_name
from ..checkpoint import CONFIG_FILE
from ..errors import CheckpointError, SpliceError
from ..files import read_json
from ..folders import recover
from ..hub import Hub, check_version, is_reference, parse_reference
from ..hub_ids import download, is_hub_id, served_name
from .errors import BadRequest, Conflict, NotFound, shown

if TYPE_CHECKING:
    from ..model import AdaptedModel

ON_MODEL, IN_MEMORY, ON_DISK, FAILED = "device", "memory", "disk", "failed"
LONGEST_NAME = 128 + 1 + 64  # an adapter name (check_name), '@', a registry version (check_version)
UNREADABLE_SOURCE = ("Cannot load an adapter from the given source. Pass an adapter folder the server can read, or "
                     "a registry name@version; the server's log says what was wrong with it.")


def check_name_length(name: str, what: str = "adapter") -> str:
    """Refuse a name too long to be valid before any message quotes it whole."""
    if len(name) > LONGEST_NAME:
        raise BadRequest(f"The {what} name {shown(name)} is too long: names have at most 128 characters "
                         "(a registry reference adds '@' and a version of at most 64).")
    return name


def check_public_name(name: str) -> str:
    """``name`` or ``name@version``, as the registry spells them."""
    if not isinstance(name, str):
        raise BadRequest(f"An adapter name must be a string, got {type(name).__name__}.")
    check_name_length(name)
    try:
        if is_reference(name):
            plain, version = parse_reference(name)
            check_name(plain)
            check_version(version)
        else:
            check_name(name)
    except SpliceError as error:
        raise BadRequest(str(error)) from error
    return name


@dataclass
class Entry:
    """One served adapter. ``locate`` gives the folder to (re)read."""

    public: str
    internal: str
    locate: Callable[[], Path]
    tier: str = ON_DISK
    adapter: Adapter | None = None  # held here while IN_MEMORY
    pinned: bool = False
    error: str | None = None  # why the last load failed (tier FAILED)
    info: dict = field(default_factory=dict)  # method and head, known once loaded
    last_used: float = 0.0  # time.monotonic() of the last batch that used it
    created: int = field(default_factory=lambda: int(time.time()))  # when it was added, for OpenAI's model objects
    unloaded: Future | None = None  # set by unload(), resolved once the adapter is off the model and forgotten


class Residency:
    """The adapters a server knows and which tier each is in. Thread-safe; the model is changed only by
    :meth:`maintain`, :meth:`retire` and friends, which the engine's worker thread calls between batches."""

    def __init__(self, model: AdaptedModel, device_slots: int = 8, memory_slots: int = 32,
                 on_change: Callable[[], None] = lambda: None, on_load: Callable[[str], None] = lambda result: None):
        if device_slots < 1 or memory_slots < 0:
            raise BadRequest("device_slots must be >= 1 and memory_slots >= 0.")
        self.model = model
        self.device = next((p.device for p in model.base.parameters()), torch.device("cpu"))
        self.device_slots, self.memory_slots = device_slots, memory_slots
        self.on_change, self.on_load = on_change, on_load  # on_load("ok" | "failed") after every read
        self._entries: dict[str, Entry] = {}
        self._lru: OrderedDict[str, None] = OrderedDict()  # public names on the model, least recent first
        self._retiring: dict[str, Entry] = {}  # unloaded by a client; the worker drops them once no request waits
        self._loading: set[str] = set()  # public names being read on the loader thread
        self._internals: set[str] = set(model.adapters)  # every internal name handed out, never reused
        self._lock = threading.RLock()
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="splice-loader")

    # -- what clients see ---------------------------------------------------------------------
    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._entries)

    def __contains__(self, public: str) -> bool:
        return public in self._entries

    def entry(self, public: str) -> Entry:
        entry = self._entries.get(public)
        if entry is None:
            raise self.not_found(public)
        return entry

    def not_found(self, public: str) -> NotFound:
        known = ", ".join(self.names()) or "none"
        return NotFound(f"No adapter named {shown(public)} is served (adapters: {known}). Load it with "
                        "POST /v1/adapters, or use \"\" for the base model.")

    def counts(self) -> dict[str, int]:
        with self._lock:
            tiers = [e.tier for e in [*self._entries.values(), *self._retiring.values()]]
        return {ON_MODEL: tiers.count(ON_MODEL), IN_MEMORY: tiers.count(IN_MEMORY)}

    # -- adding and removing names --------------------------------------------------------------
    def add_source(self, public: str, locate: Callable[[], Path], pinned: bool = False) -> Entry:
        """Serve ``public`` from ``locate()`` (read on first use); nothing is read yet."""
        with self._lock:
            return self._new_entry(public, locate, pinned)

    def load(self, source: str, name: str | None = None, pinned: bool = False,
             hub: Hub | None = None) -> Future:
        """Read ``source`` (a folder, or a registry ``name@version``) on the loader thread and serve it.

        The future gives the public name once the adapter is built in memory (its
        name visible from then on), or a :class:`SpliceError` saying why it could not be read.
        """
        folder = Path(source)
        if recover(folder):
            public = name or folder_name(folder)
            def locate() -> Path:
                return folder
        elif is_reference(source):
            registry = hub or Hub()
            public = name or source
            def locate() -> Path:
                return registry.resolve(source)
        elif is_hub_id(source):  # Hugging Face Hub: downloaded on the loader thread, like any slow read
            public = name or served_name(source)
            def locate() -> Path:
                return download(source)
        else:
            raise BadRequest(UNREADABLE_SOURCE)  # the same words whether the path exists or not: no probing
        check_public_name(public)
        with self._lock:
            if public in self._retiring:
                raise Conflict(f"The adapter named {public!r} is being unloaded: it first answers the requests "
                               "accepted before its unload. Retry shortly, or pass another \"name\".")
            if public in self._entries or public in self._loading:
                raise Conflict(f"An adapter named {public!r} is already served; unload it first or pass another "
                               "\"name\".")
            if pinned:
                self._check_pin_room()
            entry = Entry(public, self._internal_name(public), locate, pinned=pinned)
            future: Future = Future()
            self._loading.add(public)

        def read() -> None:
            try:
                adapter = self._read(entry)
                with self._lock:
                    if public in self._entries or public in self._retiring:
                        raise Conflict(f"An adapter named {public!r} was loaded meanwhile; unload it first.")
            except BaseException as error:  # noqa: BLE001 - the caller gets every failure through the future
                with self._lock:
                    self._loading.discard(public)
                self.on_load("failed")
                future.set_exception(error)
                return
            with self._lock:
                self._loading.discard(public)
                entry.adapter, entry.tier, entry.last_used = adapter, IN_MEMORY, time.monotonic()
                self._entries[public] = entry  # visible only now, fully built
            self.on_load("ok")
            future.set_result(public)
            self.on_change()

        self._loader.submit(read)
        return future

    def unload(self, public: str) -> Future:
        """Stop serving ``public``: new requests get 404 at once; requests already accepted for it are still
        answered by it. The worker thread (woken here, as :meth:`unloading` is now true) then takes it off the
        model, freeing its device slot and memory, and resolves the returned future: from then on the name
        can be loaded again. Without queued requests for it that is the worker's next turn, not the next
        request's."""
        with self._lock:
            entry = self.entry(public)
            del self._entries[public]
            entry.unloaded = Future()
            self._retiring[public] = entry
        self.on_change()
        return entry.unloaded

    def unloading(self) -> bool:
        """Whether unloaded adapters wait for the worker's :meth:`maintain` to drop them."""
        return bool(self._retiring)

    def pin(self, public: str, pinned: bool = True) -> None:
        """Keep ``public`` on the model (or let it be evicted again); one device slot always stays unpinned."""
        with self._lock:
            entry = self.entry(public)
            if pinned and not entry.pinned:
                self._check_pin_room()
            entry.pinned = pinned
        self.on_change()

    # -- the worker's side ------------------------------------------------------------------------
    def resident(self, public: str) -> str | None:
        """The model's name for ``public`` if it is on the model now (touching it in the LRU), else None."""
        if public == BASE_NAME:
            return BASE_NAME
        with self._lock:
            entry = self._entries.get(public) or self._retiring.get(public)
            if entry is None or entry.tier != ON_MODEL:
                return None
            if public in self._lru:
                self._lru.move_to_end(public)
            entry.last_used = time.monotonic()
            return entry.internal

    def failure(self, public: str) -> str | None:
        """Why requests for ``public`` cannot be answered (it is gone, or its files failed to load), else None."""
        with self._lock:
            entry = self._entries.get(public) or self._retiring.get(public)
            if entry is None:
                return f"Adapter {public!r} is no longer served."
            return entry.error if entry.tier == FAILED else None

    def maintain(self, wanted: set[str]) -> None:
        """Worker thread, between batches: drop unloaded adapters no request waits for, put wanted (and pinned)
        adapters on the model, evicting the least recently used others, and start reads of those on disk."""
        with self._lock:
            for public in [p for p in self._retiring if p not in wanted]:
                self._drop(self._retiring.pop(public))
            pinned = [p for p, e in self._entries.items() if e.pinned]
            for public in dict.fromkeys([*pinned, *sorted(wanted)]):
                entry = self._entries.get(public) or self._retiring.get(public)
                if entry is None or entry.tier == ON_MODEL:
                    continue
                if entry.tier == IN_MEMORY:
                    if self._make_room(keep=wanted):
                        self._install(entry)
                elif entry.tier == ON_DISK and public not in self._loading:
                    self._start_read(entry)
            self._trim_memory()

    def preload(self, names: list[str]) -> dict[str, str]:
        """Read and put ``names`` on the model now, up to the free device slots (before the engine starts:
        this runs on the caller's thread). Returns name -> why it failed, for those that did."""
        failures = {}
        with self._lock:
            for public in names:
                entry = self.entry(public)
                if entry.tier == ON_DISK:
                    try:
                        entry.adapter, entry.tier = self._read(entry), IN_MEMORY
                        self.on_load("ok")
                    except Exception as error:  # noqa: BLE001 - reported, and the server serves the rest
                        entry.tier, entry.error = FAILED, f"Adapter {public!r} could not be loaded: {error}"
                        failures[public] = str(error)
                        self.on_load("failed")
                        continue
                if entry.tier == IN_MEMORY and len(self._lru) < self.device_slots:
                    self._install(entry)
        return failures

    def close(self) -> None:
        """After the worker stopped: end the loader thread, and answer unloads the worker did not finish."""
        self._loader.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            for entry in self._retiring.values():
                _resolve(entry.unloaded)

    # -- internals ----------------------------------------------------------------------------------
    def _new_entry(self, public: str, locate, pinned: bool) -> Entry:
        check_public_name(public)
        if public in self._entries or public in self._retiring:
            raise Conflict(f"An adapter named {public!r} is already served.")
        if pinned:
            self._check_pin_room()
        entry = Entry(public, self._internal_name(public), locate, pinned=pinned)
        self._entries[public] = entry
        return entry

    def _internal_name(self, public: str) -> str:
        stem = re.sub(r"[^A-Za-z0-9_-]", "_", public)[:100]
        taken = self._internals
        name, n = stem, 1
        while name in taken:
            n += 1
            name = f"{stem}-{n}"
        self._internals.add(name)
        return name

    def _read(self, entry: Entry) -> Adapter:
        """Build ``entry``'s adapter from its files, off the model (loader thread)."""
        from ..convert import holds_fusion, read_any

        folder = entry.locate()
        if holds_fusion(folder):  # it fuses adapters of the model's, which serving keeps apart
            raise BadRequest(f"The adapter at {entry.public!r} cannot be served: AdapterFusion folders are not "
                             "supported by splice serve.")
        # An empty table: nothing collides, the served name was chosen already; the live model is not touched.
        _, adapter = read_any(self.model.anatomy, {}, folder, name=entry.internal)
        adapter.requires_grad_(False)
        adapter = adapter.to(self.device).eval()
        entry.info = _info(adapter)
        return adapter

    def _start_read(self, entry: Entry) -> None:
        self._loading.add(entry.public)

        def read() -> None:
            try:
                adapter, error = self._read(entry), None
            except Exception as failure:  # noqa: BLE001 - reported to the requests waiting for it
                adapter, error = None, f"Adapter {entry.public!r} could not be loaded: {failure}"
            with self._lock:
                self._loading.discard(entry.public)
                entry.adapter, entry.error, entry.last_used = adapter, error, time.monotonic()
                entry.tier = IN_MEMORY if adapter is not None else FAILED
            self.on_load("ok" if adapter is not None else "failed")
            self.on_change()

        self._loader.submit(read)

    def _make_room(self, keep: set[str]) -> bool:
        """Evict least-recently-used unpinned adapters until a device slot is free; False if none can go.

        Adapters that queued requests wait for (``keep``) go last, so a wanted set larger than
        the slots takes turns rather than starving."""
        while len(self._lru) >= self.device_slots:
            held = [(p, self._entries.get(p) or self._retiring[p]) for p in self._lru]
            victims = [e for p, e in held if not e.pinned and p not in keep] or [e for _, e in held if not e.pinned]
            if not victims:
                return False
            self._evict(victims[0])
        return True

    def _check_pin_room(self) -> None:
        if sum(e.pinned for e in self._entries.values()) + 1 >= self.device_slots:
            raise Conflict(f"Pinning another adapter would leave none of the {self.device_slots} device slots for "
                           "the rest; unpin one first or start the server with more --device-slots.")

    def _install(self, entry: Entry) -> None:
        self.model._register(entry.internal, entry.adapter.to(self.device))
        entry.adapter, entry.tier = None, ON_MODEL
        self._lru[entry.public] = None

    def _evict(self, entry: Entry) -> None:
        adapter = self.model.adapters[entry.internal]
        self.model.delete(entry.internal)
        entry.adapter, entry.tier = adapter.to("cpu"), IN_MEMORY
        self._lru.pop(entry.public, None)

    def _drop(self, entry: Entry) -> None:
        """Forget an unloaded adapter: off the model (the planner lets go of its bank slots), out of memory."""
        try:
            if entry.tier == ON_MODEL:
                self._lru.pop(entry.public, None)
                self.model.delete(entry.internal)
        finally:  # whatever happens, it is no longer served: its unload is answered
            entry.adapter, entry.tier = None, ON_DISK
            _resolve(entry.unloaded)

    def _trim_memory(self) -> None:
        """Forget the built copies of the least recently used adapters beyond ``memory_slots`` (their files stay)."""
        held = sorted((e for e in self._entries.values() if e.tier == IN_MEMORY and not e.pinned),
                      key=lambda e: e.last_used)
        for entry in held[: max(0, len(held) - self.memory_slots)]:
            entry.adapter, entry.tier = None, ON_DISK


def folder_name(folder: Path) -> str:
    """The name an adapter folder was saved under (splice's adapter.json), else the folder's name.

    An unreadable adapter.json (missing, a FIFO, too big, not JSON) gives the folder's
    name: loading the folder then says what is wrong with it.
    """
    try:
        saved = read_json(folder / CONFIG_FILE).get("name")
    except CheckpointError:
        saved = None
    return saved if isinstance(saved, str) and saved else folder.name


def _resolve(future: Future | None) -> None:
    """Answer an unload's future, unless nobody waits for it any more (cancelled)."""
    if future is not None and not future.done():
        future.set_result(None)


def _info(adapter: Adapter) -> dict:
    head = adapter.task_head
    return {"method": adapter.config.method, "head": head.kind if head is not None else adapter.head_path}
