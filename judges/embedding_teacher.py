"""The default CPU teacher: MiniLM similarity evidence -> an ordinal classifier -> a grade.

``fit_artifact`` fits the classifier on the golden set only, choosing the model form, its
regularisation and the decision rule by quadratic-weighted kappa in cross-validation grouped by
query, and returns a versioned JSON artifact (no pickle: coefficients, intercepts, scaler,
thresholds). ``EmbeddingTeacher`` loads that artifact and grades with numpy alone.
See docs/teacher.md.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from judges.base import JudgeRequest, error_judgment, ok_judgment
from judges.features import (
    FEATURE_NAMES,
    THRESHOLD_FEATURES,
    Embedder,
    Evidence,
    Lexicon,
    PairText,
    build_lexicon,
    compute_evidence,
    failure_modes,
    feature_matrix,
    rationale,
)
from judges.golden import GoldenItem, golden_requests, golden_version_of, split_golden
from schemas.judgments import Judgment
from schemas.policy import Policy
from schemas.settings import resolve_path

log = logging.getLogger(__name__)

F64 = npt.NDArray[np.float64]
ARTIFACT_FORMAT = "evalloop-embedding-teacher"
ARTIFACT_FORMAT_VERSION = 2
VERSION_PREFIX = "embedding-v2"
#: Candidate settings tried in grouped CV; order breaks ties, so the simplest comes first.
KINDS = ("cumulative", "multinomial")
C_GRID = (0.01, 0.1, 1.0, 10.0)
#: The decision rule is fixed, not tuned: the most probable class, except that a near tie between
#: two classes that straddle a policy grade no golden item uses gives that grade (with the imported
#: labels alone, Exact vs Partial gave 3 Good and Partial vs Irrelevant 1 Weak). With every grade
#: in the golden set, no two adjacent classes straddle one and it is plain argmax.
DECISIONS = ("between",)
BETWEEN_MARGIN = 0.10
KNOWN_DECISIONS = ("argmax", "expected", "between")
CV_FOLDS = 5
DIGITS = 6  # floats in the artifact are rounded so tiny BLAS differences do not change its bytes


# --------------------------------------------------------------------------- the ordinal model


class OrdinalModel:
    """A fitted linear ordinal classifier evaluated with numpy (no scikit-learn at run time).

    ``cumulative``: one logistic model per threshold, P(y > classes[k]); class probabilities are
    differences of the (monotonised) cumulative ones. ``multinomial``: softmax over classes.
    Decisions: ``argmax``; ``expected`` (the expected grade rounded to the scale); ``between``
    (argmax, but the grade between two near-tied classes that straddle it).
    """

    def __init__(self, spec: dict[str, Any]) -> None:
        self.kind: str = spec["kind"]
        self.decision: str = spec["decision"]
        #: The near-tie margin of the ``between`` rule (in the artifact, so it is versioned with it).
        self.between_margin = float(spec.get("between_margin", BETWEEN_MARGIN))
        self.classes = [int(c) for c in spec["classes"]]
        self.coef = np.asarray(spec["coef"], dtype=np.float64)
        self.intercept = np.asarray(spec["intercept"], dtype=np.float64)
        self.mean = np.asarray(spec["scaler"]["mean"], dtype=np.float64)
        self.scale = np.asarray(spec["scaler"]["scale"], dtype=np.float64)
        rows = len(self.classes) - 1 if self.kind == "cumulative" else len(self.classes)
        if (
            self.kind not in KINDS
            or self.decision not in KNOWN_DECISIONS
            or self.coef.shape != (rows, len(self.mean))
        ):
            raise ValueError(
                f"malformed model spec: kind {self.kind}, decision {self.decision}, coef {self.coef.shape}"
            )

    def class_probabilities(self, features: F64) -> F64:
        """(n, len(classes)) probabilities, rows summing to 1."""
        scores = ((features - self.mean) / self.scale) @ self.coef.T + self.intercept
        if self.kind == "multinomial":
            scores -= scores.max(axis=1, keepdims=True)
            exp = np.exp(scores)
            return np.asarray(exp / exp.sum(axis=1, keepdims=True), dtype=np.float64)
        above = 1.0 / (1.0 + np.exp(-scores))
        above = np.minimum.accumulate(above, axis=1)  # P(y > k) must not rise with k
        upper = np.hstack([np.ones((len(above), 1)), above])
        lower = np.hstack([above, np.zeros((len(above), 1))])
        return np.asarray(upper - lower, dtype=np.float64)

    def grades(self, probabilities: F64, scale: Sequence[int]) -> list[int]:
        """Decided grades under the model's decision rule (see the class docstring)."""
        if self.decision == "argmax":
            return [self.classes[int(i)] for i in probabilities.argmax(axis=1)]
        if self.decision == "between":
            return [self._between(row, scale) for row in probabilities]
        expected = probabilities @ np.asarray(self.classes, dtype=np.float64)
        return [min(scale, key=lambda g: (abs(g - e), g)) for e in expected]

    def _between(self, row: F64, scale: Sequence[int]) -> int:
        first, second = (int(i) for i in np.argsort(-row, kind="stable")[:2])
        top, runner_up = self.classes[first], self.classes[second]
        middle = [g for g in scale if min(top, runner_up) < g < max(top, runner_up)]
        if len(middle) == 1 and row[first] - row[second] < self.between_margin:
            return middle[0]
        return top


