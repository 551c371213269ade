"""QA for supervisors: notes, tags, scorecards and "reviewed" on a call, and the review queue.

Plain HTML forms, each a CSRF-checked POST (`posted_form`) that redirects back to the call's QA
panel with what happened. Staff read everything and write notes; a note is edited or deleted by
its author or a supervisor; tags, scores and "reviewed" are for supervisors (and admins).
Tags and scorecards come from the YAML as it is now (`qa:`), so a reload applies at once; a
tag no longer in the YAML stays on the calls that have it (shown, not addable).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from routes.auth import User, forbidden, posted_form, require
from routes.state import services_of
from routes.templates import render
from telephony.store.qa_errors import NotAllowed, QAError
from telephony.store.qa_notes import add_note, delete_note, edit_note, notes_of
from telephony.store.qa_scores import save_score, scores_of
from telephony.store.qa_tags import add_tag, remove_tag, tags_of
from telephony.store.queries import profiles_seen
from telephony.store.review_queue import flags_for, mark_reviewed, queue, review_of
from telephony.store.review_rules import RULES

QUEUE_PAGE = 50
QA_FILTER_KEYS = ("tag", "scorer", "min_score", "max_score", "result", "unreviewed")


def _score(value: str, label: str, errors: list[str]) -> float | None:
    if not value:
        return None
    try:
        n = float(value)
    except ValueError:
        n = -1.0
    if not 0 <= n <= 100:
        errors.append(f"{label}: a score from 0 to 100")
        return None
    return n


def parse_qa_filters(params: Any, errors: list[str]) -> tuple[dict[str, str], dict[str, Any]]:
    """The calls list's QA filters: (the form's echo, CallFilter fields); problems to `errors`."""
    form = {k: params.get(k, "").strip()[:128] for k in QA_FILTER_KEYS}
    fields = {
        "tag": form["tag"],
        "scorer": form["scorer"],
        "min_score": _score(form["min_score"], "minimum score", errors),
        "max_score": _score(form["max_score"], "maximum score", errors),
        "passed": {"pass": True, "fail": False}.get(form["result"]),
        "unreviewed": form["unreviewed"] == "yes",
    }
    return form, fields


def _back(sid: str, message: str, *, error: bool = False, anchor: str = "qa") -> Response:
    query = urlencode({"qa_error" if error else "qa_done": message})
    return RedirectResponse(f"/calls/{sid}?{query}#{anchor}", status_code=303)


def _changed(request: Request, sid: str, what: str) -> None:
    """Live views of the call (another supervisor's page, the review queue) hear of it."""
    services_of(request.app).live.publish("qa", sid, what=what, by=request.state.user.name)


def _turn(value: str) -> int | None:
    if not value:
        return None
    if not value.isdigit() or len(value) > 9:
        raise QAError("turn: not a turn number")
    return int(value)


async def qa_context(request: Request, call: dict[str, Any]) -> dict[str, Any]:
    """What the call page's QA panel and the timeline's note controls show."""
    db = services_of(request.app).db
    qa = services_of(request.app).config.current.qa
    sid = call["sid"]
    notes = await notes_of(db, sid)
    tags = await tags_of(db, sid)
    have = {t["tag"] for t in tags}
    scores = await scores_of(db, sid)
    cards = qa.scorecards_for(call.get("profile") or "")
    user: User = request.state.user
    mine = {s["scorecard"]: s for s in scores if s["scorer"] == user.name}
    by_turn: dict[int, list[dict[str, Any]]] = {}
    for n in notes:
        if n["turn_idx"] is not None:
            by_turn.setdefault(n["turn_idx"], []).append(n)
    return {
        "call_notes": [n for n in notes if n["turn_idx"] is None],
        "turn_notes": by_turn,
        "tags": [{**t, "configured": t["tag"] in qa.tags} for t in tags],
        "addable_tags": [t for t in qa.tags if t not in have],
        "scorecards": cards,
        "scores": scores,
        "my_scores": mine,
        "flags": await flags_for(db, sid),
        "review": await review_of(db, sid),
        "rules": RULES,
        "done": request.query_params.get("qa_done", "")[:200],
        "error": request.query_params.get("qa_error", "")[:200],
    }


@require("staff")
async def note_add(request: Request) -> Response:
    form = await posted_form(request)
    if isinstance(form, Response):
        return form
    sid = request.path_params["sid"]
    try:
        turn = _turn(form.get("turn", ""))
        await add_note(services_of(request.app).db, sid, request.state.user.name,
                       form.get("text", ""), turn)  # fmt: skip
    except QAError as exc:
        return _back(sid, str(exc), error=True)
    _changed(request, sid, "note")
    return _back(sid, "note added", anchor=f"turn-{turn}" if turn is not None else "qa")


@require("staff")
async def note_change(request: Request) -> Response:
    """`action` edit (with `text`) or delete; the author's own note, or any for a supervisor."""
    form = await posted_form(request)
    if isinstance(form, Response):
        return form
    sid, user = request.path_params["sid"], request.state.user
    db, note_id = services_of(request.app).db, int(request.path_params["note"])
    others = user.is_supervisor
    try:
        if form.get("action") == "delete":
            sid = await delete_note(db, note_id, user.name, may_change_others=others)
            _changed(request, sid, "note")
            return _back(sid, "note deleted")
        text = form.get("text", "")
        sid = await edit_note(db, note_id, user.name, text, may_change_others=others)
    except NotAllowed as exc:
        return forbidden(request, user, str(exc).capitalize() + ".")
    except QAError as exc:
        return _back(sid, str(exc), error=True)
    _changed(request, sid, "note")
    return _back(sid, "note saved")


@require("supervisor")
async def tag_change(request: Request) -> Response:
    form = await posted_form(request)
    if isinstance(form, Response):
        return form
    sid, actor = request.path_params["sid"], request.state.user.name
    services = services_of(request.app)
    tag = form.get("tag", "")
    try:
        if form.get("action") == "remove":
            await remove_tag(services.db, sid, tag, actor)
            _changed(request, sid, "tag")
            return _back(sid, f"tag {tag} removed")
        await add_tag(services.db, sid, tag, actor, services.config.current.qa.tags)
    except QAError as exc:
        return _back(sid, str(exc), error=True)
    _changed(request, sid, "tag")
    return _back(sid, f"tag {tag} added")


@require("supervisor")
async def score(request: Request) -> Response:
    """`scorecard` and one checkbox `c.<criterion id>` per criterion met."""
    form = await posted_form(request)
    if isinstance(form, Response):
        return form
    sid, actor = request.path_params["sid"], request.state.user.name
    services = services_of(request.app)
    name = form.get("scorecard", "")
    card = services.config.current.qa.scorecards.get(name)
    if card is None:
        return _back(sid, "no such scorecard (the configuration may have changed)", error=True)
    answers = {k[2:]: v == "on" for k, v in form.items() if k.startswith("c.")}
    try:
        row = await save_score(services.db, sid, name, card, answers, actor)
    except QAError as exc:
        return _back(sid, str(exc), error=True)
    _changed(request, sid, "score")
    verdict = "pass" if row["passed"] else "fail"
    return _back(sid, f"{name}: {row['score']:g} / 100, {verdict}")


@require("supervisor")
async def reviewed(request: Request) -> Response:
    form = await posted_form(request)
    if isinstance(form, Response):
        return form
    sid = request.path_params["sid"]
    try:
        cleared = await mark_reviewed(services_of(request.app).db, sid, request.state.user.name)
    except QAError as exc:
        return _back(sid, str(exc), error=True)
    _changed(request, sid, "reviewed")
    what = f" ({', '.join(RULES.get(r, r) for r in cleared)} cleared)" if cleared else ""
    return _back(sid, "marked reviewed" + what)


@require("staff")
async def review_page(request: Request) -> Response:
    """Flagged calls nobody has reviewed since, newest first, with their reasons."""
    params = request.query_params
    rule = params.get("rule", "") if params.get("rule", "") in RULES else ""
    profile = params.get("profile", "")[:64]
    page = int(p) if (p := params.get("page", "1")).isdigit() and 0 < int(p) < 100_000 else 1
    db = services_of(request.app).db
    rows, total = await queue(db, rule=rule, profile=profile, limit=QUEUE_PAGE,
                              offset=(page - 1) * QUEUE_PAGE)  # fmt: skip
    context = {
        "rows": rows,
        "total": total,
        "rules": RULES,
        "rule": rule,
        "profile": profile,
        "profiles": await profiles_seen(db),
        "page": page,
        "pages": max(1, -(-total // QUEUE_PAGE)),
    }
    return render(request, "review.html", context)


routes = [
    Route("/review", review_page),
    Route("/calls/{sid}/notes", note_add, methods=["POST"]),
    Route("/calls/{sid}/notes/{note:int}", note_change, methods=["POST"]),
    Route("/calls/{sid}/tags", tag_change, methods=["POST"]),
    Route("/calls/{sid}/score", score, methods=["POST"]),
    Route("/calls/{sid}/reviewed", reviewed, methods=["POST"]),
]
