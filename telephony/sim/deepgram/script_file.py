"""A `--script` timeline file read for a person: a mistake is one line naming the file, the
line, the entry and the field (`script.yaml:4: turns[1]: missing field 'end_ms'`), not a
traceback from a dataclass constructor."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from telephony.sim.deepgram.script import AgentStep, Fault, ScriptedTurn, ScriptError

# The list keys of a script document and what each entry builds (`staff`: transcribe mode's
# other side, as `turns`).
ENTRIES: dict[str, type] = {
    "turns": ScriptedTurn,
    "staff": ScriptedTurn,
    "agent": AgentStep,
    "faults": Fault,
}


def _line(node: yaml.Node | None, *path: str | int) -> int | None:
    """1-based line of the node at `path` (mapping keys, sequence indexes), else None."""
    for step in path:
        if isinstance(node, yaml.MappingNode) and isinstance(step, str):
            node = next((v for k, v in node.value if getattr(k, "value", None) == step), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(step, int):
            node = node.value[step] if step < len(node.value) else None
        else:
            return None
    return node.start_mark.line + 1 if node is not None else None


def _entry_problem(cls: type, entry: Any) -> tuple[str | None, str] | None:
    """(field or None, what is wrong) for one entry, or None when it builds."""
    if not isinstance(entry, dict):
        return None, f"expected a mapping, got {type(entry).__name__}"
    known = {f.name: f for f in dataclasses.fields(cls)}
    for name in entry:
        if name not in known:
            return str(name), f"unknown field {name!r} (known: {', '.join(known)})"
    for name, f in known.items():
        no_default = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if no_default and name not in entry:
            return name, f"missing field {name!r}"
        value = entry.get(name)
        # Fields are annotated as strings (postponed annotations): "int", "int | None", ...
        is_int = str(f.type).split(" |")[0] == "int"
        wrong = value is not None and (isinstance(value, bool) or not isinstance(value, int))
        if name in entry and is_int and wrong:
            return name, f"field {name!r} must be a whole number of ms, got {value!r}"
    try:
        cls(**entry)
    except (ScriptError, TypeError, ValueError) as exc:
        return None, str(exc)
    return None


def read_script(path: str | Path) -> dict[str, Any]:
    """The script document at `path`, each entry checked; raises ScriptError as
    `PATH:LINE: KEY[I]: what is wrong` (or `PATH: ...` when there is no line to name)."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not UTF-8 text"
        raise ScriptError(f"{source}: cannot read: {why}") from None
    try:
        data = yaml.safe_load(text) or {}
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise ScriptError(f"{source}{where}: not valid YAML") from None
    if not isinstance(data, dict):
        raise ScriptError(f"{source}: a script document must be a mapping")
    voiced = bool(data.get("voiced"))
    for key, cls in ENTRIES.items():
        entries = data.get(key) or []
        if not isinstance(entries, list):
            raise ScriptError(f"{source}:{_line(root, key)}: {key}: expected a list")
        if voiced and key == "turns":
            continue  # voiced turns may be bare texts (Script.from_dict checks them)
        for i, entry in enumerate(entries):
            problem = _entry_problem(cls, entry)
            if problem is not None:
                field, why = problem
                line = _line(root, key, i, field) if field else None
                line = line or _line(root, key, i)
                raise ScriptError(f"{source}:{line}: {key}[{i}]: {why}")
    return data
