"""Write the reason for every golden item from the author's per-query reading of the rubric.

``data/wands/golden_specs.yaml`` says, for each of the golden set's queries, what the author reads
it as: the product type, its stated attributes (with the values that conflict), the family of
close substitutes and the query's department. Applied to an item's title, product class and
category path, that reading gives a grade under the policy's rubric and a reason naming the
evidence and the failure modes. Where that grade differs from the imported WANDS label's grade,
the item keeps the original label and records an adjudication saying which rubric rule decides.

Build-time only (``python -m infra.data.build_golden``); runtime code reads golden.jsonl.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from judges.golden import Adjudication, AuditEntry, GoldenItem, Provenance
from schemas.policy import Policy

SPECS = Path("data/wands/golden_specs.yaml")
METHOD = "per-query reading (data/wands/golden_specs.yaml) applied to title, class and category"
_STOPWORDS = {"for", "that", "are", "the", "and", "with", "year", "old", "tjat", "ate"}


@dataclass(frozen=True)
class Attribute:
    """A stated attribute: the value the query asks for, the words confirming or contradicting it."""

    name: str
    value: str
    terms: tuple[str, ...]
    conflicts: tuple[str, ...] = ()


class Judged(NamedTuple):
    """The rubric's grade for an item, why, the failure modes, and the rule that decided."""

    grade: int
    why: str
    failure_modes: list[str]
    rule: str


@dataclass(frozen=True)
class QuerySpec:
    """The author's reading of one query."""

    query: str
    reading: str
    product: str
    type_terms: tuple[str, ...]
    family: str
    family_terms: tuple[str, ...]
    departments: tuple[str, ...]
    attributes: tuple[Attribute, ...] = ()
    not_family: tuple[str, ...] = ()
    #: The author's own grade, reason and failure modes for single items, by golden id.
    overrides: dict[str, Judged] = field(default_factory=dict)


@dataclass(frozen=True)
class Specs:
    """Every query's reading and who wrote them."""

    author: str
    date: date
    queries: dict[str, QuerySpec] = field(default_factory=dict)


def load_specs(path: Path = SPECS) -> Specs:
    """Parse the spec file (build-time input: a malformed file raises)."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    queries = {entry["query"]: _query_spec(entry) for entry in data["queries"]}
    return Specs(str(data["author"]), date.fromisoformat(str(data["date"])), queries)


def _query_spec(entry: dict[str, Any]) -> QuerySpec:
    attributes = tuple(
        Attribute(a["name"], a["value"], tuple(a["terms"]), tuple(a.get("conflicts", ())))
        for a in entry.get("attributes", ())
    )
    return QuerySpec(
        query=entry["query"],
        reading=" ".join(str(entry["reading"]).split()),
        product=entry["product"],
        type_terms=tuple(entry["type_terms"]),
        family=entry["family"],
        family_terms=tuple(entry["family_terms"]),
        departments=tuple(entry["departments"]),
        attributes=attributes,
        not_family=tuple(entry.get("not_family", ())),
        overrides={
            key: Judged(int(o["grade"]), " ".join(str(o["why"]).split()), list(o.get("failure_modes", ())), "the author's call on this item")
            for key, o in entry.get("overrides", {}).items()
        },
    )


def has_term(text: str, term: str) -> bool:
    """Whether every ``+``-joined part of ``term`` occurs in ``text`` as whole words."""
    return all(_word(part).search(text) for part in term.lower().split("+"))


def _word(part: str) -> re.Pattern[str]:
    return re.compile(r"(?<!\w)" + re.escape(part.strip()) + r"(?!\w)")


def _first(text: str, terms: tuple[str, ...]) -> str | None:
    return next((term for term in terms if has_term(text, term)), None)


def _content_words(query: str) -> list[str]:
    return [w for w in query.lower().split() if len(w) > 2 and w not in _STOPWORDS and not w.isdigit()]


class Evidence(NamedTuple):
    """What an item's text says about the query's reading."""

    asked: str | None
    family: str | None
    same_department: bool
    conflicts: list[tuple[Attribute, str]]
    path_conflicts: list[tuple[Attribute, str]]
    unconfirmed: list[Attribute]
    confirmed: list[Attribute]
    shared_words: list[str]


def item_text(item: GoldenItem) -> str:
    """Title and product class, lower-cased: what the terms are matched against."""
    product_class = item.item.attributes.get("product_class")
    return f"{item.item.title} | {product_class or ''}".lower()


def evidence(item: GoldenItem, spec: QuerySpec) -> Evidence:
    """Read ``item`` against ``spec``."""
    text, path = item_text(item), (item.item.category or "")
    leaf = path.split(" / ")[-1]
    conflicts, path_conflicts, unconfirmed, confirmed = [], [], [], []
    for attribute in spec.attributes:
        clash = _first(text, attribute.conflicts)
        if _first(text, attribute.terms) is not None and (clash is None or clash in attribute.terms):
            confirmed.append(attribute)
        elif clash is not None:
            conflicts.append((attribute, clash))
        elif _first(leaf.lower(), attribute.conflicts) is not None:
            path_conflicts.append((attribute, leaf))
        else:
            unconfirmed.append(attribute)
    family = None if _first(text, spec.not_family) else _first(text, spec.family_terms)
    words = _content_words(spec.query)
    return Evidence(
        asked=_first(text, spec.type_terms),
        family=family,
        same_department=any(path.startswith(prefix) for prefix in spec.departments),
        conflicts=conflicts,
        path_conflicts=path_conflicts,
        unconfirmed=unconfirmed,
        confirmed=confirmed,
        shared_words=[w for w in words if has_term(item.item.title.lower(), w)],
    )


def judge(item: GoldenItem, spec: QuerySpec) -> Judged:
    """The grade the rubric gives ``item`` under the author's reading of its query."""
    if item.id in spec.overrides:
        return spec.overrides[item.id]
    found = evidence(item, spec)
    title = _quoted(item.item.title)
    if found.asked is not None:
        return _asked(found, spec, title)
    kind = _kind(item)
    if found.family is not None:
        missing = [w for w in _content_words(spec.query) if not has_term(item_text(item), w)]
        gap = f"; '{' '.join(missing)}' is not in its title" if missing else ""
        why = f"{title} ({kind}) is {spec.family}, a close substitute, but not a {spec.product}{gap}"
        return Judged(2, why, ["query_term_missed"], "grade 2 covers the right family of product")
    shared = f"; it shares only {_words(found.shared_words)} with the query" if found.shared_words else ""
    if found.same_department:
        why = (
            f"{title} ({kind}) comes from the query's own department ({_department(item)}) "
            f"but is not a {spec.product}{shared}"
        )
        return Judged(1, why, ["wrong_product_type"], "grade 1 is another product from the query's department")
    why = f"{title} ({kind}) is a different product type from another department ({_department(item)}){shared}"
    return Judged(0, why, ["wrong_product_type", "off_department"], "grade 0 is another type from another department")


