"""The dependency direction, checked: routes -> session -> engines -> deepgram/twilio/audio.

Every `import` in telephony/ and routes/ (function-level ones included) is read with `ast`, and
each rule below names who may not import whom. A new module is covered without listing it.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# The composition root: the only modules that build the app from its parts.
COMPOSITION_ROOT = {
    "telephony.cli",
    "telephony.cli_serve",
    "telephony.demo",
    "telephony.bench",
    "telephony.bench_process",
    "telephony.bench_report",
    "telephony.inprocess",
}
# Below the session: they know nothing of calls, routes or the process around them.
BELOW_SESSION = (
    "telephony.deepgram",
    "telephony.twilio",
    "telephony.audio",
    "telephony.responder",
    "telephony.config",
    "telephony.store",
    "telephony.transcript",
    "telephony.outcome",
    "telephony.actions",
    "telephony.retry",
    "telephony.window",
    "telephony.metrics",
    "telephony.http_pool",
    "telephony.http_backend",
    "telephony.client_frames",
    "telephony.settings",
    "telephony.logs",
    "telephony.live",
)
# The engines: they run a call's upstream links; the call, its serving and the factory that
# picks an engine sit above them.
ENGINES = (
    "telephony.session.engine",
    "telephony.session.flux_engine",
    "telephony.session.flux_replies",
    "telephony.session.agent_engine",
    "telephony.session.transcribe_engine",
    "telephony.session.link",
    "telephony.session.upstream",
    "telephony.session.speech",
    "telephony.session.fallback",
    "telephony.session.tasks",
    "telephony.session.sentences",
    "telephony.session.idle",
    "telephony.session.barge_in",
    "telephony.session.language",
)
ABOVE_ENGINES = (
    "telephony.session.call",
    "telephony.session.serve",
    "telephony.session.engines",
    "telephony.session.handshake",
    "telephony.session.registry",
    "telephony.session.services",
    "telephony.session.phrases",
)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name.split(".")[0] in ("telephony", "routes")}


def graph() -> dict[str, set[str]]:
    files = [*ROOT.joinpath("telephony").rglob("*.py"), *ROOT.joinpath("routes").rglob("*.py")]
    return {module_name(path): imports_of(path) for path in files}


def within(name: str, packages: tuple[str, ...] | set[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def violations(rule: str, importers: tuple[str, ...], forbidden: tuple[str, ...]) -> list[str]:
    return [
        f"{rule}: {module} imports {target}"
        for module, targets in graph().items()
        if within(module, importers)
        for target in sorted(targets)
        if within(target, forbidden)
    ]


def test_only_the_composition_root_imports_routes() -> None:
    bad = [
        f"{module} imports {target}"
        for module, targets in graph().items()
        if not within(module, ("routes",)) and module not in COMPOSITION_ROOT
        for target in sorted(targets)
        if within(target, ("routes",))
    ]
    assert bad == []


def test_nothing_below_the_session_imports_it() -> None:
    above = ("telephony.session", "telephony.drain", "routes", *COMPOSITION_ROOT)
    assert violations("below the session", BELOW_SESSION, above) == []


def test_engines_do_not_import_the_call_around_them() -> None:
    assert violations("engine", ENGINES, ABOVE_ENGINES) == []


def test_wire_clients_know_nothing_of_config_store_or_replies() -> None:
    forbidden = ("telephony.config", "telephony.store", "telephony.responder", "telephony.metrics")
    clients = ("telephony.deepgram", "telephony.twilio", "telephony.audio")
    assert violations("wire client", clients, forbidden) == []


def test_production_code_never_imports_the_fakes() -> None:
    production = ("routes", "telephony.session", "telephony.drain", *BELOW_SESSION)
    assert violations("production", production, ("telephony.sim",)) == []


def test_the_checker_sees_imports() -> None:
    # A rule that cannot fail is no rule: the graph must contain known edges.
    edges = graph()
    assert "telephony.deepgram.socket" in edges["telephony.deepgram.flux"]
    assert any(t.startswith("routes") for t in edges["telephony.cli_serve"])
    assert violations("demo", ("telephony.demo",), ("routes",)) != []
