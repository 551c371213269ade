"""Loading the numbers YAML: every problem as `file:line: field.path: message`.

The YAML is composed to nodes first, so each key and list item keeps its line; pydantic's error
locations are mapped back onto them and its wording onto an admin's. Alias bombs, secrets in the
file (only the *names* of environment variables belong there) and duplicate keys are refused.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ValidationError

from telephony.config.responder import LLMResponderConfig
from telephony.config.schema import (
    _REFS_CHECKED,
    Config,
    Loc,
    _dotted,
    _reference_errors,
)
from telephony.deepgram import messages as dm

# Key names that would hold a secret value (api_key_env, max_tokens, token_limit_param do not).
SECRET_KEY_RE = re.compile(r"^(?:.*[_-])?(?:api[_-]?key|token|secret|password|passwd)$", re.I)
SECRET_HINT = "secrets come from the environment; name the variable with api_key_env"


def _one_line(text: str) -> str:
    """Control characters (a key "a\\nb", a \\r in a value) escaped: one error, one line."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class ConfigError(Exception):
    """Every problem in the file, each as 'file:line: path: message' on one line."""

    def __init__(self, errors: list[str]) -> None:
        errors = [_one_line(e) for e in errors]
        super().__init__("\n".join(errors))
        self.errors = errors


@dataclass
class _Doc:
    """Where things are in the YAML: line of each mapping key / sequence item, by path."""

    lines: dict[Loc, int] = field(default_factory=dict)
    items: set[Loc] = field(default_factory=set)  # paths whose last part is a list index
    problems: list[tuple[int, Loc, str]] = field(default_factory=list)

    def line(self, loc: Loc) -> int:
        """Line of the deepest recorded prefix of `loc`."""
        for n in range(len(loc), 0, -1):
            if loc[:n] in self.lines:
                return self.lines[loc[:n]]
        return 1

    def dotted(self, loc: Loc) -> str:
        return _dotted(loc, self.items)


def _walk(node: yaml.Node, loc: Loc, doc: _Doc, keys: yaml.constructor.SafeConstructor) -> None:
    if len(loc) > 64:  # self-referencing aliases
        return
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(
                key_node, yaml.ScalarNode
            ):
                continue
            key = keys.construct_object(key_node)
            child, line = (*loc, key), key_node.start_mark.line + 1
            if key in seen:
                doc.problems.append((line, child, f"duplicate key (first on line {seen[key]})"))
            seen.setdefault(key, line)
            doc.lines[child] = line  # the last one wins, as in the loaded data
            _walk(value_node, child, doc, keys)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            child = (*loc, i)
            doc.lines[child] = item.start_mark.line + 1
            doc.items.add(child)
            _walk(item, child, doc, keys)


# The document with every alias expanded: a real file has a few thousand nodes. Aliases can
# multiply a small file a billionfold ("billion laughs"); such files are refused before anything
# walks or expands them.
MAX_YAML_NODES = 100_000
MAX_YAML_CHARS = 10_000_000  # scalar text, likewise expanded
# PyYAML's scanner costs O(depth) per token inside flow collections (`[[[...`), so 5 000
# brackets took ~2 s of CPU before its composer hit the recursion limit (~490 levels). Far
# deeper than any real file; counted over the raw text (brackets in quoted text too), which
# can only over-count by unclosed brackets inside strings.
MAX_FLOW_DEPTH = 200
_BRACKETS = re.compile(r"[\[\]{}]")