def scale_probabilities(class_probs: F64, classes: Sequence[int], scale: Sequence[int]) -> list[list[float]]:
    """Spread class probabilities over the whole policy scale (zeros for unfitted grades)."""
    column = {grade: classes.index(grade) for grade in classes}
    out: list[list[float]] = []
    for row in class_probs:
        values = [float(row[column[g]]) if g in column else 0.0 for g in scale]
        total = sum(values)
        out.append([v / total for v in values])
    return out


# --------------------------------------------------------------------------- fitting


def _fit_spec(kind: str, c: float, x: F64, y: Sequence[int], classes: list[int]) -> dict[str, Any]:
    from sklearn.linear_model import LogisticRegression

    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale[scale == 0] = 1.0
    z = (x - mean) / scale
    labels = np.asarray(y)

    # Tight tolerance: the L2-penalised optimum is unique, so converging hard makes the
    # coefficients depend on the data, not on the solver's path.
    def model() -> LogisticRegression:
        return LogisticRegression(C=c, tol=1e-10, max_iter=10_000)

    if kind == "multinomial":
        fitted = model().fit(z, labels)
        coef, intercept = fitted.coef_, fitted.intercept_
    else:
        fits = [model().fit(z, (labels > k).astype(int)) for k in classes[:-1]]
        coef = np.vstack([f.coef_[0] for f in fits])
        intercept = np.array([f.intercept_[0] for f in fits])
    return {
        "kind": kind,
        "classes": classes,
        "coef": coef.tolist(),
        "intercept": intercept.tolist(),
        "scaler": {"mean": mean.tolist(), "scale": scale.tolist()},
    }


def _kappas(truth: Sequence[int], predicted: Sequence[int], scale: list[int]) -> tuple[float, float]:
    from sklearn.metrics import cohen_kappa_score

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = cohen_kappa_score(truth, predicted, labels=scale)
        weighted = cohen_kappa_score(truth, predicted, labels=scale, weights="quadratic")
    return float(plain), float(weighted)


