"""The tables. The database is the source of truth; the rules engine holds nothing."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    ColumnElement,
    Index,
    Table,
    Text,
    UniqueConstraint,
    false,
    or_,
    select,
    text,
)
from sqlmodel import Field, SQLModel

from engine.status import ActionStatus, EnrollmentStatus, OutboxStatus
from engine.timeutil import utcnow


class Lead(SQLModel, table=True):
    __tablename__ = "lead"
    __table_args__ = (
        # Leads per stage and stuck leads (pipeline report) read this index alone.
        Index("ix_lead_stage_entered", "stage", "stage_entered_at"),
        # An account's leads and their scores (account aggregates, `nurture accounts`).
        Index("ix_lead_account", "account_domain", "score"),
        # The leads a time evaluation is due for (`nurture tick`), from the index alone.
        Index("ix_lead_time_due", "time_due_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    email: str = Field(max_length=320, unique=True)
    attributes: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    score: int = Field(default=0, index=True)
    temperature: str = Field(max_length=32, index=True)
    stage: str = Field(max_length=64)
    stage_entered_at: datetime
    tags: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    subscribed: bool = True
    # Bumped by every write; a write that finds another version lost a race and is retried.
    version: int = 0
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    # The account key (see engine.rules.account.account_domain); None: no account (free mail).
    account_domain: str | None = Field(default=None, max_length=255)
    # When the lead's time-dependent inputs next change (a `days_since` threshold, an event
    # leaving a window, decay): the scheduler evaluates it then. None: never by the clock alone.
    time_due_at: datetime | None = None
    # The ruleset version the stored scores are under (None: scored before versions were
    # tracked). A lead under another version than the one in force is replayed before use.
    ruleset_version: str | None = Field(default=None, max_length=64)


class LeadNamedScore(SQLModel, table=True):
    """One named score (``scores:`` in the ruleset) of one lead: its total and band."""

    __tablename__ = "lead_named_score"
    # Leads in a band (`nurture leads --band health=at_risk`) and each score's distribution.
    __table_args__ = (Index("ix_lead_named_score_band", "name", "band"),)

    lead_id: int = Field(foreign_key="lead.id", primary_key=True)
    name: str = Field(max_length=64, primary_key=True)
    total: int
    band: str = Field(max_length=32)


class LeadScore(SQLModel, table=True):
    """One score component of one lead, with what decay needs to age it set-based."""

    __tablename__ = "lead_score"

    lead_id: int = Field(foreign_key="lead.id", primary_key=True)
    component: str = Field(max_length=64, primary_key=True)
    value: int = 0
    # When the component last rose (epoch seconds: portable arithmetic in decay SQL).
    rose_at: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    peak: int = 0  # value right after that rise; half-life decays from it
    decay_steps: int = 0  # whole `every` periods already taken off since that rise


class EventRecord(SQLModel, table=True):
    __tablename__ = "event"
    __table_args__ = (
        Index("ix_event_lead_type_time", "lead_id", "type", "occurred_at"),
        # The dashboard's campaign figures read only the events that name an email or campaign.
        Index(
            "ix_event_feedback",
            "type",
            "campaign",
            "outbox_id",
            "lead_id",
            sqlite_where=text("outbox_id IS NOT NULL OR campaign IS NOT NULL"),
            postgresql_where=text("outbox_id IS NOT NULL OR campaign IS NOT NULL"),
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    event_id: str = Field(max_length=200, unique=True)
    lead_id: int = Field(foreign_key="lead.id")
    type: str = Field(max_length=64)
    occurred_at: datetime
    properties: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    received_at: datetime = Field(default_factory=utcnow)
    # The profile attributes the record set (what replaying it needs); None when it set none.
    attributes: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    # Feedback about an email (SendGrid's webhook, the unsubscribe link): the outbox row and
    # the campaign its properties name, as columns (engine.ingest.feedback).
    outbox_id: int | None = Field(default=None)
    campaign: str | None = Field(default=None, max_length=200)


class LedgerEntry(SQLModel, table=True):
    """One score change. A lead's ledger sums to its score."""

    __tablename__ = "score_ledger"

    id: int | None = Field(default=None, primary_key=True)
    lead_id: int = Field(foreign_key="lead.id", index=True)
    component: str = Field(max_length=64)
    delta: int
    score_after: int  # the lead's total score after this change
    rule: str = Field(max_length=200)
    ruleset_version: str = Field(max_length=64)
    event_id: str | None = Field(default=None, max_length=200)
    at: datetime


