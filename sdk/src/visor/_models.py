"""Typed results of the Visor API. Every model keeps the JSON it was built from in `raw`."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any


def _dt(value: Any) -> datetime | None:
    if not value or not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _opt_int(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) else None


@dataclass(frozen=True)
class Gallery:
    id: str
    name: str
    description: str
    model_version: str | None
    subject_count: int | None
    face_count: int | None
    created_at: datetime | None
    updated_at: datetime | None
    raw: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Gallery:
        return cls(
            id=data["id"],
            name=data.get("name", ""),
            description=data.get("description") or "",
            model_version=data.get("model_version"),
            subject_count=_opt_int(data.get("subject_count")),
            face_count=_opt_int(data.get("face_count")),
            created_at=_dt(data.get("created_at")),
            updated_at=_dt(data.get("updated_at")),
            raw=data,
        )


@dataclass(frozen=True)
class Subject:
    id: str
    gallery_id: str
    external_id: str
    name: str
    metadata: dict[str, Any]
    face_count: int | None
    created_at: datetime | None
    updated_at: datetime | None
    raw: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Subject:
        return cls(
            id=data["id"],
            gallery_id=data.get("gallery_id", ""),
            external_id=data.get("external_id", ""),
            name=data.get("name") or "",
            metadata=data.get("metadata") or {},
            face_count=_opt_int(data.get("face_count")),
            created_at=_dt(data.get("created_at")),
            updated_at=_dt(data.get("updated_at")),
            raw=data,
        )


@dataclass(frozen=True)
class BoundingBox:
    x: float
    y: float
    width: float
    height: float

    @classmethod
    def from_any(cls, data: Any) -> BoundingBox | None:
        if isinstance(data, dict):
            return cls(float(data["x"]), float(data["y"]), float(data["width"]), float(data["height"]))
        if isinstance(data, (list, tuple)) and len(data) == 4:
            return cls(*(float(v) for v in data))
        return None


@dataclass(frozen=True)
class Mask:
    masked: bool
    probability: float | None

    @classmethod
    def from_any(cls, data: Any) -> Mask | None:
        if not isinstance(data, dict):
            return None
        return cls(masked=bool(data.get("masked")), probability=data.get("probability"))


@dataclass(frozen=True)
class Quality:
    score: float | None
    issues: list[str]

    @classmethod
    def from_any(cls, data: Any) -> Quality | None:
        if not isinstance(data, dict):
            return None
        return cls(score=data.get("score"), issues=list(data.get("issues") or []))


@dataclass(frozen=True)
class Face:
    """An enrolled face."""

    id: str
    subject_id: str
    gallery_id: str
    bbox: BoundingBox | None
    landmarks: Any
    detection_score: float | None
    mask: Mask | None
    quality: Quality | None
    model_version: str | None
    image_stored: bool
    created_at: datetime | None
    raw: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Face:
        return cls(
            id=data["id"],
            subject_id=data.get("subject_id", ""),
            gallery_id=data.get("gallery_id", ""),
            bbox=BoundingBox.from_any(data.get("bbox")),
            landmarks=data.get("landmarks"),
            detection_score=data.get("detection_score"),
            mask=Mask.from_any(data.get("mask")),
            quality=Quality.from_any(data.get("quality")),
            model_version=data.get("model_version"),
            image_stored=bool(data.get("image_stored")),
            created_at=_dt(data.get("created_at")),
            raw=data,
        )


@dataclass(frozen=True)
class Job:
    id: str
    kind: str
    status: str
    subject_id: str | None
    result: dict[str, Any] | None
    error: dict[str, Any] | None
    created_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    raw: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)

    @property
    def done(self) -> bool:
        return self.status in ("succeeded", "failed")

    @property
    def face(self) -> Face | None:
        """The enrolled face of a succeeded enrollment job."""
        if self.result and isinstance(self.result.get("face"), dict):
            return Face.from_dict(self.result["face"])
        return None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Job:
        return cls(
            id=data["id"],
            kind=data.get("kind", ""),
            status=data.get("status", ""),
            subject_id=data.get("subject_id"),
            result=data.get("result"),
            error=data.get("error"),
            created_at=_dt(data.get("created_at")),
            started_at=_dt(data.get("started_at")),
            finished_at=_dt(data.get("finished_at")),
            raw=data,
        )


@dataclass(frozen=True)
class Match:
    subject_id: str
    external_id: str | None
    name: str | None
    similarity: float
    confidence: float | None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Match:
        return cls(
            subject_id=data["subject_id"],
            external_id=data.get("external_id"),
            name=data.get("name"),
            similarity=float(data["similarity"]),
            confidence=data.get("confidence"),
        )


@dataclass(frozen=True)
class DetectedFace:
    """A face found in a probe image (detect)."""

    bbox: BoundingBox | None
    landmarks: dict[str, list[float]]
    detection_score: float | None
    mask: Mask | None
    quality: Quality | None

    @classmethod
    def _fields(cls, data: dict[str, Any]) -> dict[str, Any]:
        return {
            "bbox": BoundingBox.from_any(data.get("bbox")),
            "landmarks": data.get("landmarks") or {},
            "detection_score": data.get("detection_score"),
            "mask": Mask.from_any(data.get("mask")),
            "quality": Quality.from_any(data.get("quality")),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DetectedFace:
        return cls(**cls._fields(data))


@dataclass(frozen=True)
class IdentifiedFace(DetectedFace):
    """A face of an identify probe: `match` is None for a stranger; `threshold` is the score `match` had to
    reach (the request's, the tenant's, or the default for the gallery's size and the face's mask)."""

    match: Match | None = None
    candidates: list[Match] = field(default_factory=list)
    threshold: float | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IdentifiedFace:
        return cls(
            **cls._fields(data),
            match=Match.from_dict(data["match"]) if data.get("match") else None,
            candidates=[Match.from_dict(c) for c in data.get("candidates") or []],
            threshold=data.get("threshold"),
        )


@dataclass(frozen=True)
class IdentifyResult:
    faces: list[IdentifiedFace]
    model: str | None
    took_ms: float | None
    raw: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)

    @property
    def matches(self) -> list[Match]:
        return [face.match for face in self.faces if face.match is not None]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IdentifyResult:
        return cls(
            faces=[IdentifiedFace.from_dict(f) for f in data.get("faces") or []],
            model=data.get("model"),
            took_ms=data.get("took_ms"),
            raw=data,
        )


@dataclass(frozen=True)
class VerifyResult:
    match: bool
    similarity: float
    confidence: float | None
    threshold: float | None
    model: str | None
    raw: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VerifyResult:
        return cls(
            match=bool(data["match"]),
            similarity=float(data["similarity"]),
            confidence=data.get("confidence"),
            threshold=data.get("threshold"),
            model=data.get("model"),
            raw=data,
        )


@dataclass(frozen=True)
class DetectResult:
    faces: list[DetectedFace]
    width: int | None
    height: int | None
    model: str | None
    took_ms: float | None
    raw: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DetectResult:
        image = data.get("image") or {}
        return cls(
            faces=[DetectedFace.from_dict(f) for f in data.get("faces") or []],
            width=_opt_int(image.get("width")),
            height=_opt_int(image.get("height")),
            model=data.get("model"),
            took_ms=data.get("took_ms"),
            raw=data,
        )


@dataclass(frozen=True)
class Tenant:
    id: str
    slug: str
    name: str
    status: str
    plan: dict[str, Any]
    settings: dict[str, Any]
    api_key: dict[str, Any]
    usage_this_month: dict[str, Any]
    raw: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Tenant:
        return cls(
            id=str(data.get("id", "")),
            slug=data.get("slug", ""),
            name=data.get("name", ""),
            status=data.get("status", ""),
            plan=data.get("plan") or {},
            settings=data.get("settings") or {},
            api_key=data.get("api_key") or {},
            usage_this_month=data.get("usage_this_month") or {},
            raw=data,
        )


@dataclass(frozen=True)
class UsageRow:
    """Units of one operation by one API key (`api_key_prefix`) in one period ("YYYY-MM-DD" or "YYYY-MM")."""

    period: str
    operation: str
    api_key_prefix: str
    units: int

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UsageRow:
        return cls(
            period=str(data.get("period", "")),
            operation=str(data.get("operation", "")),
            api_key_prefix=str(data.get("api_key_prefix") or ""),
            units=int(data.get("units") or 0),
        )


@dataclass(frozen=True)
class Usage:
    """Metered usage of the days `from_`..`to` (inclusive), per day or month, operation and API key."""

    from_: str | None
    to: str | None
    granularity: str | None
    rows: list[UsageRow]
    totals: dict[str, int]
    raw: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)

    def by_period(self) -> dict[str, dict[str, int]]:
        """{period: {operation: units}}, summed over API keys."""
        table: dict[str, dict[str, int]] = {}
        for row in self.rows:
            per_operation = table.setdefault(row.period, {})
            per_operation[row.operation] = per_operation.get(row.operation, 0) + row.units
        return table

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Usage:
        return cls(
            from_=data.get("from"),
            to=data.get("to"),
            granularity=data.get("granularity"),
            rows=[UsageRow.from_dict(row) for row in data.get("data") or [] if isinstance(row, dict)],
            totals={str(k): int(v) for k, v in (data.get("totals") or {}).items()},
            raw=data,
        )


def _money(value: Any) -> Decimal | None:
    if value is None or value == "":
        return None
    try:
        return Decimal(str(value))
    except ArithmeticError:
        return None


@dataclass(frozen=True)
class InvoiceLine:
    operation: str
    units: int
    included: int
    billable: int
    unit_price_per_1000: Decimal | None
    amount: Decimal | None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InvoiceLine:
        return cls(
            operation=str(data.get("operation", "")),
            units=int(data.get("units") or 0),
            included=int(data.get("included") or 0),
            billable=int(data.get("billable") or 0),
            unit_price_per_1000=_money(data.get("unit_price_per_1000")),
            amount=_money(data.get("amount")),
        )


@dataclass(frozen=True)
class Invoice:
    """A monthly invoice; money is Decimal (the API sends decimal strings). A `draft` is this month's."""

    id: str
    period_start: str | None
    period_end: str | None
    status: str
    currency: str | None
    plan: str | None
    lines: list[InvoiceLine]
    monthly_price: Decimal | None
    subtotal: Decimal | None
    total: Decimal | None
    finalized_at: datetime | None
    raw: dict[str, Any] = field(repr=False, compare=False, default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Invoice:
        return cls(
            id=str(data["id"]),
            period_start=data.get("period_start"),
            period_end=data.get("period_end"),
            status=str(data.get("status", "")),
            currency=data.get("currency"),
            plan=data.get("plan"),
            lines=[InvoiceLine.from_dict(line) for line in data.get("lines") or []],
            monthly_price=_money(data.get("monthly_price")),
            subtotal=_money(data.get("subtotal")),
            total=_money(data.get("total")),
            finalized_at=_dt(data.get("finalized_at")),
            raw=data,
        )