def _asked(found: Evidence, spec: QuerySpec, title: str) -> Judged:
    base = f"{title} is a {spec.product} as asked"
    if found.conflicts:
        attribute, clash = found.conflicts[0]
        why = f"{base}, but '{clash}' does not fit the query's {attribute.name} ({attribute.value})"
        return Judged(2, why, ["attribute_mismatch"], "a stated attribute that differs makes it Related (2)")
    confirmed = "".join(f", {a.name} {a.value} confirmed" for a in found.confirmed)
    if found.path_conflicts:
        attribute, leaf = found.path_conflicts[0]
        why = (
            f"{base}{confirmed}; the title does not state the {attribute.name} and the category path "
            f"files it under {leaf}, so {attribute.value} is likely but unconfirmed: a near match"
        )
        return Judged(3, why, [], "grade 4 needs every stated attribute confirmed")
    if found.unconfirmed:
        names = " or ".join(f"{a.value} ({a.name})" for a in found.unconfirmed)
        why = f"{base}{confirmed}; nothing in its text confirms {names}, a small gap most shoppers accept"
        return Judged(3, why, [], "grade 4 needs every stated attribute confirmed")
    stated = "; every stated attribute matches" if spec.attributes else ""
    return Judged(4, f"{base}{confirmed}{stated}", [], "the right product type, nothing contradicting")


def _quoted(title: str) -> str:
    short = title if len(title) <= 160 else title[:157].rstrip() + "..."
    return f"'{short}'"


def _kind(item: GoldenItem) -> str:
    product_class = item.item.attributes.get("product_class")
    if isinstance(product_class, str) and product_class:
        return "class " + product_class.split("|")[0].strip()
    leaf = (item.item.category or "").split(" / ")[-1].strip()
    return f"listed under {leaf}" if leaf else "no class listed"


def _department(item: GoldenItem) -> str:
    parts = (item.item.category or "").split(" / ")
    return " / ".join(parts[:2]) if parts[0] else "no listed department"


def _words(words: list[str]) -> str:
    return " and ".join(f"'{w}'" for w in words)


#: The imported "Partial" grade. Its title can show an item worse than a rater's Partial (a
#: conflict, another type) but cannot show it better: the rater saw the whole product page.
RELATED = 2


def _rater_stands(title: str, spec: QuerySpec) -> Judged:
    why = (
        f"{title} is a {spec.product} by its title, but the WANDS rater, who saw the whole product "
        "page, judged it a partial match and nothing in its text contradicts that"
    )
    return Judged(RELATED, why, [], "the rater's Partial stands")


def author_item(item: GoldenItem, specs: Specs, policy: Policy, golden_version: str) -> GoldenItem:
    """``item`` with its reason, failure modes, provenance and (if needed) adjudication written."""
    spec = specs.queries[item.query]
    judged = judge(item, spec)
    if item.reason_imported and item.original_grade == RELATED and judged.grade > RELATED:
        judged = _rater_stands(_quoted(item.item.title), spec)
    name = policy.level(judged.grade).name
    modes = f" ({', '.join(judged.failure_modes)})" if judged.failure_modes else ""
    reason = f"{judged.grade} {name}: {judged.why}{modes}. Query read as {spec.reading}."
    imported = item.original_grade
    adjudication = None
    if judged.grade != imported:
        adjudication = Adjudication(
            original_label=item.label,
            original_grade=imported,
            reason=(
                f"imported WANDS label '{item.label}' ({imported} {policy.level(imported).name}) "
                f"overruled: {judged.rule}, and the item's text puts it at {judged.grade} {name}"
            ),
        )
    provenance = Provenance(author=specs.author, date=specs.date, policy_version=policy.version, method=METHOD)
    entry = AuditEntry(
        golden_version=golden_version,
        at=datetime.combine(specs.date, time(), UTC),
        by=specs.author,
        action="author",
        from_grade=imported,
        to_grade=judged.grade,
        note="reason written from the per-query reading" + (", label adjudicated" if adjudication else ""),
    )
    return item.model_copy(
        update={
            "grade": judged.grade,
            "reason": reason,
            "reason_imported": False,
            "failure_modes": judged.failure_modes,
            "adjudication": adjudication,
            "provenance": provenance,
            "golden_version": golden_version,
            "audit": [*item.audit, entry],
        }
    )
