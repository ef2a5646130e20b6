"""On-disk perception cache (docs/perception.md, The cache and ``--data``): one directory per perception config.

Layout::

    CACHE_DIR/
      manifest.json                         format, cache key, resolved config, backend/package versions
      entries/ab/abcdef....json             one Perception per image, named by the image content hash
      index/rank-00000-of-00002.jsonl       per-rank log of a ``--data`` run (source, key, status, error)

Keys: an entry is found by the sha256 of the image file's bytes; the directory holds one perception
config, identified by ``manifest["key"]`` = hash(config fingerprint + backend and package versions), which
every entry repeats. Opening a cache for writing with another config (or other versions) raises
``CacheMismatchError`` naming the differences; a reader may pass its config to get the same check.

Every entry is written atomically (temporary file in the same directory, fsync, ``os.replace``), so an
entry file either exists complete or not at all: a killed run leaves no corrupt entry, and a rerun skips
the images whose entry exists. Index lines are appended with one write each; a torn last line (killed
mid-write) is skipped by ``read_index``.

Reading (the training code's side)::

    from moai.perception import PerceptionCache, verbalize_perception, panoptic_map
    cache = PerceptionCache("cache/")          # or PerceptionCache("cache/", config=my_config) to check it
    p = cache.get("images/0001.jpg")           # path or bytes -> Perception, or None when not cached
    aux_text = verbalize_perception(p)         # official aux string
    aux_image = panoptic_map(p)                # official panoptic colour map
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from .config import PerceptionConfig
from .registry import backend_versions, package_version
from .run import run_roles
from .types import Perception

CACHE_FORMAT = "moai-perception-cache/1"
MANIFEST = "manifest.json"
ENTRIES = "entries"
INDEX = "index"
#: Characters of the content hash used for the sub-directory fan-out.
FANOUT = 2
#: Bytes read at a time when hashing a file.
HASH_CHUNK = 1 << 20


class CacheMismatchError(ValueError):
    """A cache directory written by another perception config (or other backend versions)."""


def content_hash(source: str | Path | bytes) -> str:
    """sha256 (hex) of an image file's bytes, or of the given bytes."""
    digest = hashlib.sha256()
    if isinstance(source, bytes | bytearray):
        digest.update(source)
    else:
        with open(source, "rb") as fh:
            while chunk := fh.read(HASH_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()


def config_versions(config: PerceptionConfig) -> dict[str, str]:
    """Package versions that can change the results of ``config`` (no model is loaded)."""
    roles = run_roles(config)
    versions = {"moai-vlm": package_version("moai-vlm"), "numpy": package_version("numpy")}
    versions["pillow"] = package_version("pillow")
    for role in sorted(roles):
        versions.update(backend_versions(role, getattr(config, role).name))
    return dict(sorted(versions.items()))


def cache_key(fingerprint: str, versions: Mapping[str, str]) -> str:
    """Key of a cache directory: hash of the config fingerprint and the versions."""
    text = json.dumps({"config": fingerprint, "versions": dict(versions)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def atomic_write_text(path: Path, text: str, tag: str = "") -> None:
    """Write ``text`` to ``path`` atomically: temp file in the same directory, fsync, ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{tag or os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _diff(prefix: str, a: Any, b: Any, out: list[str]) -> None:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        for key in sorted(set(a) | set(b)):
            _diff(f"{prefix}.{key}" if prefix else str(key), a.get(key), b.get(key), out)
    elif a != b:
        out.append(f"{prefix}: cache has {_short(a)}, this run {_short(b)}")


def _short(value: Any, limit: int = 60) -> str:
    """JSON of a differing value; a backend config is shown by its name."""
    if isinstance(value, Mapping) and "name" in value:
        return json.dumps(value["name"])
    text = json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class PerceptionCache:
    """A perception cache directory (module docstring).

    Args:
        directory: the cache directory.
        config: if given, refuse (``CacheMismatchError``) a cache written with another config.
        versions: if given, refuse a cache written with other backend/package versions (the writer does).
        create: create the directory and manifest when missing (requires ``config`` and ``versions``);
            otherwise a missing manifest raises ``FileNotFoundError``.
    """

    def __init__(
        self,
        directory: str | Path,
        config: PerceptionConfig | None = None,
        versions: Mapping[str, str] | None = None,
        create: bool = False,
    ) -> None:
        self.directory = Path(directory)
        manifest_path = self.directory / MANIFEST
        if not manifest_path.exists():
            if not create:
                raise FileNotFoundError(f"{self.directory}: not a perception cache (no {MANIFEST})")
            if config is None or versions is None:
                raise ValueError("creating a perception cache needs its config and versions")
            if self.directory.exists() and any(
                not p.name.startswith(".") and p.name not in (ENTRIES, INDEX)
                for p in self.directory.iterdir()
            ):
                raise CacheMismatchError(
                    f"{self.directory}: exists, is not empty and is not a perception cache"
                )
            fingerprint = config.fingerprint()
            manifest = {
                "format": CACHE_FORMAT,
                "key": cache_key(fingerprint, versions),
                "fingerprint": fingerprint,
                "config": config.resolved(),
                "versions": dict(versions),
            }
            atomic_write_text(manifest_path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        try:
            self.manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise ValueError(f"{manifest_path}: unreadable cache manifest ({err})") from None
        if self.manifest.get("format") != CACHE_FORMAT:
            raise CacheMismatchError(
                f"{manifest_path}: cache format {self.manifest.get('format')!r}, expected {CACHE_FORMAT!r}"
            )
        self.key = self.manifest["key"]
        if config is not None:
            self._check("config", self.manifest["config"], config.resolved(), "another perception config")
        if versions is not None:
            self._check(
                "versions", self.manifest["versions"], dict(versions), "other backend/package versions"
            )

    def _check(self, what: str, stored: Any, current: Any, description: str) -> None:
        if stored == current:
            return
        diffs: list[str] = []
        _diff(what, stored, current, diffs)
        shown = "; ".join(diffs[:4]) + (f"; ... ({len(diffs) - 4} more)" if len(diffs) > 4 else "")
        raise CacheMismatchError(
            f"{self.directory}: cache was written by {description} ({shown}); "
            "use another --out directory or delete this one"
        )

    @property
    def config(self) -> PerceptionConfig:
        """The (resolved) perception config the cache was written with."""
        return PerceptionConfig.from_dict(self.manifest["config"])

    # --- entries -----------------------------------------------------------------------------------------------

    def entry_path(self, key: str) -> Path:
        return self.directory / ENTRIES / key[:FANOUT] / f"{key}.json"

    def has(self, key: str) -> bool:
        return self.entry_path(key).is_file()

    def get(self, image: str | Path | bytes) -> Perception | None:
        """The cached perception of an image file (path) or encoded image (bytes), or None."""
        return self.get_by_key(content_hash(image))

    def get_by_key(self, key: str) -> Perception | None:
        path = self.entry_path(key)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            entry = json.loads(text)
            perception = Perception.from_dict(entry["perception"])
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{path}: corrupt cache entry ({err})") from None
        if entry.get("cache_key") != self.key:
            raise CacheMismatchError(
                f"{path}: entry of another cache (key {entry.get('cache_key')}, dir {self.key})"
            )
        return perception

    def put(self, key: str, perception: Perception, source: str | None = None, tag: str = "") -> Path:
        """Write one entry atomically; returns its path."""
        entry = {
            "cache_key": self.key,
            "content_hash": key,
            "source": source,
            "perception": perception.to_dict(),
        }
        path = self.entry_path(key)
        atomic_write_text(path, json.dumps(entry, ensure_ascii=False, separators=(",", ":")), tag=tag)
        return path

    def keys(self) -> Iterator[str]:
        """Content hashes of every complete entry."""
        root = self.directory / ENTRIES
        if root.is_dir():
            for path in sorted(root.glob(f"{'?' * FANOUT}/*.json")):
                yield path.stem

    def __len__(self) -> int:
        return sum(1 for _ in self.keys())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.has(key)

    # --- per-rank index ----------------------------------------------------------------------------------------

    def index_path(self, rank: int, world: int) -> Path:
        return self.directory / INDEX / f"rank-{rank:05d}-of-{world:05d}.jsonl"

    def append_index(self, rank: int, world: int, record: Mapping[str, Any]) -> None:
        """Append one JSON line to this rank's index (one ``write`` call)."""
        path = self.index_path(rank, world)
        path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(dict(record), ensure_ascii=False) + "\n"
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()

    def read_index(self) -> list[dict[str, Any]]:
        """Every complete index line of every rank (torn or invalid lines skipped)."""
        records = []
        for path in sorted((self.directory / INDEX).glob("rank-*.jsonl")):
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    records.append(json.loads(line))
                except ValueError:
                    continue
        return records

    def remove_stale_temporaries(self, tag: str) -> int:
        """Delete temporary files left by a killed writer with this ``tag`` (one tag per rank)."""
        count = 0
        for path in (self.directory / ENTRIES).glob(f"*/.*.{tag}.*.tmp"):
            path.unlink(missing_ok=True)
            count += 1
        return count
