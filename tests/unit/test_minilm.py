"""judges.minilm against the real thing: token ids and embeddings from sentence-transformers + torch
(stored in fixtures/minilm_reference.json, see docs/embedding.md), plus the safetensors reader,
model discovery, GELU accuracy, batching/padding invariance and the bounded text cache."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import struct
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from scipy.special import erf

from judges import minilm
from judges.minilm import (
    EMBEDDING_DIM,
    MiniLMEmbedder,
    MiniLMUnavailableError,
    find_model_dir,
    load_safetensors,
)

FIXTURE = Path(__file__).parent / "fixtures" / "minilm_reference.json"
F32 = npt.NDArray[np.float32]


@pytest.fixture(scope="module")
def reference() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(FIXTURE.read_text(encoding="utf-8"))
    return doc


@pytest.fixture(scope="module")
def embedder() -> MiniLMEmbedder:
    return MiniLMEmbedder()


# --------------------------------------------------------------------------- reference checks


def test_fixture_covers_the_hard_cases(reference: dict[str, Any]) -> None:
    texts = reference["embed_texts"]
    assert reference["max_seq_length"] == 256
    assert reference["modules"] == ["Transformer", "Pooling", "Normalize"]
    assert "desk for kids tjat ate 10 year old" in texts
    assert any("™" in t and "®" in t and "”" in t for t in texts)
    assert any(len(ids) == 256 for ids in reference["token_ids"][: len(texts)]), "no truncated text"
    assert len(reference["token_ids"]) == len(reference["tokenize_texts"]) > 300


def test_token_ids_match_hf_fast_tokenizer(embedder: MiniLMEmbedder, reference: dict[str, Any]) -> None:
    mismatches = [
        (text, embedder.tokenizer.encode(text), ids)
        for text, ids in zip(reference["tokenize_texts"], reference["token_ids"], strict=True)
        if embedder.tokenizer.encode(text) != ids
    ]
    assert not mismatches, mismatches[:3]


def test_embeddings_match_sentence_transformers(embedder: MiniLMEmbedder, reference: dict[str, Any]) -> None:
    ours = embedder.embed(reference["embed_texts"])
    ref = np.asarray(reference["embeddings"], dtype=np.float32)
    assert ours.shape == ref.shape == (len(reference["embed_texts"]), EMBEDDING_DIM)
    cosines = (ours.astype(np.float64) * ref).sum(axis=1) / np.linalg.norm(ref, axis=1)
    worst = int(np.argmin(cosines))
    assert cosines.min() > 0.9999, (reference["embed_texts"][worst], cosines.min())
    assert float(np.abs(ours - ref).max()) < 1e-4


def test_truncation_to_a_shorter_max_seq_length(reference: dict[str, Any]) -> None:
    short = MiniLMEmbedder(max_seq_length=128, cache_size=0)
    for text, ids in zip(reference["tokenize_texts"], reference["token_ids"], strict=True):
        expected = ids if len(ids) <= 128 else [*ids[:127], ids[-1]]
        assert short.tokenizer.encode(text, 128) == expected


# --------------------------------------------------------------------------- embed() contract


def test_rows_are_unit_norm_float32_in_input_order(embedder: MiniLMEmbedder) -> None:
    texts = ["oak dining table", "", "stainless steel water bottle 32 oz", "oak dining table"]
    out = embedder.embed(texts)
    assert out.dtype == np.float32 and out.shape == (4, EMBEDDING_DIM)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(out[0], out[3])
    single = [embedder.embed([t])[0] for t in texts]
    np.testing.assert_allclose(out, np.stack(single), atol=1e-6)


def test_padding_and_batch_mates_do_not_change_a_text(reference: dict[str, Any]) -> None:
    fresh = MiniLMEmbedder(cache_size=0, batch_size=3)
    texts: list[str] = reference["embed_texts"]
    together = fresh.embed(texts)
    alone = np.stack([fresh.embed([t])[0] for t in texts])
    np.testing.assert_allclose(together, alone, atol=2e-6)


def test_semantics_are_sane(embedder: MiniLMEmbedder) -> None:
    q, good, bad = embedder.embed(
        ["desk for kids tjat ate 10 year old", "children's study desk, wood", "stainless steel water bottle"]
    )
    assert float(q @ good) > float(q @ bad) + 0.2


def test_empty_input_and_single_string_misuse(embedder: MiniLMEmbedder) -> None:
    assert embedder.embed([]).shape == (0, EMBEDDING_DIM)
    with pytest.raises(TypeError):
        embedder.embed("a string is a sequence too")


def test_cache_is_bounded_and_skips_the_encoder(monkeypatch: pytest.MonkeyPatch) -> None:
    emb = MiniLMEmbedder(cache_size=2)
    seen: list[list[str]] = []
    real = emb._embed_uncached

    def counting(texts: list[str]) -> F32:
        seen.append(list(texts))
        return real(texts)

    monkeypatch.setattr(emb, "_embed_uncached", counting)
    first = emb.embed(["a", "b", "a"])
    assert seen == [["a", "b"]]  # duplicates are embedded once
    again = emb.embed(["b", "a"])
    assert seen == [["a", "b"]]  # both served from the cache
    np.testing.assert_array_equal(again, first[[1, 0]])
    emb.embed(["c"])
    assert len(emb._cache) == 2 and "b" not in emb._cache  # "b" was least recently used
    emb.embed(["b"])
    assert seen[-1] == ["b"]


def test_model_id_names_the_weights(embedder: MiniLMEmbedder) -> None:
    digest = hashlib.sha256((embedder.model_dir / "model.safetensors").read_bytes()).hexdigest()
    assert re.fullmatch(r"all-MiniLM-L6-v2@[0-9a-f]{12}", embedder.model_id)
    assert embedder.model_id == f"all-MiniLM-L6-v2@{digest[:12]}"


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        MiniLMEmbedder(max_seq_length=513)
    with pytest.raises(ValueError):
        MiniLMEmbedder(batch_size=0)


# --------------------------------------------------------------------------- pieces


def test_gelu_is_the_exact_erf_version() -> None:
    x = np.linspace(-12.0, 12.0, 200_001, dtype=np.float32)
    exact = 0.5 * x.astype(np.float64) * (1.0 + erf(x.astype(np.float64) / np.sqrt(2.0)))
    ours = minilm._gelu(x)
    assert ours.dtype == np.float32
    assert float(np.abs(ours - exact).max()) < 1e-6


def _write_safetensors(path: Path, tensors: dict[str, np.ndarray[Any, Any]], dtypes: dict[str, str]) -> None:
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    blobs: list[bytes] = []
    offset = 0
    for name, array in tensors.items():
        raw = np.ascontiguousarray(array).tobytes()
        header[name] = {
            "dtype": dtypes[name],
            "shape": list(array.shape),
            "data_offsets": [offset, offset + len(raw)],
        }
        blobs.append(raw)
        offset += len(raw)
    head = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(head)) + head + b"".join(blobs))


def test_safetensors_reader_round_trips(tmp_path: Path) -> None:
    a = np.arange(12, dtype="<f4").reshape(3, 4) / 7
    b = np.array([[1, -2]], dtype="<i8")
    c = np.array([0.5, -1.25], dtype="<f2")
    path = tmp_path / "t.safetensors"
    _write_safetensors(path, {"a": a, "b": b, "c": c}, {"a": "F32", "b": "I64", "c": "F16"})
    got = load_safetensors(path)
    assert set(got) == {"a", "b", "c"}
    np.testing.assert_array_equal(got["a"], a)
    np.testing.assert_array_equal(got["b"], b)
    np.testing.assert_array_equal(got["c"], c)


def test_safetensors_reader_rejects_unknown_dtypes(tmp_path: Path) -> None:
    path = tmp_path / "t.safetensors"
    _write_safetensors(path, {"x": np.zeros(2, dtype=np.uint8)}, {"x": "U8"})
    with pytest.raises(ValueError, match="unsupported dtype"):
        load_safetensors(path)


def test_model_dir_env_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVALLOOP_MINILM_DIR", str(tmp_path))
    with pytest.raises(MiniLMUnavailableError, match="make setup"):
        find_model_dir()
    real = find_model_dir(Path(minilm._package_model_dir()))
    monkeypatch.setenv("EVALLOOP_MINILM_DIR", str(real))
    assert find_model_dir() == real


def test_missing_package_says_run_make_setup(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EVALLOOP_MINILM_DIR", raising=False)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MiniLMUnavailableError, match="make setup"):
        find_model_dir()


def test_length_grouping_covers_everything_and_limits_padding() -> None:
    lengths = [12] * 63 + [47] + [5, 256, 9, 9, 30] * 20
    batches = minilm._group_by_length(lengths, batch_size=64)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        widths = [lengths[i] for i in b]
        assert len(b) <= 64 and widths == sorted(widths)
        assert len(b) * max(widths) <= 1.25 * sum(widths) + minilm._PAD_SLACK or len(b) == 1
    assert not any(47 in [lengths[i] for i in b] and 12 in [lengths[i] for i in b] for b in batches)
