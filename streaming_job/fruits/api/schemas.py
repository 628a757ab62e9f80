"""What the API answers: the JSON shapes, as the OpenAPI page at ``/docs`` shows them."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class Candidate(BaseModel):
    label: str
    score: float = Field(
        description="cosine similarity of the fruit's nearest reference prototype, 1 = same "
        "direction (the first candidate is the vote's winner)"
    )


class Neighbour(BaseModel):
    key: str
    label: str | None
    distance: float = Field(description="cosine distance in the similarity index's PCA space; 0 = same direction")


class Classification(BaseModel):
    label: str | None = Field(description="the fruit, or null when the photo resembles no reference photo enough")
    unknown: bool
    confidence: float = Field(
        description="the vote winner's (the first candidate's) share of the nearest reference "
        "prototypes' weighted vote, also when unknown"
    )
    similarity: float = Field(description="cosine similarity to the nearest reference prototype")
    threshold: float = Field(description="the classifier's: below it, the answer is unknown")
    candidates: list[Candidate] = Field(description="the best labels, also when unknown")
    neighbours: list[Neighbour] = Field(description="the nearest labelled rows, as evidence")
    model_id: str = Field(description="the feature model (MobileNetV2 weights) the photo was featurized with")
    classifier_version: int
    pca_version: int | None = Field(description="the neighbours' PCA space; null before the similarity index exists")


class Upload(BaseModel):
    key: str
    state: Literal["processed", "quarantined", "pending", "skipped"]
    label: str | None = Field(None, description="a reference photo's label (its folder)")
    suggested_label: str | None = Field(None, description="the classifier's answer when the row was written")
    confidence: float | None = None
    unknown: bool | None = None
    reason: str | None = Field(None, description="why it was quarantined or skipped (the pipeline's reason code)")
    ingested_at: str | None = None
    detail: str = Field(description="the same, in words")


class Similar(BaseModel):
    key: str
    neighbours: list[Neighbour]


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class Readiness(BaseModel):
    ready: bool = Field(description="the model, a classifier and the features table are loaded or found")
    model_id: str | None = None
    classifier_version: int | None = None
    pca_version: int | None = Field(
        None, description="the similarity index's; null before it exists (answers then have no neighbours)"
    )
    problems: list[str] = Field(default_factory=list, description="what is missing, and what makes it")


class ErrorDetail(BaseModel):
    code: str
    message: str


class Error(BaseModel):
    error: ErrorDetail