def _flow_depth_exceeded(text: str) -> bool:
    depth = 0
    for match in _BRACKETS.finditer(text):
        if match.group() in "[{":
            depth += 1
            if depth > MAX_FLOW_DEPTH:
                return True
        elif depth:
            depth -= 1
    return False


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _check_expansion(root: yaml.Node) -> None:
    """Refuse alias bombs and recursive aliases. Iterative, and linear in the distinct nodes
    (an alias is the same node object again, so each node's expanded size is computed once)."""
    sizes: dict[int, tuple[int, int]] = {}  # id(node) -> expanded (nodes, scalar chars)
    open_nodes: set[int] = set()  # nodes whose children are being sized: the current path
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            open_nodes.discard(key)
            nodes, chars = 1, len(node.value) if isinstance(node, yaml.ScalarNode) else 0
            for child in _children(node):
                n, c = sizes[id(child)]
                nodes, chars = nodes + n, chars + c
            if nodes > MAX_YAML_NODES or chars > MAX_YAML_CHARS:
                raise yaml.composer.ComposerError(
                    None,
                    None,
                    f"aliases expand the document past {MAX_YAML_NODES} nodes or "
                    f"{MAX_YAML_CHARS} characters",
                    node.start_mark,
                )
            sizes[key] = (nodes, chars)
        elif key in open_nodes:
            raise yaml.composer.ComposerError(
                None, None, "recursive alias: a node contains itself", node.start_mark
            )
        elif key not in sizes:
            open_nodes.add(key)
            stack.append((node, True))
            stack.extend((child, False) for child in _children(node))


def _parse(text: str) -> tuple[Any, _Doc]:
    """YAML text -> (data, line index). Raises yaml.YAMLError."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        doc = _Doc()
        if node is None:
            return None, doc
        _check_expansion(node)
        # Walk before constructing: construction flattens `<<` merges into the node in place.
        _walk(node, (), doc, yaml.constructor.SafeConstructor())
        return loader.construct_document(node), doc
    finally:
        loader.dispose()


def _yaml_error(source: str, text: str, exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        # An error at the end of the stream is reported on the last line, not one past it.
        line = min(mark.line + 1, max(len(text.splitlines()), 1)) if mark else 1
        what = ": ".join(s for s in (exc.context, exc.problem) if s)
        return f"{source}:{line}: YAML syntax error: {what}"
    return f"{source}:1: YAML syntax error: {exc}"


def _strip_optional(tp: Any) -> Any:
    while True:
        if typing.get_origin(tp) is Annotated:
            tp = typing.get_args(tp)[0]
            continue
        if typing.get_origin(tp) in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(args) == 1:
                tp = args[0]
                continue
        return tp


def _tagged_members(tp: Any) -> dict[str, type[BaseModel]]:
    """A discriminated union's models by their `type` tag ({} for anything else)."""
    if typing.get_origin(tp) not in (typing.Union, types.UnionType):
        return {}
    members: dict[str, type[BaseModel]] = {}
    for arg in typing.get_args(tp):
        arg = _strip_optional(arg)
        if isinstance(arg, type) and issubclass(arg, BaseModel) and "type" in arg.model_fields:
            members[typing.get_args(arg.model_fields["type"].annotation)[0]] = arg
    return members


def _resolve(loc: Loc) -> tuple[Loc, Any, Any]:
    """Pydantic loc -> (path in the file, model holding the last part, type at the path)."""
    tp: Any = Config
    parent: Any = None
    path: list[Any] = []
    for part in loc:
        tp = _strip_optional(tp)
        if part == "[key]":
            continue
        members = _tagged_members(tp)
        if isinstance(part, str) and part in members:
            tp = members[part]  # a union tag pydantic adds to loc; not in the file
            continue
        is_model = isinstance(tp, type) and issubclass(tp, BaseModel)
        parent = tp if is_model else None
        path.append(part)
        if is_model:
            info = tp.model_fields.get(part)
            tp = info.annotation if info else None
        elif typing.get_origin(tp) in (dict, list):
            tp = typing.get_args(tp)[-1]
        else:
            tp = None
    return tuple(path), parent, _strip_optional(tp)