class StageHistory(SQLModel, table=True):
    __tablename__ = "stage_history"
    __table_args__ = (
        # A lead's moves in order: the pipeline report's window functions walk this index.
        Index("ix_stage_history_lead_at", "lead_id", "at", "id"),
        # Changes in a period from the index alone (the pipeline report's partial days).
        Index("ix_stage_history_at", "at", "from_stage", "to_stage", "rule"),
    )

    id: int | None = Field(default=None, primary_key=True)
    lead_id: int = Field(foreign_key="lead.id")
    from_stage: str | None = Field(default=None, max_length=64)
    to_stage: str = Field(max_length=64, index=True)
    rule: str = Field(max_length=200)
    event_id: str | None = Field(default=None, max_length=200)
    at: datetime
    # Made by a rescore (``nurture rules apply``), not by an event as it arrived.
    rescore: bool = Field(default=False, sa_column_kwargs={"server_default": false()})


class StageStay(SQLModel, table=True):
    """One stay in a stage: a ``stage_history`` row (a lead's moves ordered by time, then id)
    with what the pipeline report needs of the moves around it, kept by
    ``engine.db.rollup.record_moves``."""

    __tablename__ = "stage_stay"
    __table_args__ = (
        # Stays begun on the partial first and last days of a report's period, from the index
        # alone.
        Index(
            "ix_stage_stay_entered",
            "entered_at",
            "stage",
            "later",
            "prev_entered_at",
            "bucket",
            "seq",
        ),
        # Re-entries whose previous entry falls in the period (counted once per lead).
        Index("ix_stage_stay_reentry", "prev_entered_at", "entered_at", "stage", "later"),
        # The stays ranked around a percentile, read in order within their length bucket.
        Index("ix_stage_stay_length", "stage", "bucket", "stay", "entered_at"),
    )

    lead_id: int = Field(foreign_key="lead.id", primary_key=True)
    seq: int = Field(primary_key=True)  # the move's place in the lead's history, from 0
    stage: str = Field(max_length=64)
    entered_at: datetime
    # The stages the lead entered after this one, as stage_code bits (rank-free: the funnel's
    # order is applied when reading).
    later: int = Field(sa_column=Column(BigInteger, nullable=False))
    prev_entered_at: datetime | None = None  # the lead's previous entry into this stage
    stay: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))  # seconds
    bucket: int | None = None  # of the stay's length (engine.db.rollup.bucket)


class StageCode(SQLModel, table=True):
    """A stage name's bit in ``stage_stay.later`` and ``stage_cohort_day.reached``:
    1 << (id - 1)."""

    __tablename__ = "stage_code"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=64, unique=True)


class StageEntryDay(SQLModel, table=True):
    """Stays begun per stage and UTC day (days since 1970-01-01), by the stages entered after
    and whether the lead had been in the stage before."""

    __tablename__ = "stage_entry_day"

    stage: str = Field(max_length=64, primary_key=True)
    day: int = Field(primary_key=True)
    later: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    reentry: bool = Field(primary_key=True)
    n: int = 0


class StageLengthDay(SQLModel, table=True):
    """Ended stays per stage, UTC day begun and length bucket."""

    __tablename__ = "stage_length_day"

    stage: str = Field(max_length=64, primary_key=True)
    day: int = Field(primary_key=True)
    bucket: int = Field(primary_key=True)
    n: int = 0


class StageMoveDay(SQLModel, table=True):
    """Stage changes (a lead's first stage excluded) per UTC day, from, to and rule."""

    __tablename__ = "stage_move_day"

    day: int = Field(primary_key=True)
    from_stage: str = Field(max_length=64, primary_key=True)
    to_stage: str = Field(max_length=64, primary_key=True)
    rule: str = Field(max_length=200, primary_key=True)
    n: int = 0


class StageCohortDay(SQLModel, table=True):
    """Leads per UTC day of their first move and the stages they ever entered (bits)."""

    __tablename__ = "stage_cohort_day"

    day: int = Field(primary_key=True)
    reached: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    n: int = 0


class RuleFiring(SQLModel, table=True):
    """Every rule firing: limits count these, and alerts cite them as reasons."""

    __tablename__ = "rule_firing"
    __table_args__ = (Index("ix_rule_firing_lead_rule_at", "lead_id", "rule", "at"),)

    id: int | None = Field(default=None, primary_key=True)
    lead_id: int = Field(foreign_key="lead.id")
    rule: str = Field(max_length=200)
    event_id: str | None = Field(default=None, max_length=200)
    at: datetime


