"""Evidence the embedding teacher grades on: embedding similarities and lexical term evidence.

For each (query, item) pair it measures, with MiniLM sentence embeddings (unit-norm, so the dot
product is the cosine), how close the query is to the item's title, its category path, its
product class, and to title and category together, and how close the title is to the class.
Lexically, with inverse document frequencies from the golden set's item texts (``Lexicon``), it
measures how much of the query's weight the title, the class and the category cover, the BM25
score of the title, whether the query's head term (its last content word: "end *table*") names
the item's type, and how rare the rarest missing query term is. The numbers are both the
classifier's features and what the rationale cites, so a grade can always be traced back to them.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
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
    "idf_coverage_title",
    "idf_coverage_class",
    "idf_coverage_category",
    "bm25_title",
    "head_term_match",
    "rarest_missing_idf",
    "cos_title_class",
)
#: BM25's usual constants (Robertson & Zaragoza 2009).
BM25_K1 = 1.2
BM25_B = 0.75


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
class Lexicon:
    """Document frequencies of item terms over a corpus (the golden set's items): the IDF weights
    of the lexical evidence. Stored in the teacher artifact, so grading needs no corpus."""

    documents: int
    avg_title_terms: float
    document_frequency: Mapping[str, int]

    def idf(self, term: str) -> float:
        """Smoothed IDF, ln((N+1)/(df+1)) + 1: an unseen term weighs the most."""
        return math.log((self.documents + 1) / (self.document_frequency.get(term, 0) + 1)) + 1.0

    def max_idf(self) -> float:
        """The IDF of a term no document holds."""
        return math.log(self.documents + 1) + 1.0

    def to_json(self) -> dict[str, object]:
        """The artifact's ``lexicon`` block (terms sorted: byte-reproducible)."""
        frequencies = dict(sorted(self.document_frequency.items()))
        return {"documents": self.documents, "avg_title_terms": self.avg_title_terms, "df": frequencies}

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> Lexicon:
        """Inverse of ``to_json``."""
        frequencies = data["df"]
        if not isinstance(frequencies, dict):
            raise ValueError("lexicon.df must be an object")
        documents, average = data["documents"], data["avg_title_terms"]
        if not isinstance(documents, int) or not isinstance(average, (int, float)):
            raise ValueError("lexicon.documents must be an integer and avg_title_terms a number")
        return cls(documents, float(average), {str(t): int(n) for t, n in frequencies.items()})


def build_lexicon(pairs: Sequence[PairText]) -> Lexicon:
    """Document frequencies over the distinct items of ``pairs`` (title, class and category)."""
    documents = {(p.title, p.category, p.product_class) for p in pairs}
    frequency: Counter[str] = Counter()
    for title, category, product_class in documents:
        frequency.update(set(terms(title)) | set(terms(f"{category or ''} {product_class or ''}")))
    lengths = [len(terms(title)) for title, _, _ in documents]
    average = round(sum(lengths) / len(lengths), 6) if lengths else 1.0
    return Lexicon(len(documents), average, dict(frequency))


@dataclass(frozen=True)
class Evidence:
    """Measured evidence for one pair: the feature values, the query terms the item lacks, the
    query's head term (its last content word) and whether the title or class names it."""

    values: tuple[float, ...]
    missing_terms: tuple[str, ...]
    query_terms: tuple[str, ...]
    head_term: str | None = None
    head_found: bool = True
    rarest_missing: str | None = None

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


def compute_evidence(embedder: Embedder, pairs: Sequence[PairText], lexicon: Lexicon) -> list[Evidence]:
    """Evidence for every pair; each distinct text is embedded once (one embedder call)."""
    texts = [_texts(pair) for pair in pairs]
    unique = list(dict.fromkeys(text for group in texts for text in group))
    vectors = np.asarray(embedder.embed(unique), dtype=np.float64) if unique else np.zeros((0, 1))
    if vectors.shape[0] != len(unique) or not np.all(np.isfinite(vectors)):
        raise ValueError("embedder returned a wrong-shaped or non-finite result")
    index = {text: row for row, text in enumerate(unique)}
    return [_evidence(pair, group, vectors, index, lexicon) for pair, group in zip(pairs, texts, strict=True)]


def _evidence(
    pair: PairText, group: tuple[str, str, str, str], vectors: F64, index: dict[str, int], lexicon: Lexicon
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
        *_lexical(pair, query_terms, lexicon),
        float(vectors[index[group[1]]] @ product_class),
    )
    missing = tuple(term for term in query_terms if term not in item_terms)
    head_term = query_terms[-1] if query_terms else None
    return Evidence(
        values=tuple(round(v, 6) for v in values),
        missing_terms=missing,
        query_terms=tuple(query_terms),
        head_term=head_term,
        head_found=head_term is None or head_term in title_terms | set(terms(pair.product_class or "")),
        rarest_missing=max(missing, key=lambda t: (lexicon.idf(t), t)) if missing else None,
    )


def _lexical(pair: PairText, query_terms: Sequence[str], lexicon: Lexicon) -> tuple[float, ...]:
    """IDF-weighted coverage of title, class and category; normalised BM25 of the title; head
    term named by title or class; IDF of the rarest missing term over the largest possible IDF."""
    title = terms(pair.title)
    product_class, category = set(terms(pair.product_class or "")), set(terms(pair.category or ""))
    weights = {term: lexicon.idf(term) for term in query_terms}
    total = sum(weights.values())

    def covered(found: set[str]) -> float:
        return sum(w for t, w in weights.items() if t in found) / total if total else 1.0

    head = query_terms[-1] if query_terms else None
    head_match = 1.0 if head is None or head in set(title) | product_class else 0.0
    missing = [w for t, w in weights.items() if t not in set(title) | product_class | category]
    rarest = max(missing, default=0.0) / lexicon.max_idf()
    return (
        covered(set(title)),
        covered(product_class),
        covered(category),
        _bm25(title, weights, lexicon) / (total or 1.0),
        head_match,
        rarest,
    )


def _bm25(title: Sequence[str], weights: Mapping[str, float], lexicon: Lexicon) -> float:
    length_norm = 1 - BM25_B + BM25_B * len(title) / max(lexicon.avg_title_terms, 1e-9)
    score = 0.0
    for term, weight in weights.items():
        count = title.count(term)
        score += weight * count * (BM25_K1 + 1) / (count + BM25_K1 * length_norm)
    return score


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


def _quoted(words: Sequence[str]) -> str:
    return ", ".join(f"'{w}'" for w in words[:3])


def _type_sentence(evidence: Evidence, pair: PairText, thresholds: Mapping[str, float]) -> str:
    """What is asked for, what the item is, and how the product types relate (the rubric's first
    question)."""
    head = evidence.head_term
    kind = pair.product_class or _tail(pair.category or "-", 1)
    item = f"the item is '{_short(pair.title, 50)}' (class {_short(kind, 40)})"
    if head is None:
        return f"the query names no product; {item}"
    if head in _ATTRIBUTE_WORDS:
        has = "has it" if evidence.head_found else "does not show it"
        return f"the attribute '{head}' is asked for, no product type; {item}, which {has}"
    if evidence.head_found:
        verdict = "the product type matches"
    elif evidence["cos_query_class"] >= thresholds["class"]:
        verdict = "a related product type, not the one named"
    elif evidence["cos_query_category"] >= thresholds["category"]:
        verdict = "same department, but the product type differs"
    else:
        verdict = "a different department and product type"
    return f"'{head}' is asked for; {item}: {verdict}"


def _terms_sentence(evidence: Evidence) -> str:
    """Which stated query terms the item lacks (the rubric's attribute question)."""
    missing = list(evidence.missing_terms)
    if not evidence.query_terms:
        return ""
    if not missing:
        return "every query term appears in the title, class or category"
    attributes = [t for t in missing if t in _ATTRIBUTE_WORDS or t.isdigit()]
    others = [t for t in missing if t not in attributes]
    parts = []
    if attributes:
        parts.append(f"the stated attribute {_quoted(attributes)} does not appear")
    if others:
        parts.append(f"{_quoted(others)} is missing from title and class")
    return "; ".join(parts)


def rationale(
    evidence: Evidence,
    pair: PairText,
    headline: str,
    tags: Sequence[str],
    thresholds: Mapping[str, float],
) -> str:
    """The grade in words tied to the rubric, then the numbers behind it; ``headline`` names the
    grade ("Related"). E.g. "Related: 'table' is asked for; this is a Coffee Tables ('…'): a
    related product type, not the one named; 'end' is missing from title and class …"."""
    sentences = [_type_sentence(evidence, pair, thresholds), _terms_sentence(evidence)]
    words = "; ".join(s for s in sentences if s)
    numbers = (
        f"similarity title {evidence['cos_query_title']:.2f}, class {evidence['cos_query_class']:.2f}, "
        f"term weight covered {evidence['idf_coverage_title']:.2f}"
    )
    tagged = f"; tags: {', '.join(tags)}" if tags else ""
    return f"{headline}: {words} ({numbers}){tagged}"