def _message(err: Mapping[str, Any], parent: Any, tp: Any) -> str:
    """Pydantic's wording -> an admin's."""
    kind, ctx, field_name = err["type"], err.get("ctx") or {}, err["loc"][-1] if err["loc"] else ""
    if kind == "missing":
        return "required"
    if kind == "extra_forbidden":
        if isinstance(field_name, str) and SECRET_KEY_RE.match(field_name):
            return SECRET_HINT
        allowed = ", ".join(parent.model_fields) if parent is not None else "?"
        return f"unknown field (allowed: {allowed})"
    simple: dict[str, Callable[[], str]] = {
        "greater_than_equal": lambda: f"must be at least {ctx.get('ge')}",
        "greater_than": lambda: f"must be greater than {ctx.get('gt')}",
        "less_than_equal": lambda: f"must be at most {ctx.get('le')}",
        "less_than": lambda: f"must be less than {ctx.get('lt')}",
        # What was given is never quoted back: it may be a secret pasted into the wrong field.
        "literal_error": lambda: f"must be {ctx.get('expected')}",
        "union_tag_invalid": lambda: f"type must be {ctx.get('expected_tags')}",
        "union_tag_not_found": lambda: (
            f"type is required (one of: {', '.join(_tagged_members(tp)) or '?'})"
        ),
        "model_type": lambda: "must be a mapping of fields",
        "model_attributes_type": lambda: "must be a mapping of fields",
        "dict_type": lambda: "must be a mapping",
        "list_type": lambda: "must be a list",
    }
    if kind == "string_type" and isinstance(err["input"], bool):
        return "must be text: quote it (YAML reads unquoted yes/no/on/off as true/false)"
    if kind in simple:
        return simple[kind]()
    msg = str(err["msg"]).removeprefix("Value error, ")
    return msg.replace("Input should be", "must be", 1)


def _schema_problems(data: Any, doc: _Doc) -> tuple[Config | None, list[tuple[int, Loc, str]]]:
    try:
        config = Config.model_validate(data, context={_REFS_CHECKED: True})
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False):
            path, parent, tp = _resolve(tuple(err["loc"]))
            problems.append((doc.line(path), path, _message(err, parent, tp)))
        return None, problems
    return config, []


def _secret_problems(doc: _Doc) -> list[tuple[int, Loc, str]]:
    """Secret-looking keys anywhere, except names chosen by the admin and JSON schemas."""
    found = []
    for loc, line in doc.lines.items():
        key = loc[-1]
        if not isinstance(key, str) or loc in doc.items:
            continue
        named = len(loc) == 2 and loc[0] in ("numbers", "profiles")
        if named or (len(loc) == 3 and loc[:2] == ("qa", "scorecards")):
            continue  # a phone number, profile or scorecard name, not a field
        if any(loc[i] == "parameters" and loc[i - 2] == "functions" for i in range(2, len(loc))):
            continue  # function arguments described in JSON schema
        if SECRET_KEY_RE.match(key):
            found.append((line, loc, SECRET_HINT))
    return found


def _problems(data: Any, doc: _Doc) -> tuple[Config | None, list[tuple[int, Loc, str]]]:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        return None, [(1, (), "the top level must be a mapping with numbers and profiles")]
    config, problems = _schema_problems(data, doc)
    problems += [(doc.line(loc), loc, msg) for loc, msg in _reference_errors(data)]
    problems += _secret_problems(doc) + doc.problems
    return (config if not problems else None), problems


