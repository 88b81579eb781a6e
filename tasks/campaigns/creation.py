"""Creating a campaign: check the templates, import the recipients page by page, queue it.

Shared by ``POST /api/campaigns`` and the operator's upload form. Anything wrong
with the request is an :class:`~tasks.shared.errors.Invalid` raised before the
campaign becomes visible; a failed import leaves nothing behind (or, if Redis went
away mid-import, only keys that expire and are never listed); a campaign whose
start task cannot be queued is withdrawn before the error (a 503) reaches the client.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis import Redis, RedisError

from tasks.campaigns.recipients import RecipientSource, Row, check_row
from tasks.campaigns.store import CampaignStore
from tasks.campaigns.tasks import start_campaign
from tasks.delivery.engine.templating import BUILTIN_VARIABLES, CampaignTemplates, TemplateProblem
from tasks.messages.service import Upload, check_attachment_size, require_sender
from tasks.shared.attachments import ATTACHMENT_TTL, AttachmentStore
from tasks.shared.errors import Invalid
from tasks.shared.replication import replicated
from tasks.vocabulary import CampaignStatus

log = logging.getLogger(__name__)

PAGE = 1000  # recipients written to Redis per round trip
SHOWN_REJECTIONS = 20  # bad rows listed in a reply; the rest are only counted


@dataclass(frozen=True, slots=True)
class CampaignSpec:
    """What the campaign says, already validated as fields."""

    name: str
    subject: str
    body: str | None
    html: str | None
    sender: str | None
    send_at: float | None
    attachments: tuple[dict[str, Any], ...] = ()  # AttachmentRef fields, bytes already stored
    draft: bool = False  # stored as a draft: nothing is sent until it is started


@dataclass(slots=True)
class ImportReport:
    """How the recipient list was read."""

    location_name: str = "line"
    accepted: int = 0
    duplicates: int = 0
    suppressed: int = 0
    rejected: int = 0
    rejections: list[dict[str, Any]] = field(default_factory=list)

    def reject(self, row: Row, reason: str) -> None:
        self.rejected += 1
        if len(self.rejections) < SHOWN_REJECTIONS:
            self.rejections.append({self.location_name: row.location, "reason": reason})

    def public(self) -> dict[str, Any]:
        return {"accepted": self.accepted, "duplicates": self.duplicates,
                "suppressed": self.suppressed, "rejected": self.rejected,
                "rejected_rows": self.rejections}


def stored_attachments(redis: Redis, files: Sequence[Upload], *, send_at: float | None,
                       limit: int) -> tuple[dict[str, Any], ...]:
    """Each file's bytes stored, as :class:`CampaignSpec` refers to them; :class:`TooLarge`
    names one over *limit* (``MAX_ATTACHMENT_BYTES``) before any is stored."""
    for name, _, data in files:
        check_attachment_size(name, len(data), limit)
    # the bytes must outlive the wait for send_at; each batch keeps them alive after that
    ttl = ATTACHMENT_TTL + int(max(0.0, (send_at or 0.0) - time.time()))
    store = AttachmentStore(redis, ttl=ttl)
    return tuple(store.put(data, name, declared).as_fields() for name, declared, data in files)


def compile_templates(spec: CampaignSpec) -> CampaignTemplates:
    """The campaign's templates, or :class:`Invalid` naming the template that cannot be used."""
    try:
        return CampaignTemplates(spec.subject, spec.body, spec.html)
    except TemplateProblem as problem:
        raise Invalid.of(problem.field, problem.reason,
                         f"the {problem.field} template cannot be used",
                         code="invalid_template") from None


