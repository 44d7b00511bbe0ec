"""PostgreSQL: earmark_settle(settlements), which settles several calls in one statement
(one commit, each budget's counter locked and charged once for all of them).

Row by row, by key: a plan over the whole array is made once per connection, for an
array of unknown length and against the table's size when first prepared (a new ledger
looks empty), and it scanned the ledger.

Revision ID: 6c1e8f3a2d95
Revises: 8b4d2f6e1c07
Create Date: 2026-12-04 15:30:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "6c1e8f3a2d95"
down_revision: str | None = "8b4d2f6e1c07"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Each settlement: the call's id, the ledger columns a settlement sets, and its attempts.
# It answers the ids of the rows it settled; a row no longer open (settled, swept) is left
# as it is. The counters go last, in (budget, period) order, as a reservation locks them,
# so two batches, or a batch and a reservation, never wait on each other in a circle.
SETTLE = """
CREATE OR REPLACE FUNCTION earmark_settle(settlements jsonb) RETURNS SETOF varchar
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    s record;
    held record;
    counter record;
    hold_budgets varchar[] := '{}';
    hold_periods timestamptz[] := '{}';
    hold_amounts bigint[] := '{}';
    hold_costs bigint[] := '{}';
BEGIN
    FOR s IN
        SELECT * FROM jsonb_to_recordset(settlements) AS given(
            call_id varchar, status varchar, http_status integer, provider varchar,
            model varchar, attempts integer, usage_source varchar, cost_nanos bigint,
            review varchar, latency_ms integer, upstream_latency_ms integer,
            error_code varchar, audio_ms integer, input_text_tokens integer,
            input_audio_tokens integer, output_tokens integer, total_tokens integer,
            completed_at timestamptz, attempt_records jsonb
        )
    LOOP
        UPDATE ledger SET
            status = s.status, http_status = s.http_status, provider = s.provider,
            model = s.model, attempts = s.attempts, usage_source = s.usage_source,
            cost_nanos = s.cost_nanos, review = s.review, latency_ms = s.latency_ms,
            upstream_latency_ms = s.upstream_latency_ms, error_code = s.error_code,
            audio_ms = s.audio_ms, input_text_tokens = s.input_text_tokens,
            input_audio_tokens = s.input_audio_tokens, output_tokens = s.output_tokens,
            total_tokens = s.total_tokens, completed_at = s.completed_at
        WHERE id = s.call_id AND status IN ('reserved', 'forwarded');
        CONTINUE WHEN NOT FOUND;
        INSERT INTO upstream_attempts (
            call_id, n, provider, model, started_at, outcome, http_status, error,
            bytes_sent, latency_ms, charged_nanos
        )
        SELECT s.call_id, r.* FROM jsonb_to_recordset(s.attempt_records) AS r(
            n integer, provider varchar, model varchar, started_at timestamptz,
            outcome varchar, http_status integer, error varchar, bytes_sent bigint,
            latency_ms integer, charged_nanos bigint
        );
        FOR held IN
            SELECT budget_id, period_start, amount_nanos FROM ledger_holds
            WHERE ledger_id = s.call_id
        LOOP
            hold_budgets := hold_budgets || held.budget_id;
            hold_periods := hold_periods || held.period_start;
            hold_amounts := hold_amounts || held.amount_nanos;
            hold_costs := hold_costs || s.cost_nanos;
        END LOOP;
        RETURN NEXT s.call_id;
    END LOOP;
    FOR counter IN
        SELECT budget_id, period_start, sum(amount) AS amount, sum(cost) AS cost
        FROM unnest(hold_budgets, hold_periods, hold_amounts, hold_costs)
            AS h(budget_id, period_start, amount, cost)
        GROUP BY budget_id, period_start
        ORDER BY budget_id, period_start
    LOOP
        UPDATE budget_counters SET
            held_nanos = held_nanos - counter.amount,
            spent_nanos = spent_nanos + counter.cost
        WHERE budget_id = counter.budget_id AND period_start = counter.period_start;
    END LOOP;
END
$$
"""


def upgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        op.execute(SETTLE)


def downgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS earmark_settle(jsonb)")