def load_config(path: str | Path) -> Config:
    """Load and validate; raises ConfigError listing every problem, in file order."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{source}: cannot read: {exc}"]) from None
    return parse_config_text(text, source)


def parse_config_text(text: str, source: str = "<text>") -> Config:
    """`load_config` for YAML already in memory; errors name `source` as the file."""
    if _flow_depth_exceeded(text):
        raise ConfigError([f"{source}:1: YAML error: nested too deeply"])
    try:
        data, doc = _parse(text)
    except yaml.YAMLError as exc:
        raise ConfigError([_yaml_error(source, text, exc)]) from None
    except RecursionError:  # PyYAML composes nested collections recursively
        raise ConfigError([f"{source}:1: YAML error: nested too deeply"]) from None
    except (ValueError, OverflowError, LookupError, AttributeError, TypeError) as exc:
        # PyYAML's constructors fail like this on some values: 2001-13-45, a 5000-digit int,
        # `!!int ""` (IndexError), `!!bool x` (KeyError), `!!timestamp x` (AttributeError).
        why = type(exc).__name__  # not the exception's text: it quotes the value
        raise ConfigError([f"{source}:1: YAML error: cannot read a value ({why})"]) from None
    config, problems = _problems(data, doc)
    if config is None:
        lines = []
        for line, loc, msg in sorted(problems, key=lambda p: p[0]):
            where = f"{doc.dotted(loc)}: " if loc else ""
            lines.append(f"{source}:{line}: {where}{msg}")
        raise ConfigError(list(dict.fromkeys(lines)))  # a secret key is also an unknown field
    return config


def summary(config: Config, env: Mapping[str, str] | None = None) -> str:
    """What the file routes where, for `telephony config check`; with `env`, the key
    variables the file names that it does not set (a warning: the check may run elsewhere)."""
    out = [
        f"  {number} -> {name} ({config.profiles[name].mode})"
        for number, name in config.numbers.items()
    ]
    keys: dict[str, list[str]] = {}  # LLM key variable -> the backends reading it
    for name, profile in config.profiles.items():
        if hours := profile.business_hours:
            out.append(f"  {name}: after hours ({hours.timezone}) -> {hours.after_hours_profile}")
        if profile.mode == "transcribe" and (t := profile.transcribe) is not None:
            target = t.dial or f"queue {t.queue}"
            model = t.listen_model
            out.append(f"  {name}: forwarded to {target}, both sides transcribed ({model})")
        if profile.transcribe_after_transfer:
            out.append(f"  {name}: transfers to {profile.transfer_number} stay transcribed")
        if profile.mode == "flux" and profile.flux.model == "flux-general-multi":
            spoken = [dm.voice_language(profile.voice), *profile.voices]
            hints = ", ".join(profile.flux.language_hints) or "none"
            out.append(f"  {name}: answers in {', '.join(spoken)} (Flux hints: {hints})")
        if isinstance(profile.responder, LLMResponderConfig):
            backends = profile.responder.backends()
            if len(backends) > 1:
                chain = " -> ".join(b.name for b in backends)
                out.append(f"  {name}: LLM {chain}, each answering a turn the one before failed")
            for i, backend in enumerate(backends):
                which = "responder" if i == 0 else f"responder.fallbacks[{i - 1}]"
                keys.setdefault(backend.api_key_env, []).append(f"{name}.{which}")
        if (w := profile.whisper) is not None:
            how = "the LLM, else the template" if w.whisper_source == "llm" else "the template"
            out.append(f"  {name}: warm transfers to {w.number}: a whisper from {how}")
    if config.qa.tags or config.qa.scorecards:
        cards = ", ".join(config.qa.scorecards) or "none"
        out.append(f"call review: {len(config.qa.tags)} tags; scorecards: {cards}")
    if config.default_profile:
        out.append(f"default profile: {config.default_profile}")
    else:
        out.append(f"unknown numbers: refused ({config.unknown_number_message!r})")
    if keys:
        out.append(f"environment variables read: {', '.join(sorted(keys))}")
    for var, readers in sorted(keys.items()):
        if env is not None and not env.get(var):
            out.append(f"warning: {var} is not set here (the LLM key of {', '.join(readers)})")
    return "\n".join(out)


def check(path: str | Path, env: Mapping[str, str] | None = None) -> tuple[bool, str]:
    """(ok, text): a summary when the file is valid, else every error, one per line. With
    `env` (the CLI passes the process environment), unset key variables are warned about."""
    try:
        config = load_config(path)
    except ConfigError as exc:
        return False, "\n".join(exc.errors)
    head = f"{path}: OK: {len(config.numbers)} numbers, {len(config.profiles)} profiles"
    return True, f"{head}\n{summary(config, env)}"
