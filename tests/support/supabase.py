"""Supabase emulated on plain PostgreSQL: its roles (``anon``, ``authenticated``,
``service_role``), the ``auth`` schema and an ``auth.uid()`` that reads the JWT ``sub`` claim
as PostgREST sets it, and engines that act as one of those roles (tests/reliability/test_rls.py
and the live-workers tests use them)."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Engine, event, text

from jobqueue.drivers.engines import make_engine

ROLES = ("anon", "authenticated", "service_role")

#: Supabase's auth.uid() in spirit: the ``sub`` claim of the request's JWT, as a uuid.
EMULATED_UID = """
CREATE FUNCTION auth.uid() RETURNS uuid LANGUAGE sql STABLE AS $uid$
  SELECT nullif(coalesce(
    current_setting('request.jwt.claim.sub', true),
    current_setting('request.jwt.claims', true)::jsonb ->> 'sub'
  ), '')::uuid
$uid$
"""


def create_role(conn: Any, role: str) -> None:
    # Another session may create the same role at the same moment: both errors mean "exists".
    conn.execute(
        text(
            "DO $r$ BEGIN "
            f"IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN "
            f'CREATE ROLE "{role}" NOLOGIN; END IF; '
            "EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $r$"
        )
    )


def emulate_supabase(url: str) -> None:
    """Roles, the auth schema and auth.uid(), each only where it does not exist yet."""
    engine = make_engine(url)
    try:
        for role in ROLES:
            with engine.begin() as conn:
                create_role(conn, role)
        with engine.begin() as conn:
            conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('jobqueue-test-auth'))"))
            conn.execute(text("CREATE SCHEMA IF NOT EXISTS auth"))
            if conn.execute(text("SELECT to_regprocedure('auth.uid()')")).scalar() is None:
                conn.execute(text(EMULATED_UID))
            conn.execute(text("GRANT USAGE ON SCHEMA auth TO anon, authenticated, service_role"))
    finally:
        engine.dispose()


def engine_as(url: str, role: str, sub: str | None = None) -> Engine:
    """An engine whose every connection acts as ``role`` with a JWT for user ``sub``."""
    engine = make_engine(url)

    @event.listens_for(engine, "connect")
    def _become(dbapi_connection: Any, _record: Any) -> None:
        with dbapi_connection.cursor() as cur:
            cur.execute(f'SET ROLE "{role}"')
            if sub is not None:
                claims = json.dumps({"sub": sub, "role": role})
                cur.execute("SELECT set_config('request.jwt.claims', %s, false)", (claims,))
        dbapi_connection.commit()

    return engine