def grouped_cv(x: F64, y: list[int], groups: list[str], scale: list[int]) -> list[dict[str, Any]]:
    """Out-of-fold kappas of every candidate (kind, C, decision), GroupKFold by query; each
    candidate's out-of-fold grades are under its ``"predicted"`` key."""
    from sklearn.model_selection import GroupKFold

    classes = sorted(set(y))
    folds = list(GroupKFold(n_splits=min(CV_FOLDS, len(set(groups)))).split(x, y, groups))
    results: list[dict[str, Any]] = []
    for kind in KINDS:
        for c in C_GRID:
            predicted: dict[str, list[int]] = {d: [0] * len(y) for d in DECISIONS}
            for train, test in folds:
                spec = _fit_spec(kind, c, x[train], [y[i] for i in train], classes)
                for decision in DECISIONS:
                    model = OrdinalModel({**spec, "decision": decision})
                    grades = model.grades(model.class_probabilities(x[test]), scale)
                    for i, grade in zip(test, grades, strict=True):
                        predicted[decision][i] = grade
            for decision in DECISIONS:
                kappa, weighted = _kappas(y, predicted[decision], scale)
                results.append(
                    {
                        "kind": kind,
                        "C": c,
                        "decision": decision,
                        "kappa": kappa,
                        "weighted_kappa": weighted,
                        "predicted": predicted[decision],
                    }
                )
    return results


def _thresholds(evidence: Sequence[Evidence], y: Sequence[int]) -> dict[str, float]:
    """Per-feature cut between "unrelated" and "related": the midpoint of the feature's median
    over the lowest-graded and over the highest-graded golden items."""
    low, high = min(y), max(y)
    out: dict[str, float] = {}
    for key, feature in THRESHOLD_FEATURES.items():
        lows = [e[feature] for e, g in zip(evidence, y, strict=True) if g == low]
        highs = [e[feature] for e, g in zip(evidence, y, strict=True) if g == high]
        out[key] = (float(np.median(lows)) + float(np.median(highs))) / 2
    return out


