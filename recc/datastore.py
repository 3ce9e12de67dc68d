"""One interface to local paths, S3 and a fall-through list of named stores.

Every location RECC's jobs read or write is a URL string:

- a local path (``/data/sims``, ``sims/run1``) or any fsspec URL (``s3://bucket/sims``);
- ``recc://KEY``: a key in the *datastore*, an ordered list of named stores. A read looks for
  ``KEY`` in each read store in turn and uses the first that holds it (for example a local
  cache, then S3); a write goes to every write store.

Configuration lives in dask config under ``recc.datastore`` (``~/.config/dask/*.yaml``) or in
``DASK_RECC__DATASTORE__*`` environment variables::

    recc:
      datastore:
        stores:                      # name -> root URL and fsspec options
          LOCAL: {url: /scratch/recc}
          S3: {url: s3://bank-sims/recc, options: {endpoint_url: null}}
        read: [LOCAL, S3]            # a read falls through these, in order
        write: [S3]                  # a write goes to each of these
        storage-options:             # fsspec options for plain URLs, per protocol
          s3: {endpoint_url: http://127.0.0.1:5000}

for example ``DASK_RECC__DATASTORE__READ=LOCAL,S3`` and
``DASK_RECC__DATASTORE__STORES__S3__URL=s3://bank-sims/recc`` (store names are
case-insensitive).

A ``recc://`` key always names something inside each store: an empty key or one with a ``..``
part (``recc://../../home``) is refused with a :class:`~recc.errors.SpecError`.

>>> store = DataStore.from_config()
>>> with store.atomic_write("/tmp/recc-doc/out.txt") as f:  # doctest: +SKIP
...     f.write(b"all or nothing")
>>> store.read_bytes("/tmp/recc-doc/out.txt")  # doctest: +SKIP
b'all or nothing'
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

import dask.config
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

from recc.errors import ConfigError, SpecError

SCHEME = "recc://"
_KEY_EXAMPLE = "recc://sims/run1/part-0.parquet"


def store_key(key: str) -> str:
    """``key`` without leading slashes, when it names something below a store's root. Pure.

    Raises :class:`SpecError` for an empty key (the root itself: a recursive remove would empty
    the store) and for one with a ``..`` part, which would lead outside the store.

    >>> store_key("/sims/f.parquet")
    'sims/f.parquet'
    >>> store_key("sims/../../etc")
    Traceback (most recent call last):
    ...
    recc.errors.SpecError: url='recc://sims/../../etc': a '..' part would lead outside the \