def create_campaign(store: CampaignStore, spec: CampaignSpec, source: RecipientSource, *,
                    base_url: str, default_sender: str | None,
                    special_use: Collection[str] = ()) -> tuple[str, str, ImportReport]:
    """Store the campaign and its recipients; queue or schedule it.

    *base_url* is where unsubscribe links point (``PUBLIC_URL``), *default_sender*
    ``MAIL_DEFAULT_SENDER``, *special_use* ``ALLOW_SPECIAL_USE_DOMAINS``. Returns
    ``(id, status, report)``. Raises :class:`Invalid` (and stores nothing) when
    the templates, the file or every row is unusable.
    """
    require_sender(spec.sender, default_sender)
    templates = compile_templates(spec)
    required = templates.variables
    if source.columns is not None:
        missing = sorted(required - source.columns)
        if missing:
            raise Invalid.of("file", f"no column {missing[0]!r}",
                             f"the templates use {{{{ {missing[0]} }}}} but the file has no "
                             f"{missing[0]!r} column", code="missing_column")
    campaign_id = store.begin(name=spec.name, subject=spec.subject, body=spec.body,
                              html=spec.html, sender=spec.sender, base_url=base_url,
                              attachments=spec.attachments)
    try:
        report = _import(store, campaign_id, templates, source, required, special_use)
    except BaseException:
        _discard(store, campaign_id)
        raise
    if report.accepted == 0:
        store.discard(campaign_id)
        shown = {f"{r[report.location_name]}": r["reason"] for r in report.rejections}
        what = "no recipients" if report.rejected == 0 else (
            f"no valid recipients: {report.rejected} row(s) rejected"
            + (f", the first {len(report.rejections)} listed" if report.rejected >
               len(report.rejections) else ""))
        raise Invalid(what, code="no_recipients",
                      fields={f"{report.location_name} {k}": v for k, v in shown.items()}
                      or {"recipients": "at least one recipient is needed"})
    status = store.open(campaign_id, total=report.accepted, send_at=spec.send_at,
                        report=report.public(), draft=spec.draft)
    replicated(store.redis)  # accepted: on a replica too before the API says so
    log.info("campaign %s created: %d recipient(s), %d rejected, %s", campaign_id,
             report.accepted, report.rejected, status)
    if status == CampaignStatus.QUEUED:
        try:
            start_campaign.delay(campaign_id)
        except Exception:  # not started, so not accepted: the client is told (503) and retries
            _withdraw(store, campaign_id)
            raise
    return campaign_id, status, report


def _discard(store: CampaignStore, campaign_id: str) -> None:
    """Forget a failed import; if Redis is gone, its keys expire (it was never listed)."""
    try:
        store.discard(campaign_id)
    except RedisError as err:
        log.warning("campaign %s: import failed and could not be discarded; its keys expire "
                    "within a day and it is never listed: %s", campaign_id, err)


def _withdraw(store: CampaignStore, campaign_id: str) -> None:
    """Unlist, then forget, a campaign whose start task could not be queued."""
    try:
        store.redis.zrem(store.index_key, campaign_id)
        store.discard(campaign_id)
    except RedisError as err:  # it stays queued, for the reconciler to start
        log.warning("campaign %s was not started and could not be withdrawn: %s",
                    campaign_id, err)


def _import(store: CampaignStore, campaign_id: str, templates: CampaignTemplates,
            source: RecipientSource, required: frozenset[str],
            special_use: Collection[str]) -> ImportReport:
    report = ImportReport(location_name=source.location_name)
    page: list[tuple[str, dict[str, Any]]] = []
    number = 0
    checked = False
    for row in source:
        address, reason = check_row(row, required, special_use)
        if address is None:
            report.reject(row, reason or "invalid")
            continue
        if not checked:  # one real render catches what static checks cannot
            sample = {**row.variables, "email": address,
                      **{name: "" for name in BUILTIN_VARIABLES - {"email"}}}
            try:
                templates.check(sample)
            except TemplateProblem as problem:
                raise Invalid.of(problem.field, problem.reason,
                                 f"the {problem.field} template fails for the first recipient",
                                 code="invalid_template") from None
            checked = True
        page.append((address, row.variables))
        if len(page) >= PAGE:
            number = _flush(store, campaign_id, page, number, report)
    if page:
        _flush(store, campaign_id, page, number, report)
    return report


def _flush(store: CampaignStore, campaign_id: str, page: list[tuple[str, dict[str, Any]]],
           number: int, report: ImportReport) -> int:
    following, counts = store.add_recipients(campaign_id, page, start=number)
    report.accepted += counts.added
    report.duplicates += counts.duplicates
    report.suppressed += counts.suppressed
    page.clear()
    return following
