"""Law forms by name: ``get_law("qid")``; ``register_law`` adds user forms."""

from __future__ import annotations

from collections.abc import Callable

from qscale.errors import QscaleError
from qscale.laws.forms import LawForm
from qscale.laws.losslaws import Chinchilla, EffectiveParams
from qscale.laws.powerlaws import PrecisionPTQ, QidPerBit, qat_law, qid_law

LAWS: dict[str, Callable[[], LawForm]] = {
    "chinchilla": Chinchilla,
    "effective_params": EffectiveParams,
    "precision_ptq": PrecisionPTQ,
    "qat": qat_law,
    "qat_w16a4": lambda: qat_law("W16A4"),
    "qat_w4a16": lambda: qat_law("W4A16"),
    "qat_w4a4": lambda: qat_law("W4A4"),
    "qid": qid_law,
    "qid_D": lambda: qid_law(("beta",), "qid_D"),
    "qid_N": lambda: qid_law(("alpha",), "qid_N"),
    "qid_P": lambda: qid_law(("gamma",), "qid_P"),
    "qid_per_bit": QidPerBit,
}


def get_law(name: str) -> LawForm:
    """A fresh form by registry name; unknown names list the known ones."""
    if name not in LAWS:
        raise QscaleError(f"unknown law {name!r} (known: {', '.join(sorted(LAWS))})")
    return LAWS[name]()


def register_law(name: str, factory: Callable[[], LawForm]) -> None:
    """Add a form (e.g. a :class:`~qscale.laws.user.UserLaw`) under ``name``."""
    if name in LAWS:
        raise QscaleError(f"law {name!r} is already registered")
    LAWS[name] = factory
