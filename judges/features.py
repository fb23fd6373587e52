"""Evidence the embedding teacher grades on: embedding similarities and query-term coverage.

For each (query, item) pair it measures, with MiniLM sentence embeddings (unit-norm, so the dot
product is the cosine), how close the query is to the item's title, its category path, its
product class, and to title and category together; and which of the query's content terms
appear in the item's text. The numbers are both the classifier's features and what the
rationale cites, so a grade can always be traced back to them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from judges.base import JudgeRequest
from schemas.policy import FailureMode

F64 = npt.NDArray[np.float64]

FEATURE_NAMES: tuple[str, ...] = (
    "cos_query_title",
    "cos_query_category",
    "cos_query_class",
    "cos_query_title_category",
    "query_terms_in_title",
    "query_terms_in_item",
)


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Words that carry no product intent; a query "desk for kids" is about "desk" and "kids".
_STOPWORDS = _words(
    """
    a an and the for of with in on to by at from or that this is are be as it its my our your
    set piece pcs inch ft
"""
)
_TOKEN = re.compile(r"[a-z0-9]+")


class Embedder(Protocol):
    """What the teacher needs from an embedder (judges.minilm.MiniLMEmbedder fits)."""

    @property
    def model_id(self) -> str: ...

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]: ...


@dataclass(frozen=True)
class PairText:
    """The texts of one pair the features are computed from."""

    query: str
    title: str
    category: str | None
    product_class: str | None

    @classmethod
    def from_request(cls, request: JudgeRequest) -> PairText:
        """Title, category path and product class (``attributes["product_class"]``) of the item."""
        item = request.item
        product_class = item.attributes.get("product_class")
        return cls(
            query=request.query,
            title=item.title,
            category=item.category or None,
            product_class=product_class if isinstance(product_class, str) and product_class else None,
        )


@dataclass(frozen=True)
class Evidence:
    """Measured evidence for one pair: the feature values and the query terms the item lacks."""

    values: tuple[float, ...]
    missing_terms: tuple[str, ...]
    query_terms: tuple[str, ...]

    def __getitem__(self, name: str) -> float:
        return self.values[FEATURE_NAMES.index(name)]


def terms(text: str) -> list[str]:
    """Content terms of ``text``: lower-cased alphanumeric tokens, stopwords dropped, a plural
    ``s`` removed so "beds" matches "bed" (crude, but titles are lower-cased WANDS tokens)."""
    out: list[str] = []
    for token in _TOKEN.findall(text.lower()):
        if token in _STOPWORDS:
            continue
        if len(token) > 3 and token.endswith("s") and not token.endswith("ss"):
            token = token[:-1]
        out.append(token)
    return list(dict.fromkeys(out))


def _coverage(query_terms: Sequence[str], text_terms: set[str]) -> float:
    if not query_terms:
        return 1.0  # a query of stopwords only states no term the item could miss
    return sum(term in text_terms for term in query_terms) / len(query_terms)


def _texts(pair: PairText) -> tuple[str, str, str, str]:
    # A missing category falls back to the title and a missing class to the category, so a
    # missing field repeats evidence rather than inventing a zero similarity.
    category = pair.category or pair.title
    return pair.query, pair.title, category, pair.product_class or category


def compute_evidence(embedder: Embedder, pairs: Sequence[PairText]) -> list[Evidence]:
    """Evidence for every pair; each distinct text is embedded once (one embedder call)."""
    texts = [_texts(pair) for pair in pairs]
    unique = list(dict.fromkeys(text for group in texts for text in group))
    vectors = np.asarray(embedder.embed(unique), dtype=np.float64) if unique else np.zeros((0, 1))
    if vectors.shape[0] != len(unique) or not np.all(np.isfinite(vectors)):
        raise ValueError("embedder returned a wrong-shaped or non-finite result")
    index = {text: row for row, text in enumerate(unique)}
    return [_evidence(pair, group, vectors, index) for pair, group in zip(pairs, texts, strict=True)]


def _evidence(
    pair: PairText, group: tuple[str, str, str, str], vectors: F64, index: dict[str, int]
) -> Evidence:
    query, title, category, product_class = (vectors[index[text]] for text in group)
    both = title + category
    both = both / max(float(np.linalg.norm(both)), 1e-12)
    query_terms = terms(pair.query)
    title_terms = set(terms(pair.title))
    item_terms = title_terms | set(terms(" ".join(filter(None, (pair.category, pair.product_class)))))
    values = (
        float(query @ title),
        float(query @ category),
        float(query @ product_class),
        float(query @ both),
        _coverage(query_terms, title_terms),
        _coverage(query_terms, item_terms),
    )
    missing = tuple(term for term in query_terms if term not in item_terms)
    return Evidence(
        values=tuple(round(v, 6) for v in values), missing_terms=missing, query_terms=tuple(query_terms)
    )


def feature_matrix(evidence: Sequence[Evidence]) -> F64:
    """The (n, len(FEATURE_NAMES)) feature matrix of the evidence."""
    return np.array([e.values for e in evidence], dtype=np.float64).reshape(len(evidence), len(FEATURE_NAMES))


# --------------------------------------------------------------------------- tags and rationale

# Title words that mark an accessory, part or complement rather than the product itself.
_ACCESSORY_WORDS = _words(
    """
    cover covers part parts replacement hardware kit accessory accessories bracket mount
    cushion cushions pad pads insert filter refill knob knobs handle handles hook hooks trim
