"""Registry of perception backends, one namespace per role (``ps``, ``owod``, ``sgg``, ``ocr``).

A backend is a small class registered with ``@register_backend(role, name)``. Its ``__init__`` takes
``device`` plus keyword-only options whose defaults are the official settings (docs/perception.md,
Presets); ``resolve_options`` fills them in, so a config names every value it ran with.
Heavy dependencies are imported inside the class (lazily) and a missing one raises ``MissingExtraError``,
whose one-line message names the extra to install.

Calling conventions (batched; a single image is a batch of one):

* ``ps``:   ``backend(images) -> list[list[Segment]]``
* ``owod``: ``backend(images) -> list[list[Detection]]``
* ``ocr``:  ``backend(images) -> list[list[TextLine]]``
* ``sgg``:  ``backend(images, segments, detections) -> list[SceneGraph]``, where the inputs are the
  per-image outputs of ``ps`` / ``owod`` (empty lists for a role that is not configured).

``images`` are (H, W, 3) uint8 RGB arrays of the canvas. A backend may define a class attribute
``requires`` (roles whose outputs it reads) and a classmethod ``versions() -> dict[str, str]`` (package
versions that can change its output; part of the cache key) and ``check_dependencies()`` (raises
``MissingExtraError`` without loading anything, so a preset fails before its first model loads).

The ShapesWorld backends (``moai/perception/shapes.py``, each role's ``shapes``) register here the same way.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from .types import ROLES, canonical_role

#: Modules whose import registers the built-in backends.
BUILTIN_MODULES: tuple[str, ...] = (
    "moai.perception.panoptic",
    "moai.perception.detection",
    "moai.perception.scene_graph",
    "moai.perception.ocr",
    "moai.perception.shapes",
)

_REGISTRY: dict[str, dict[str, type]] = {role: {} for role in ROLES}
_builtins_loaded = False


class MissingExtraError(ImportError):
    """A backend's optional dependencies are not installed; the message is one line naming the extra."""


def missing_extra(
    backend: str, package: str, extra: str | None, instead: str | None = None
) -> MissingExtraError:
    """The standard one-line error for a backend whose dependency ``package`` is missing.

    ``extra`` names the ``moai-vlm[extra]`` to install (None: the package is a core dependency).
    """
    install = f"pip install 'moai-vlm[{extra}]'" if extra else f"pip install {package}"
    hint = f", or use {instead} instead" if instead else ""
    return MissingExtraError(f"perception backend {backend!r} needs {package!r}: {install}{hint}")


def package_version(name: str) -> str:
    """Installed version of a distribution, or ``"absent"``."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def register_backend(role: str, name: str) -> Callable[[type], type]:
    """Class decorator: register ``cls`` as backend ``name`` of ``role`` (``seg``/``od`` aliases accepted)."""
    role = canonical_role(role)

    def decorate(cls: type) -> type:
        cls.role = role  # type: ignore[attr-defined]
        cls.backend_name = name  # type: ignore[attr-defined]
        _REGISTRY[role][name] = cls
        return cls

    return decorate


def _load_builtins() -> None:
    global _builtins_loaded
    if not _builtins_loaded:
        _builtins_loaded = True
        for module in BUILTIN_MODULES:
            importlib.import_module(module)


def backend_names(role: str) -> list[str]:
    """Registered backend names of a role."""
    _load_builtins()
    return sorted(_REGISTRY[canonical_role(role)])


def backend_class(role: str, name: str) -> type:
    """The registered class; ``ValueError`` listing the known names when ``name`` is unknown."""
    _load_builtins()
    role = canonical_role(role)
    try:
        return _REGISTRY[role][name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY[role])) or "none"
        raise ValueError(f"unknown {role} backend {name!r} (registered: {known})") from None


def _option_parameters(cls: type) -> dict[str, inspect.Parameter]:
    params = inspect.signature(cls.__init__).parameters
    return {
        key: p
        for key, p in params.items()
        if key not in ("self", "device") and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    }


def _jsonable(value: Any) -> Any:
    """Tuples/sets to lists so that resolved options compare and hash like their JSON form."""
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, set | frozenset):
        return sorted(_jsonable(v) for v in value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def resolve_options(role: str, name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """Every option of the backend with the given overrides applied; unknown keys raise ``ValueError``."""
    cls = backend_class(role, name)
    params = _option_parameters(cls)
    unknown = sorted(set(options) - set(params))
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(unknown)} for {canonical_role(role)} backend {name!r} "
            f"(known: {', '.join(sorted(params)) or 'none'})"
        )
    resolved = {}
    for key, param in params.items():
        if key in options:
            resolved[key] = _jsonable(options[key])
        elif param.default is not inspect.Parameter.empty:
            resolved[key] = _jsonable(param.default)
        else:
            raise ValueError(f"{canonical_role(role)} backend {name!r} needs option {key!r}")
    return resolved


def backend_versions(role: str, name: str) -> dict[str, str]:
    """Package versions that can change the backend's output (for the cache key)."""
    cls = backend_class(role, name)
    versions = getattr(cls, "versions", None)
    return dict(versions()) if callable(versions) else {}


def backend_requires(role: str, name: str) -> tuple[str, ...]:
    """Roles whose outputs the backend reads (the geometric scene graph reads ``ps`` and ``owod``)."""
    return tuple(getattr(backend_class(role, name), "requires", ()))


def check_backend(role: str, name: str) -> None:
    """Raise ``MissingExtraError`` now if the backend's dependencies are missing (before any model loads)."""
    check = getattr(backend_class(role, name), "check_dependencies", None)
    if callable(check):
        check()


def build_backend(role: str, name: str, options: Mapping[str, Any], device: str = "cpu") -> Any:
    """Instantiate a backend with resolved options on ``device``."""
    cls = backend_class(role, name)
    return cls(device=device, **resolve_options(role, name, options))