class LeadAction(SQLModel, table=True):
    """An alert, enrollment or exit a rule asked for; the scheduler acts on pending ones."""

    __tablename__ = "lead_action"
    # The alerts job polls for pending alerts every second (an index lookup when there are none)
    # and takes them in this order, a batch at a time, however long the backlog.
    __table_args__ = (Index("ix_lead_action_kind_status_at", "kind", "status", "at", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    lead_id: int = Field(foreign_key="lead.id", index=True)
    kind: str = Field(max_length=16)
    target: str = Field(max_length=200)
    rule: str = Field(max_length=200)
    event_id: str | None = Field(default=None, max_length=200)
    at: datetime
    status: str = Field(default=ActionStatus.PENDING, max_length=16)


class RulesetVersion(SQLModel, table=True):
    """Each ruleset version that passed its checks: the one in force survives a broken edit."""

    __tablename__ = "ruleset_version"
    __table_args__ = (UniqueConstraint("name", "version"),)

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=200, index=True)
    version: str = Field(max_length=64)
    path: str = Field(max_length=1000)
    source: str = Field(sa_column=Column(Text, nullable=False))
    loaded_at: datetime = Field(default_factory=utcnow)


class RulesetApply(SQLModel, table=True):
    """A ruleset version coming into force: adopted by an empty database, applied, or rolled
    back to. The latest row is the version in force for every process."""

    __tablename__ = "ruleset_apply"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=200)
    version: str = Field(max_length=64)
    source: str = Field(sa_column=Column(Text, nullable=False))
    note: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    commit: str | None = Field(default=None, max_length=64)  # git commit of the files
    kind: str = Field(max_length=16)  # adopt, apply, rollback
    applied_at: datetime
    finished_at: datetime | None = None  # when every lead was rescored
    leads_rescored: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    seconds: float | None = None