"""
)
# Query terms that state an attribute (size, colour, material, count) rather than a product type.
_ATTRIBUTE_WORDS = _words(
    """
    king queen twin full xl small large big huge mini tall short wide narrow round square
    black white grey gray brown red blue green yellow pink gold silver bronze brass chrome
    wood wooden metal steel glass leather velvet linen cotton marble rustic modern vintage
    industrial farmhouse dual single double triple
"""
)

#: Evidence thresholds the failure-mode rules use; fitted values are stored in the artifact.
THRESHOLD_FEATURES: dict[str, str] = {
    "category": "cos_query_category",
    "class": "cos_query_class",
    "title": "cos_query_title",
}


def fired_detectors(evidence: Evidence, pair: PairText, thresholds: dict[str, float]) -> list[str]:
    """The failure-mode detectors (``schemas.policy.Detector``) the evidence supports, in a fixed
    order. Each is a plain reading of one piece of evidence; the policy maps them to its modes."""
    fired: list[str] = []
    related_category = evidence["cos_query_category"] >= thresholds["category"]
    right_type = evidence["cos_query_class"] >= thresholds["class"]
    if not related_category and evidence["cos_query_title"] < thresholds["title"]:
        fired.append("off_topic")
    elif related_category and not right_type:
        fired.append("type_differs")
    # The head noun of a title is its last word ("patio furniture cover"): only a head that is an
    # accessory word the query did not ask for says "accessory", not "with a handle".
    title_terms = terms(pair.title)
    if title_terms and title_terms[-1] in _ACCESSORY_WORDS and title_terms[-1] not in evidence.query_terms:
        fired.append("accessory_head")
    attribute_missing = [t for t in evidence.missing_terms if t in _ATTRIBUTE_WORDS or t.isdigit()]
    if right_type and attribute_missing:
        fired.append("attribute_term_missing")
    if [t for t in evidence.missing_terms if t not in attribute_missing]:
        fired.append("query_term_missing")
    return fired


def failure_modes(
    evidence: Evidence, pair: PairText, grade: int, modes: Sequence[FailureMode], thresholds: dict[str, float]
) -> list[str]:
    """The policy's failure modes whose ``detector`` fired and whose ``max_grade`` admits ``grade``
    (in detector order); a mode without a detector is never tagged by this teacher."""
    fired = fired_detectors(evidence, pair, thresholds)
    return [
        mode.id
        for detector in fired
        for mode in modes
        if mode.detector == detector and grade <= mode.max_grade
    ]


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _tail(path: str, parts: int = 2) -> str:
    return " / ".join(path.split(" / ")[-parts:])


def rationale(evidence: Evidence, pair: PairText, headline: str, tags: Sequence[str]) -> str:
    """One short paragraph citing the numbers behind the grade; ``headline`` states the grade."""
    parts = [
        f"{headline}: title '{_short(pair.title)}' vs query "
        f"'{_short(pair.query, 80)}' similarity {evidence['cos_query_title']:.2f}",
    ]
    if pair.category:
        parts.append(f"category '{_short(_tail(pair.category))}' {evidence['cos_query_category']:.2f}")
    if pair.product_class:
        parts.append(f"class '{_short(pair.product_class, 40)}' {evidence['cos_query_class']:.2f}")
    n_terms = len(evidence.query_terms)
    found = n_terms - len(evidence.missing_terms)
    if evidence.missing_terms:
        missing = ", ".join(f"'{t}'" for t in evidence.missing_terms[:5])
        parts.append(f"query terms found {found}/{n_terms}, missing: {missing}")
    elif n_terms:
        parts.append(f"all {n_terms} query terms found")
    if tags:
        parts.append("tags: " + ", ".join(tags))
    return "; ".join(parts)
