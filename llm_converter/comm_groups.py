"""Communicator group ids as ASTRA-Sim reads them: the one home of pg_name and group-file key arithmetic.

ASTRA-Sim (astra-sim/workload/Workload.cc) keys the groups of --comm-group-configuration by
`std::stoi(key)`, and a node's pg_name selects the default group (all NPUs) when it is exactly "" or "0",
otherwise the group `std::stoi(pg_name)`. So "01" and "1" name the same group, and a key or pg_name that is
not a decimal integer makes stoi throw (or read a prefix). pipesim accepts ASCII decimal digits only (str.isdigit
also takes "²" and "١", which stoi does not), up to INT32_MAX (stoi's range), and compares ids as integers:
`group_key` turns either spelling into one canonical string.
"""

from __future__ import annotations

INT32_MAX = 2**31 - 1
DEFAULT_GROUP = ""  # the key of the group of all NPUs ("" or "0" as a pg_name, or no pg_name)


def parse_group_id(text: str) -> int | None:
    """The integer ASTRA-Sim reads `text` as, or None when it is not a plain decimal integer in stoi's range."""
    if not text or len(text) > 16 or not (text.isascii() and text.isdigit()):
        return None
    value = int(text)
    return value if value <= INT32_MAX else None


def group_key(pg_name: str | None) -> str:
    """The canonical key of the group a node's pg_name selects: DEFAULT_GROUP for "", "0" or None, str(int)
    for another id ("01" -> "1"), and the text unchanged when it is no id (so a lookup fails and the error
    shows what the trace says). "00" stays "00": ASTRA-Sim looks it up as group 0, which no group file holds."""
    if pg_name is None or pg_name in ("", "0"):
        return DEFAULT_GROUP
    value = parse_group_id(pg_name)
    if value is None or value == 0:
        return pg_name
    return str(value)