store (for example: recc://sims/run1/part-0.parquet)
    """
    stripped = key.lstrip("/")
    if not stripped.strip("/"):
        raise SpecError("url", SCHEME + key, "names no key inside the store", _KEY_EXAMPLE)
    if ".." in stripped.split("/"):
        raise SpecError(
            "url", SCHEME + key, "a '..' part would lead outside the store", _KEY_EXAMPLE
        )
    return stripped


@dataclass(frozen=True)
class Store:
    """A named root (local directory or fsspec URL) with its fsspec options."""

    name: str
    url: str
    options: Mapping[str, Any] = field(default_factory=dict)

    def join(self, key: str) -> str:
        """The URL of ``key`` inside this store (:func:`store_key` refuses one that is not)."""
        return f"{self.url.rstrip('/')}/{store_key(key)}"


@dataclass(frozen=True)
class DataStore:
    """Resolves locations for reading (fall-through) and writing (every write store).

    Plain, picklable data: tasks on workers receive it as an argument, so a worker resolves
    locations exactly as the client configured them, whatever the worker's own config says.

    Parameters
    ----------
    stores
        Named stores, e.g. ``{"LOCAL": Store("LOCAL", "/scratch"), "S3": Store(...)}``.
    read, write
        Names of the stores that ``recc://`` reads try (in order) and writes go to.
    storage_options
        fsspec options for plain URLs, by protocol (``{"s3": {"endpoint_url": ...}}``).

    Examples
    --------
    >>> ds = DataStore(stores={"A": Store("A", "/tmp/a"), "B": Store("B", "/tmp/b")},
    ...                read=("A", "B"), write=("A",))
    >>> ds.targets("recc://sims/f.parquet")
    ['/tmp/a/sims/f.parquet']
    """

    stores: Mapping[str, Store] = field(default_factory=dict)
    read: Sequence[str] = ()
    write: Sequence[str] = ()
    storage_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for role, names in (("read", self.read), ("write", self.write)):
            for name in names:
                if name not in self.stores:
                    known = ", ".join(sorted(self.stores)) or "none configured"
                    raise ConfigError(
                        f"recc.datastore.{role} names store {name!r}, which is not defined in "
                        f"recc.datastore.stores (defined: {known}); for example "
                        f"recc.datastore.stores.{name}.url: s3://bucket/prefix"
                    )

    @classmethod
    def from_config(cls, **overrides: Any) -> DataStore:
        """The datastore described by dask config ``recc.datastore`` (see module docs)."""
        conf = dict(dask.config.get("recc.datastore", default={}) or {})
        conf.update({k.replace("_", "-"): v for k, v in overrides.items() if v is not None})
        stores = {}
        # Store names are case-insensitive: dask lower-cases keys read from the environment.
        for name, spec in (conf.get("stores") or {}).items():
            name = str(name).upper()
            if isinstance(spec, str):
                spec = {"url": spec}
            if not isinstance(spec, Mapping) or not spec.get("url"):
                raise ConfigError(
                    f"recc.datastore.stores.{name} needs a url; for example "
                    f"recc.datastore.stores.{name}.url: /scratch/recc"
                )
            url = str(spec["url"])
            if "://" not in url:
                url = os.path.abspath(os.path.expanduser(url))
            stores[name] = Store(name, url, dict(spec.get("options") or {}))
        return cls(
            stores=stores,
            read=tuple(_names(conf.get("read"))),
            write=tuple(_names(conf.get("write"))),
            storage_options={
                k: dict(v or {}) for k, v in (conf.get("storage-options") or {}).items()
            },
        )

    # -- resolution ----------------------------------------------------------------------

    def _fs(self, url: str, options: Mapping[str, Any] | None = None) -> tuple[Any, str]:
        protocol = url.split("://", 1)[0] if "://" in url else "file"
        opts = dict(self.storage_options.get(protocol, {}))
        opts.update(options or {})
        return url_to_fs(url, **opts)

    def _key(self, url: str) -> str | None:
        return store_key(url[len(SCHEME) :]) if url.startswith(SCHEME) else None

    def locate(self, url: str) -> tuple[Any, str]:
        """``(filesystem, path)`` to read ``url`` from; ``recc://`` keys fall through stores.

        Raises ``FileNotFoundError`` naming every place looked at when no read store holds
        the key. Plain URLs are returned as they are (a missing file fails when opened).
        """
        key = self._key(url)
        if key is None:
            return self._fs(url)
        if not self.read:
            raise ConfigError(
                f"{url}: recc:// keys need read stores; set recc.datastore.read, for example "
                "DASK_RECC__DATASTORE__READ='[\"LOCAL\", \"S3\"]'"
            )
        tried = []
        for name in self.read:
            store = self.stores[name]
            fs, path = self._fs(store.join(key), store.options)
            if fs.exists(path):
                return fs, path
            tried.append(store.join(key))
        raise FileNotFoundError(f"{url}: not found in any read store (tried {', '.join(tried)})")

    def targets(self, url: str) -> list[str]:
        """The URLs a write to ``url`` goes to: every write store for ``recc://`` keys."""
        key = self._key(url)
        if key is None:
            return [url]
        if not self.write:
            raise ConfigError(
                f"{url}: recc:// keys need write stores; set recc.datastore.write, for "
                "example DASK_RECC__DATASTORE__WRITE='[\"S3\"]'"
            )
        return [self.stores[name].join(key) for name in self.write]

    def _target_fs(self, target: str) -> tuple[Any, str]:
        for store in self.stores.values():
            if target.startswith(store.url.rstrip("/") + "/"):
                return self._fs(target, store.options)
        return self._fs(target)

    # -- operations ----------------------------------------------------------------------

    def exists(self, url: str) -> bool:
        """Whether ``url`` can be read (for ``recc://``: whether any read store holds it)."""
        try:
            fs, path = self.locate(url)
        except FileNotFoundError:
            return False
        return bool(fs.exists(path))

    def open(self, url: str, mode: str = "rb") -> IO[Any]:
        """Open ``url`` for reading (``rb`` or ``r``); writes go through :meth:`atomic_write`."""
        if "r" not in mode:
            raise ValueError(f"mode={mode!r}: open() only reads; use atomic_write() to write")
        fs, path = self.locate(url)
        return fs.open(path, mode)

    def read_bytes(self, url: str) -> bytes:
        """The whole content of ``url``."""
        fs, path = self.locate(url)
        return bytes(fs.cat_file(path))

    def local_path(self, url: str) -> str | None:
        """The local filesystem path of ``url`` when it resolves to one, else None."""
        fs, path = self.locate(url)
        return path if isinstance(fs, LocalFileSystem) else None

    def write_bytes(self, url: str, data: bytes) -> None:
        """Write ``data`` to ``url`` all or nothing (see :meth:`atomic_write`)."""
        with self.atomic_write(url) as f:
            f.write(data)

    @contextlib.contextmanager
    def atomic_write(self, url: str, mode: int | None = None) -> Iterator[IO[bytes]]:
        """Yield a binary file; on success it appears at every target of ``url`` at once.

        Readers never see a half-written file: a local target is written beside its final
        name and renamed into place; a remote target is uploaded from a local temporary
        file in one request (S3 makes an object visible only when its upload completes). If
        the block raises, nothing is published and the temporary file is removed. Local
        targets get ``mode`` (default: the temporary file's private 0o600).
        """
        targets = self.targets(url)
        first_fs, first_path = self._target_fs(targets[0])
        if isinstance(first_fs, LocalFileSystem):
            directory = os.path.dirname(first_path) or "."
            os.makedirs(directory, exist_ok=True)
        else:
            directory = None
        fd, tmp = tempfile.mkstemp(prefix=".recc-tmp-", suffix=".part", dir=directory)
        try:
            with os.fdopen(fd, "wb") as f:
                yield f
                if mode is not None:
                    os.fchmod(f.fileno(), mode)
            for target in reversed(targets):  # the first target may consume tmp by rename
                fs, path = self._target_fs(target)
                if isinstance(fs, LocalFileSystem):
                    if target is targets[0] and directory is not None:
                        os.replace(tmp, path)
                    else:
                        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
                        part = f"{path}.{uuid.uuid4().hex}.part"
                        shutil.copyfile(tmp, part)
                        if mode is not None:
                            os.chmod(part, mode)
                        os.replace(part, path)
                else:
                    fs.put_file(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def remove(self, url: str, recursive: bool = False) -> None:
        """Delete ``url`` from every target; a missing file is not an error (idempotent)."""
        for target in self.targets(url):
            fs, path = self._target_fs(target)
            with contextlib.suppress(FileNotFoundError):
                if fs.exists(path):
                    fs.rm(path, recursive=recursive)

    def join(self, base: str, *parts: str) -> str:
        """``base`` with ``parts`` appended, keeping the scheme (``recc://``, ``s3://``)."""
        return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])


def _names(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = value.split(",")
    return [str(v).strip().upper() for v in value if str(v).strip()]
