"""The same chat, CRUD and cleanup tests on PostgreSQL: the SQL must stay portable."""

from __future__ import annotations

import pytest
from peewee import PostgresqlDatabase

from qwenproxy import create_app
from tests.conftest import app_config
from tests.helpers import AppMaker

# Imported tests run again here, with this module's `app` fixture (PostgreSQL).
from tests.http.test_accounts_2026 import (  # noqa: F401
    clock,
    test_two_gateways_on_one_database_refresh_once,
    test_walls_in_a_row_make_an_account_need_a_human,
)
from tests.http.test_chats import (  # noqa: F401
    test_cleanup_filters_and_max_chats,
    test_cleanup_requires_a_filter_or_all,
    test_crud,
    test_history_of_a_real_conversation,
)
from tests.http.test_conversations import (  # noqa: F401
    sdk,
    test_a_resent_history_continues_the_same_upstream_chat,
    test_an_edited_turn_branches_from_the_last_matching_answer,
)
from tests.http.test_media import (  # noqa: F401
    test_polls_back_off_and_any_worker_answers,
)
from tests.http.test_rotation_shared import (  # noqa: F401
    pools,
    test_another_worker_sees_usage_when_a_turn_ends,
    test_one_worker_takes_the_accounts_in_strict_turn_without_writing,
    test_states_are_shared_at_once,
)
from tests.http.test_routes import (  # noqa: F401
    test_completion_stream_chunks_match_openai_schema,
    test_truncated_stream_reports_in_band_and_keeps_partial,
    test_two_turns_continue_the_upstream_conversation,
)
from tests.http.test_statements import (  # noqa: F401
    bound,
    test_create_fills_the_defaults_and_reads_back_as_peewee_wrote_it,
    test_insert_returns_the_generated_key_and_converts_values,
    test_update_by_key_counts_rows_and_keeps_one_statement_per_column_set,
    test_writes_join_the_callers_transaction,
)
from tests.postgres import PostgresServer


@pytest.fixture(scope="module")
def postgres():
    try:
        server = PostgresServer()
    except (FileNotFoundError, OSError) as exc:
        pytest.skip(f"no PostgreSQL server here: {exc}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def app(tmp_path, fake_qwen, postgres):
    application = create_app(app_config(tmp_path, fake_qwen, DATABASE_URL=postgres.new_database()))
    yield application
    application.extensions["providers"].close()


@pytest.fixture
def database_url(postgres) -> str:
    """The video tasks' two workers, the rotation's two pools: on one PostgreSQL database."""
    return postgres.new_database()


@pytest.fixture
def make_app(tmp_path, fake_qwen, clock, postgres):  # noqa: F811 - the imported fixture
    """Apps on one PostgreSQL database (the accounts tests: several gateways, one registry)."""
    apps = AppMaker(tmp_path, fake_qwen, clock, QWEN_TOKEN="", DATABASE_URL=postgres.new_database())
    yield apps
    apps.close()


def test_migrations_are_recorded_and_idempotent(app) -> None:
    from qwenproxy import db

    assert db.upgrade() == []  # everything already applied at start
    with db.session():
        names = [r[0] for r in db.database.execute_sql("SELECT name FROM migration_history ORDER BY name")]
    assert names[0] == "0001_initial"
    assert isinstance(db.database.obj, PostgresqlDatabase)
