"""Routes served beside podlatency's own: the one way code outside the package plugs into the app.

An extension is a function that takes the process's :class:`~podlatency.runtime.Runtime` and returns
an :class:`Extension`: its route handlers, the dependencies they take, the path prefixes that count
as predictions (held to ``PODLATENCY_MAX_IN_FLIGHT`` and shed like ``/v1/predict``) and what to close
when the process stops. :func:`~podlatency.web.app.create_app` takes extensions as objects;
``podlatency serve`` imports them from ``PODLATENCY_EXTENSIONS`` (``module:attribute`` paths), as
uvicorn imports an app. Extension routes get the edge's server span, request metrics and error
handling like any other route; a handler that wants phase spans opens them with
:func:`~podlatency.web.phases.request_phases`.

The load comparison serves the seed post's endpoint designs this way
(``PODLATENCY_EXTENSIONS=measure.seed_designs:extension``); the package itself knows nothing of them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from litestar.di import Provide
from litestar.handlers import HTTPRouteHandler

from podlatency.errors import SettingsError

if TYPE_CHECKING:
    from podlatency.runtime import Runtime


def _nothing_to_close() -> None:
    return None


@dataclass(frozen=True, slots=True)
class Extension:
    """Route handlers served beside podlatency's own, and what they need."""

    routes: Sequence[HTTPRouteHandler]
    dependencies: Mapping[str, Provide] = field(default_factory=dict)
    """Extra dependencies by parameter name (they must not reuse the runtime's names)."""
    prediction_paths: tuple[str, ...] = ()
    """Path prefixes counted against ``PODLATENCY_MAX_IN_FLIGHT`` and shed as predictions are."""
    close: Callable[[], None] = _nothing_to_close
    """Called once when the process stops, before the runtime stops."""


ExtensionFactory = Callable[["Runtime"], Extension]
"""What ``PODLATENCY_EXTENSIONS`` names: a function from the runtime to its extension."""


def import_extension(path: str) -> ExtensionFactory:
    """The extension factory ``module:attribute`` names; a :class:`SettingsError` naming it otherwise."""
    module_name, _, attribute = path.partition(":")
    try:
        factory: object = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise SettingsError(
            f"PODLATENCY_EXTENSIONS names {path!r}, which cannot be imported: {error}"
        ) from None
    if not callable(factory):
        raise SettingsError(f"PODLATENCY_EXTENSIONS names {path!r}, which is not a function")
    return factory  # checked to be callable; what it returns is checked by the caller


def extensions_from_settings(runtime: Runtime) -> list[Extension]:
    """The extensions ``PODLATENCY_EXTENSIONS`` names, built on ``runtime``."""
    extensions = []
    for path in runtime.settings.extension_paths:
        extension = import_extension(path)(runtime)
        if not isinstance(extension, Extension):
            raise SettingsError(
                f"PODLATENCY_EXTENSIONS names {path!r}, which returned {type(extension).__name__}, "
                "not an Extension"
            )
        extensions.append(extension)
    return extensions
