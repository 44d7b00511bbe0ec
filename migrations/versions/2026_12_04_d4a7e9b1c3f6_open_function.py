"""PostgreSQL: earmark_open(openings), which opens several calls in one statement (one
commit, each budget's counter locked and held once for all of them).

Each opening: the row's columns, the hold, and the start of each kind of period at its
time. Every budget on each call's path is held, counters locked in (budget, period)
order as every reservation and settlement locks them; if one has no room for the whole
batch (or this period has no counter yet) the statement ends itself with
earmark_no_room(), undoing all of it, and each call is opened again on its own, the long
way if it must. Budgets are looked up call by call, by key and by tenant, as the
one-call statement did: a plan over the whole array, made for an array of unknown
length, could scan them.

Revision ID: d4a7e9b1c3f6
Revises: 6c1e8f3a2d95
Create Date: 2026-12-04 20:30:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "d4a7e9b1c3f6"
down_revision: str | None = "6c1e8f3a2d95"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The ledger columns an opening writes (ledger._ROW_COLUMNS).
ROW = """
    id, key_id, tenant_id, endpoint, model_requested, response_format, stream,
    upload_bytes, probed_audio_ms, expected_nanos, hold_nanos, attempts, cost_nanos,
    status, provider, model, http_status, error_code, latency_ms, created_at,
    completed_at
"""

OPEN = f"""
CREATE OR REPLACE FUNCTION earmark_open(openings jsonb) RETURNS integer
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    o record;
    b record;
    counter record;
    hold_calls varchar[] := '{{}}';
    hold_budgets varchar[] := '{{}}';
    hold_periods timestamptz[] := '{{}}';
    hold_amounts bigint[] := '{{}}';
BEGIN
    FOR o IN
        SELECT * FROM jsonb_to_recordset(openings) AS given(
            id varchar, key_id varchar, tenant_id varchar, hold_nanos bigint,
            day_start timestamptz, week_start timestamptz, month_start timestamptz,
            none_start timestamptz
        )
    LOOP
        FOR b IN
            SELECT budgets.id, CASE budgets.period
                WHEN 'day' THEN o.day_start WHEN 'week' THEN o.week_start
                WHEN 'month' THEN o.month_start WHEN 'none' THEN o.none_start
            END AS period_start
            FROM budgets
            WHERE budgets.deleted_at IS NULL
                AND (budgets.key_id = o.key_id OR budgets.tenant_id = o.tenant_id)
        LOOP
            hold_calls := hold_calls || o.id;
            hold_budgets := hold_budgets || b.id;
            hold_periods := hold_periods || b.period_start;
            hold_amounts := hold_amounts || o.hold_nanos;
        END LOOP;
    END LOOP;
    FOR counter IN
        SELECT budget_id, period_start, sum(amount) AS amount
        FROM unnest(hold_budgets, hold_periods, hold_amounts) AS h(budget_id, period_start, amount)
        GROUP BY budget_id, period_start
        ORDER BY budget_id, period_start
    LOOP
        UPDATE budget_counters SET held_nanos = budget_counters.held_nanos + counter.amount
        FROM budgets
        WHERE budget_counters.budget_id = counter.budget_id
            AND budget_counters.period_start = counter.period_start
            AND budgets.id = counter.budget_id
            AND budget_counters.spent_nanos + budget_counters.held_nanos + counter.amount
                <= budgets.limit_nanos + budget_counters.top_up_nanos;
        IF NOT FOUND THEN
            PERFORM earmark_no_room();
        END IF;
    END LOOP;
    INSERT INTO ledger ({ROW})
    SELECT {ROW} FROM jsonb_populate_recordset(NULL::ledger, openings);
    INSERT INTO ledger_holds (ledger_id, budget_id, period_start, amount_nanos)
    SELECT * FROM unnest(hold_calls, hold_budgets, hold_periods, hold_amounts);
    RETURN jsonb_array_length(openings);
END
$$
"""  # noqa: S608 (only this module's constants are formatted in)


def upgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        op.execute(OPEN)


def downgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS earmark_open(jsonb)")
