"""livemig.spec: QEMU's migration control plane declared as data.

The single source of truth for status names, transitions, PostcopyState
handlers, capability and parameter rules, QMP preconditions and wire
constants.  Everything else in livemig reads these tables.

    >>> from livemig.spec import load_profile
    >>> p = load_profile("qemu-7.2")
    >>> p.transition("src.cancel").new
    'cancelling'
"""
from livemig.spec.consistency import check_profile
from livemig.spec.loader import load_all, load_profile, profile_names
from livemig.spec.schema import CURRENT, SIDES, Profile, Transition

DEFAULT_PROFILE = "qemu-7.2"

__all__ = [
    "CURRENT",
    "DEFAULT_PROFILE",
    "Profile",
    "SIDES",
    "Transition",
    "check_profile",
    "load_all",
    "load_profile",
    "profile_names",
]
