"""Futures symbols: the root of a contract, continuous or parent symbol.

The root is what hygiene profiles and the continuous builder key on (see
``docs/contract.md#vendor-files-and-continuous-futures``). The rule, applied in this order:

1. drop a dataset prefix: everything up to the last ``:`` (``GLBX.MDP3:NQH6`` → ``NQH6``);
2. drop a continuous suffix ``.c.N``, ``.v.N`` or ``.n.N`` (``NQ.c.0`` → ``NQ``);
3. drop a parent suffix ``.FUT``, ``.OPT``, ``.SPOT`` or ``.MLEG`` (``NQ.FUT`` → ``NQ``);
4. drop a CME contract code at the end: one month letter ``F G H J K M N Q U V X Z`` and a one- or
   two-digit year (``NQH6``, ``NQZ25`` → ``NQ``), **only when something is left**, so a root that
   is itself a month letter plus a digit (``J7``, ``Z5``) stays whole.

Anything else is kept as it is. In particular a calendar spread (``NQH6-NQM6``) or any other
combination keeps its whole name: its prices are differences between legs, so the outright's
hygiene thresholds would be wrong for it. Matching is case-sensitive, as exchange codes are
upper case; the residual ambiguity is a root that ends in a month letter plus a digit after other
characters (a hypothetical root ``AH5`` reads as contract ``H5`` of root ``A``), which no CME
product has.
"""

from __future__ import annotations

import re

_CONTINUOUS = re.compile(r"\.[cvn]\.\d+$")
_PARENT = re.compile(r"\.(?:FUT|OPT|SPOT|MLEG)$")
# Non-greedy root so that "NQZ25" parses as NQ + Z + 25; the root needs at least one character.
_CONTRACT = re.compile(r"^(?P<root>[A-Z0-9]+?)[FGHJKMNQUVXZ]\d{1,2}$")


def instrument_root(symbol: str) -> str:
    """The root of a futures symbol: no dataset prefix, contract code or continuous/parent suffix.

    >>> instrument_root("GLBX.MDP3:NQ")
    'NQ'
    >>> instrument_root("GLBX.MDP3:NQH6")
    'NQ'
    >>> [instrument_root(s) for s in ("NQZ25", "ESH1", "NQ.c.0", "NQ.v.1", "NQ.n.2", "NQ.FUT")]
    ['NQ', 'ES', 'NQ', 'NQ', 'NQ', 'NQ']
    >>> [instrument_root(s) for s in ("MNQZ5", "6EH26", "SR3M5", "ES.OPT")]
    ['MNQ', '6E', 'SR3', 'ES']

    Nothing would remain after stripping a code, so these roots stay whole:

    >>> instrument_root("J7"), instrument_root("GLBX.MDP3:Z5")
    ('J7', 'Z5')

    Spreads and symbols that are not contract codes are returned unchanged:

    >>> instrument_root("GLBX.MDP3:NQH6-NQM6"), instrument_root("ES"), instrument_root("nqh6")
    ('NQH6-NQM6', 'ES', 'nqh6')
    """
    name = symbol.rsplit(":", 1)[-1]
    name = _CONTINUOUS.sub("", name)
    name = _PARENT.sub("", name)
    match = _CONTRACT.match(name)
    return match.group("root") if match else name


def dataset_of(symbol: str) -> str | None:
    """The dataset prefix of ``DATASET:SYMBOL`` (``"GLBX.MDP3"``), or None without one.

    >>> dataset_of("GLBX.MDP3:NQH6"), dataset_of("NQH6")
    ('GLBX.MDP3', None)
    """
    head, sep, _ = symbol.rpartition(":")
    return head if sep else None
