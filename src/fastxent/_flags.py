"""The one rule for fastxent's environment variables, shared by the build and the package.

On/off variables: ``1``, ``true``, ``yes``, ``on`` mean on; unset, empty, ``0``, ``false``,
``no``, ``off`` mean off (case and surrounding spaces ignored). Choice variables take one of
their names, or nothing. Anything else is an error that names the variable, so that a typo
never silently means off, or the default. This file imports nothing from fastxent: ``setup.py``
loads it by path, before the package exists.
"""

import os
from collections.abc import Mapping

TRUE = frozenset({"1", "true", "yes", "on"})
FALSE = frozenset({"", "0", "false", "no", "off"})


def env_flag(name: str, environ: Mapping[str, str] | None = None) -> bool:
    """Whether the on/off variable ``name`` is on in ``environ`` (``os.environ`` by default)."""
    value = (os.environ if environ is None else environ).get(name, "")
    word = value.strip().lower()
    if word in TRUE:
        return True
    if word in FALSE:
        return False
    raise ValueError(
        f"{name}={value!r} is not an on/off value: use 1, true, yes or on to set it, and 0, "
        "false, no, off or nothing to clear it"
    )


def env_choice(name: str, choices: tuple[str, ...], environ: Mapping[str, str] | None = None
               ) -> str | None:
    """The value of the variable ``name`` in ``environ``, one of ``choices`` (case and
    surrounding spaces ignored), or None when it is unset or empty; anything else is an error
    that names the variable and the choices."""
    value = (os.environ if environ is None else environ).get(name, "")
    word = value.strip().lower()
    if word == "":
        return None
    if word in choices:
        return word
    raise ValueError(f"{name}={value!r} is not one of {', '.join(choices)} (or nothing)")