def fit_artifact(
    items: Sequence[GoldenItem], golden_bytes: bytes, policy: Policy, embedder: Embedder
) -> dict[str, Any]:
    """Fit the teacher on ``items`` (the golden set) less its canary split (``golden.canary``),
    and return the artifact (versioned)."""
    golden_version = golden_version_of(items)
    canaries = split_golden(items, policy).canaries
    items = split_golden(items, policy).fit
    pairs = [PairText.from_request(r) for r in golden_requests(items)]
    lexicon = build_lexicon(pairs)
    evidence = compute_evidence(embedder, pairs, lexicon)
    x, y = feature_matrix(evidence), [item.grade for item in items]
    groups = [item.query for item in items]
    scale = policy.grades
    candidates = grouped_cv(x, y, groups, scale)
    best = max(candidates, key=lambda r: round(r["weighted_kappa"], DIGITS))  # first of equals wins
    out_of_fold = best["predicted"]
    candidates = [{k: v for k, v in c.items() if k != "predicted"} for c in candidates]
    spec = _fit_spec(best["kind"], best["C"], x, y, sorted(set(y)))
    artifact: dict[str, Any] = {
        "format": ARTIFACT_FORMAT,
        "format_version": ARTIFACT_FORMAT_VERSION,
        "embedder": {"model_id": embedder.model_id},
        "features": list(FEATURE_NAMES),
        "model": {**spec, "C": best["C"], "decision": best["decision"], "between_margin": BETWEEN_MARGIN},
        "evidence_thresholds": _thresholds(evidence, y),
        "lexicon": lexicon.to_json(),
        "policy": {"version": policy.version, "grades": scale},
        "fitted_on": {
            "sha256": hashlib.sha256(golden_bytes).hexdigest(),
            "golden_version": golden_version,
            "n": len(items),
            "queries": len(set(groups)),
            "grades": {str(g): n for g, n in sorted(Counter(y).items())},
            "canaries_excluded": len(canaries),
            "canary_split": policy.golden.canary.model_dump(),
        },
        "cv": {
            "method": f"GroupKFold({min(CV_FOLDS, len(set(groups)))}) by query, pooled out-of-fold",
            "selected_by": "quadratic-weighted kappa",
            "kappa": best["kappa"],
            "weighted_kappa": best["weighted_kappa"],
            "candidates": candidates,
            # The selected candidate's grade for each golden item from the fold that did not see
            # its query: what a teacher calibration may use (docs/calibration.md).
            "out_of_fold": {item.id: grade for item, grade in zip(items, out_of_fold, strict=True)},
        },
    }
    artifact = _rounded(artifact)
    artifact["teacher_version"] = teacher_version_of(artifact)
    return artifact


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, DIGITS) + 0.0  # + 0.0 turns -0.0 into 0.0
    if isinstance(value, dict):
        return {key: _rounded(v) for key, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def _canonical(artifact: dict[str, Any]) -> str:
    body = {key: value for key, value in artifact.items() if key != "teacher_version"}
    return json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def teacher_version_of(artifact: dict[str, Any]) -> str:
    """``embedding-v2:<first 12 hex of sha256 of the artifact's content>``."""
    return f"{VERSION_PREFIX}:{hashlib.sha256(_canonical(artifact).encode('utf-8')).hexdigest()[:12]}"


def dump_artifact(artifact: dict[str, Any]) -> str:
    """The artifact as stable, diff-friendly JSON text (no timestamp: byte-reproducible)."""
    return json.dumps(artifact, sort_keys=True, ensure_ascii=False, indent=1) + "\n"


def load_artifact(path: Path) -> dict[str, Any]:
    """Read an artifact and check its format and that its content matches its version."""
    artifact: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    if artifact.get("format") != ARTIFACT_FORMAT or artifact.get("format_version") != ARTIFACT_FORMAT_VERSION:
        raise ValueError(f"{path}: not an {ARTIFACT_FORMAT} v{ARTIFACT_FORMAT_VERSION} artifact")
    if artifact.get("teacher_version") != teacher_version_of(artifact):
        raise ValueError(f"{path}: content does not match its teacher_version (edited or corrupted)")
    return artifact


# --------------------------------------------------------------------------- the teacher


def artifact_policy_mismatch(artifact: dict[str, Any], policy: Policy, classes: Sequence[int]) -> str | None:
    """Why an artifact fitted for one policy cannot grade under ``policy``, or None.

    It records the policy (version, grades) it was fitted on golden labels of; another scale, or
    a version that is neither its own nor in ``teacher.compatible_versions``, is refused.
    """
    fitted = artifact["policy"]
    refit = "fit one for this policy: `evalloop teacher fit --policy <policy.yaml>`"
    off_scale = [c for c in classes if c not in policy.grades]
    if off_scale or fitted.get("grades", policy.grades) != policy.grades:
        return f"fitted for grades {fitted.get('grades')}, the policy's scale is {policy.grades}; {refit}"
    allowed = {policy.version, *policy.teacher.compatible_versions}
    if fitted["version"] not in allowed:
        return (
            f"fitted for policy {fitted['version']}, not {policy.version}; {refit} (or, if only rules "
            f"or sampling changed, list {fitted['version']} under teacher.compatible_versions)"
        )
    return None


class EmbeddingTeacher:
    """Implements ``judges.base.Teacher`` with MiniLM evidence and the fitted ordinal model.

    Options: ``artifact`` (path; default the policy's ``teacher.artifact``), ``embedder`` (an
    object with ``embed``/``model_id``; default a ``MiniLMEmbedder``), ``model_dir``.
    """

    def __init__(self, policy: Policy, **options: Any) -> None:
        self._policy = policy
        path = resolve_path(Path(options.get("artifact") or policy.teacher.artifact))
        self.artifact = load_artifact(path)
        self._version: str = self.artifact["teacher_version"]
        if self.artifact["features"] != list(FEATURE_NAMES):
            raise ValueError(
                f"{path}: fitted on features {self.artifact['features']}, code computes {FEATURE_NAMES}"
            )
        self.model = OrdinalModel(self.artifact["model"])
        problem = artifact_policy_mismatch(self.artifact, policy, self.model.classes)
        if problem is not None:
            raise ValueError(f"{path}: {problem}")
        self.embedder: Embedder = options.get("embedder") or _default_embedder(options.get("model_dir"))
        if self.embedder.model_id != self.artifact["embedder"]["model_id"]:
            raise ValueError(
                f"{path}: fitted with embedder {self.artifact['embedder']['model_id']}, "
                f"loaded {self.embedder.model_id}; refit with `evalloop teacher fit`"
            )
        self.thresholds: dict[str, float] = self.artifact["evidence_thresholds"]
        self.lexicon = Lexicon.from_json(self.artifact["lexicon"])

    @property
    def teacher_version(self) -> str:
        """``embedding-v2:<artifact hash>``."""
        return self._version

    @property
    def policy(self) -> Policy:
        """The policy the teacher grades under."""
        return self._policy

    def judge(self, requests: Sequence[JudgeRequest]) -> list[Judgment]:
        """One judgment per request, in order; a pair that fails becomes an error judgment."""
        start = time.perf_counter()
        pairs = [PairText.from_request(r) for r in requests]
        evidence = self._evidence(pairs)
        per_pair_ms = (time.perf_counter() - start) * 1000 / max(len(requests), 1)
        return [
            self._judge_one(request, pair, found, per_pair_ms)
            for request, pair, found in zip(requests, pairs, evidence, strict=True)
        ]

    def _evidence(self, pairs: list[PairText]) -> list[Evidence | str]:
        try:
            return list(compute_evidence(self.embedder, pairs, self.lexicon))
        except Exception:  # retry pair by pair so one bad text fails only its pair
            log.warning("batch evidence failed; retrying %d pairs one by one", len(pairs), exc_info=True)
        out: list[Evidence | str] = []
        for pair in pairs:
            try:
                out.append(compute_evidence(self.embedder, [pair], self.lexicon)[0])
            except Exception as exc:  # becomes this pair's error judgment
                out.append(f"embedding failed: {type(exc).__name__}: {exc}")
        return out

    def _judge_one(self, request: JudgeRequest, pair: PairText, found: Evidence | str, ms: float) -> Judgment:
        if isinstance(found, str):
            return error_judgment(request, self._policy, self._version, found, latency_ms=ms)
        try:
            return self._grade(request, pair, found, ms)
        except Exception as exc:  # VerdictError or a numeric fault: never raise
            reason = f"grading failed: {type(exc).__name__}: {exc}"
            return error_judgment(request, self._policy, self._version, reason, latency_ms=ms)

    def _grade(self, request: JudgeRequest, pair: PairText, evidence: Evidence, ms: float) -> Judgment:
        class_probs = self.model.class_probabilities(feature_matrix([evidence]))
        if not np.all(np.isfinite(class_probs)):
            raise ValueError("non-finite probabilities")
        scale = self._policy.grades
        grade = self.model.grades(class_probs, scale)[0]
        probabilities = scale_probabilities(class_probs, self.model.classes, scale)[0]
        tags = failure_modes(evidence, pair, grade, self._policy.failure_modes, self.thresholds)
        headline = f"{grade} {self._policy.level(grade).name}"
        text = rationale(evidence, pair, headline, tags, self.thresholds)
        return ok_judgment(
            request, self._policy, self._version, grade, tags, text, probabilities, latency_ms=ms
        )


def _default_embedder(model_dir: str | Path | None) -> Embedder:
    from judges.minilm import MiniLMEmbedder

    return MiniLMEmbedder(model_dir=Path(model_dir) if model_dir else None)


def cv_summary(artifact: dict[str, Any]) -> str:
    """One line: the selected candidate and its grouped-CV kappas."""
    cv, model = artifact["cv"], artifact["model"]
    return (
        f"grouped CV ({cv['method']}): {model['kind']} C={model['C']} decision={model['decision']}: "
        f"kappa {cv['kappa']:.4f}, quadratic-weighted kappa {cv['weighted_kappa']:.4f}"
        if not math.isnan(cv["weighted_kappa"])
        else "grouped CV: undefined kappa"
    )
