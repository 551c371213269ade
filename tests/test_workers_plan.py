"""What `telephony serve --workers N` gives each worker (telephony/workers.py), without starting
any: its instance name, its internal URL and port; and the database it refuses."""

from __future__ import annotations

import pytest

from telephony.cli_usage import UsageError
from telephony.settings import Settings
from telephony.workers import internal_base_port, internal_urls, needs_postgres, worker_names

PG = "postgresql+asyncpg://app@db:5432/telephony"


def settings(**env: str) -> Settings:
    return Settings.model_validate({"TELEPHONY_DATABASE_URL": PG, **env})


def test_a_set_internal_url_names_worker_0_and_the_others_follow_it() -> None:
    given = settings(TELEPHONY_INTERNAL_URL="http://10.0.3.7:9000")
    assert internal_base_port(given, 8000, None) == 9000
    assert internal_base_port(given, 8000, 19000) == 19000  # listeners mapped elsewhere
    # The URLs follow TELEPHONY_INTERNAL_URL, whatever port the listeners have.
    assert internal_urls(given, "http://ignored:1", [19000, 19001, 19002]) == [
        "http://10.0.3.7:9000",
        "http://10.0.3.7:9001",
        "http://10.0.3.7:9002",
    ]
    v6 = settings(TELEPHONY_INTERNAL_URL="https://[fd00::7]")
    assert internal_urls(v6, "", [1, 2]) == ["https://[fd00::7]:443", "https://[fd00::7]:444"]


def test_unset_the_host_address_and_the_next_ports() -> None:
    unset = settings()
    assert internal_base_port(unset, 8000, None) == 8001
    assert internal_base_port(unset, 0, None) == 0  # any free ports, as the public one
    assert internal_urls(unset, "http://10.0.3.7:8000", [8001, 8002]) == [
        "http://10.0.3.7:8001",
        "http://10.0.3.7:8002",
    ]


def test_names_come_from_the_instance_id_or_the_parent() -> None:
    assert worker_names(settings(TELEPHONY_INSTANCE_ID="app-3"), 2) == ["app-3-w0", "app-3-w1"]
    unnamed = worker_names(settings(), 3)
    assert len(set(unnamed)) == 3 and all(n.endswith(f"-w{k}") for k, n in enumerate(unnamed))
    with pytest.raises(UsageError, match="too long for --workers 10"):
        worker_names(settings(TELEPHONY_INSTANCE_ID="x" * 62), 10)


def test_sqlite_is_refused_by_name() -> None:
    needs_postgres(settings())
    with pytest.raises(UsageError, match=r"^--workers needs PostgreSQL: "):
        needs_postgres(settings(TELEPHONY_DATABASE_URL="sqlite+aiosqlite:///data/t.db"))