class Enrollment(SQLModel, table=True):
    """A lead in a campaign: which step comes next and when it is due. One per lead and campaign:
    a lead who leaves a campaign is not enrolled in it again."""

    __tablename__ = "enrollment"
    __table_args__ = (
        UniqueConstraint("lead_id", "campaign"),
        # The step job's order: a batch of due steps is read from it, not sorted (0012).
        Index("ix_enrollment_due", "status", "next_due_at", "id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    lead_id: int = Field(foreign_key="lead.id")
    campaign: str = Field(max_length=200)
    step: int = 0  # index of the next step to send
    status: str = Field(default=EnrollmentStatus.ACTIVE, max_length=16)
    enrolled_at: datetime
    next_due_at: datetime | None = None
    ended_at: datetime | None = None
    reason: str | None = Field(default=None, max_length=200)  # what enrolled or ended it


class OutboxMessage(SQLModel, table=True):
    """A rendered email waiting to be sent, sent, held or given up on.

    ``idempotency_key`` (``enrollment:<id>:step:<n>``) makes each step one message however many
    schedulers run; ``status``: queued → sending (claimed under a lease) → sent | failed, or
    held (render error) / suppressed (opted out, bounced, spam report) instead."""

    __tablename__ = "outbox_message"
    __table_args__ = (
        Index("ix_outbox_status_due", "status", "next_attempt_at"),
        # Alerts are claimed by kind every second, past any backlog of campaign emails.
        Index("ix_outbox_kind_status_due", "kind", "status", "next_attempt_at"),
        # Frequency caps read a lead's recent messages from this index alone; it also serves
        # every lookup by lead (no index on lead_id alone: each message would be indexed twice).
        Index("ix_outbox_lead_created", "lead_id", "created_at", "status"),
        # Only alerts' messages have an alert: campaign emails are left out of the index.
        Index(
            "ix_outbox_message_alert_id",
            "alert_id",
            sqlite_where=text("alert_id IS NOT NULL"),
            postgresql_where=text("alert_id IS NOT NULL"),
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    idempotency_key: str = Field(max_length=200, unique=True)
    kind: str = Field(default="campaign", max_length=16)
    lead_id: int = Field(foreign_key="lead.id")
    enrollment_id: int | None = Field(default=None, foreign_key="enrollment.id")
    campaign: str | None = Field(default=None, max_length=200)
    step: int | None = None
    template: str | None = Field(default=None, max_length=200)
    to_email: str = Field(max_length=320)
    from_email: str = Field(max_length=320)
    from_name: str | None = Field(default=None, max_length=200)
    # None while held: a message that failed to render has no parts, never blank ones.
    subject: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    html: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    text: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    headers: dict[str, str] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    status: str = Field(default=OutboxStatus.QUEUED, max_length=16)
    attempts: int = 0
    next_attempt_at: datetime
    lease_until: datetime | None = None
    last_error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    provider_id: str | None = Field(default=None, max_length=200)
    created_at: datetime
    sent_at: datetime | None = None
    # A sales alert's email (kind ``alert``) or webhook POST (kind ``webhook``, body in
    # ``payload``; the URL is read from the settings when sending, never stored).
    alert_id: int | None = Field(default=None, foreign_key="alert.id")
    payload: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))


class Alert(SQLModel, table=True):
    """A hot-lead alert to sales: one per ``alert: sales`` firing (``action_id`` is unique), either
    delivered (its outbox rows, by ``alert_id``, say how far) or suppressed with the reason
    (cooldown, not re-armed, stale). The snapshot is what sales was shown."""

    __tablename__ = "alert"
    __table_args__ = (
        Index("ix_alert_lead_at", "lead_id", "at"),
        Index("ix_alert_lead_target_at", "lead_id", "target", "at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    lead_id: int = Field(foreign_key="lead.id")
    action_id: int = Field(foreign_key="lead_action.id", unique=True)
    rule: str = Field(max_length=200)
    # Who it is for: `sales`, or a target of NURTURE_ALERT_TARGETS (`account-manager`).
    target: str = Field(
        default="sales", max_length=200, sa_column_kwargs={"server_default": "sales"}
    )
    event_id: str | None = Field(default=None, max_length=200)
    at: datetime  # the triggering event's time: cooldowns are measured on it
    received_at: datetime  # when that event reached us: alert latency is measured from it
    created_at: datetime
    suppressed: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    owner: str | None = Field(default=None, max_length=320)  # who the email went to
    owner_source: str | None = Field(default=None, max_length=16)  # owner, roster, sales_email
    roster_turn: int | None = Field(default=None, index=True)  # round-robin position
    score: int = 0
    temperature: str = Field(max_length=32)
    stage: str = Field(max_length=64)
    reasons: list[dict[str, Any]] = Field(
        default_factory=list, sa_column=Column(JSON, nullable=False)
    )


class DashboardSession(SQLModel, table=True):
    """A signed-in dashboard browser. Keyed by the SHA-256 of the session id (the id itself is
    only in the browser's cookie); ``credential`` fingerprints the API token it was opened with,
    so that a new token ends every session. Signing out deletes the row."""

    __tablename__ = "dashboard_session"

    id_hash: str = Field(max_length=64, primary_key=True)
    credential: str = Field(max_length=64)
    created_at: datetime
    expires_at: datetime = Field(index=True)


def _table(model: type[SQLModel]) -> Table:
    table: Table = model.__table__  # type: ignore[attr-defined]
    return table


# The tables as SQLAlchemy Core sees them: what the set-based queries and bulk writes use.
LEADS = _table(Lead)
SCORES = _table(LeadScore)
NAMED_SCORES = _table(LeadNamedScore)
EVENTS = _table(EventRecord)
LEDGER = _table(LedgerEntry)
STAGES = _table(StageHistory)
STAYS = _table(StageStay)
STAGE_CODES = _table(StageCode)
ENTRY_DAYS = _table(StageEntryDay)
LENGTH_DAYS = _table(StageLengthDay)
MOVE_DAYS = _table(StageMoveDay)
COHORT_DAYS = _table(StageCohortDay)
FIRINGS = _table(RuleFiring)
ACTIONS = _table(LeadAction)
VERSIONS = _table(RulesetVersion)
APPLIES = _table(RulesetApply)
ENROLLMENTS = _table(Enrollment)
OUTBOX = _table(OutboxMessage)
ALERTS = _table(Alert)
SESSIONS = _table(DashboardSession)


def current_ledger() -> ColumnElement[bool]:
    """Ledger rows of the version the lead's state is under (a rescore keeps the rows of earlier
    versions for audit): what every reader of "the ledger" reads. A lead scored before
    versions were tracked (``ruleset_version`` None) keeps all its rows."""
    version = select(LEADS.c.ruleset_version).where(LEADS.c.id == LEDGER.c.lead_id)
    lead_version = version.scalar_subquery()
    return or_(lead_version.is_(None), LEDGER.c.ruleset_version == lead_version)
