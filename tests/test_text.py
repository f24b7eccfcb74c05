"""Vocabulary syntax, class files, templates, text-classifier arithmetic and caching, classification logits."""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn.functional as F

from maskadapter import VILD_TEMPLATES, TextClassifier, Vocabulary, append_void, classification_logits


# ----------------------------------------------------------------------------- vocabulary
def test_inline_syntax_is_unambiguous():
    assert Vocabulary.parse("cat, sofa; dog").classes == (("cat",), ("sofa",), ("dog",))
    assert Vocabulary.parse("sofa|couch, cat\nwindow").classes == (("sofa", "couch"), ("cat",), ("window",))
    assert Vocabulary.parse(" cat ,, dog , ").names == ["cat", "dog"]
    assert Vocabulary.coerce(["sofa|couch", ["tv", "television"]]).num_synonyms == [2, 2]
    v = Vocabulary.parse("a|b|c, d")
    assert v.synonyms == ["a", "b", "c", "d"] and len(v) == 2


@pytest.mark.parametrize("text", ["", " , ;\n", "|"])
def test_empty_vocabulary_is_an_error(text):
    with pytest.raises(ValueError, match="empty"):
        Vocabulary.parse(text)


def test_duplicate_class_is_an_error():
    with pytest.raises(ValueError, match="'Cat' appears twice"):
        Vocabulary.parse("cat, dog, Cat")


def test_class_file(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_text("0:background,bg\n1:person, people\n2:invalid_class_id\n3:tv,television,  monitor\n\n")
    assert Vocabulary.from_file(path).classes == (("person", "people"), ("tv", "television", "monitor"))
    assert Vocabulary.from_file(path, keep_id0=True).classes[0] == ("background", "bg")
    with pytest.raises(FileNotFoundError, match="vocabulary file not found"):
        Vocabulary.from_file(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("0:background\n")
    with pytest.raises(ValueError, match="no classes"):
        Vocabulary.from_file(tmp_path / "empty.txt")


def test_vild_templates_exact():
    assert len(VILD_TEMPLATES) == 14
    assert VILD_TEMPLATES[0] == "a photo of a {}."
    assert VILD_TEMPLATES[1:5] == ("This is a photo of a {}", "There is a {} in the scene",
                                   "There is the {} in the scene", "a photo of a {} in the scene")
    assert VILD_TEMPLATES[-1] == "There is a large {} in the scene."


# ----------------------------------------------------------------------------- logits
def test_classification_logits_by_hand():
    emb = torch.tensor([[[3.0, 4.0, 0.0], [0.0, 0.0, 2.0]]])  # normalises to (.6,.8,0) and (0,0,1)
    text = torch.tensor([[1.0, 0.0, 0.0],   # class 0, synonym a
                         [0.0, 1.0, 0.0],   # class 0, synonym b
                         [0.0, 0.0, 1.0],   # class 1
                         [0.6, 0.0, 0.8]])  # void
    out = classification_logits(emb, text, torch.tensor(math.log(10.0)), [2, 1])
    expected = 10 * torch.tensor([[[0.8, 0.0, 0.36], [0.0, 1.0, 0.8]]])
    torch.testing.assert_close(out, expected)
    clamped = classification_logits(emb, text, math.log(1000.0), [2, 1])  # exp(scale) clamps at 100
    torch.testing.assert_close(clamped, 10 * expected)
    no_void = classification_logits(emb, text[:3], math.log(10.0), [2, 1])
    torch.testing.assert_close(no_void, expected[..., :2])
    per_image = classification_logits(emb, text[None], math.log(10.0), [2, 1])  # [B, S+1, D] text
    torch.testing.assert_close(per_image, expected)


def test_classification_logits_gradient_and_errors():
    emb = torch.randn(2, 3, 4, requires_grad=True)
    text = F.normalize(torch.randn(6, 4), dim=-1)
    out = classification_logits(emb, text, 0.0, [3, 1, 1])
    assert out.shape == (2, 3, 4)
    out.sum().backward()
    assert emb.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="text has 6 rows but num_synonyms sums to 3"):
        classification_logits(emb, text, 0.0, [1, 1, 1])
    with pytest.raises(ValueError, match="embeddings must have shape"):
        classification_logits(emb[0], text, 0.0, [3, 1, 1])
    with pytest.raises(ValueError, match="at least one"):
        classification_logits(emb, text, 0.0, [])


def test_append_void_normalises():
    out = append_void(torch.eye(2), torch.tensor([[3.0, 4.0]]))
    torch.testing.assert_close(out, torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]))


# ----------------------------------------------------------------------------- text classifier
class FakeText:
    """A stand-in backbone: each prompt gets a fixed pseudo-random embedding; counts encoded prompts."""

    class config:  # noqa: N801 - mimics ClipConfig's attribute
        name = "fake"

    def __init__(self, dim: int = 8, fingerprint: str = "model-a") -> None:
        self.dim, self.fingerprint, self.encoded, self.logit_scale = dim, fingerprint, [], torch.tensor(0.0)
        self.embed_dim = dim

    def vector(self, prompt: str) -> torch.Tensor:
        gen = torch.Generator().manual_seed(sum(ord(c) * (i + 1) for i, c in enumerate(prompt)) + 7919 * sum(map(ord, self.fingerprint)))
        return torch.randn(self.dim, generator=gen) * 3

    def tokenize(self, texts):
        self._batch = list(texts)
        return torch.zeros(len(texts), 77, dtype=torch.long)

    def encode_text(self, tokens):
        self.encoded.extend(self._batch)
        return torch.stack([self.vector(p) for p in self._batch])

    def text_fingerprint(self) -> str:
        return self.fingerprint


def test_text_classifier_arithmetic():
    fake = FakeText()
    vocab = Vocabulary.parse("cat|kitty, sofa")
    out = TextClassifier(fake, batch_size=5)(vocab)
    assert out.shape == (3, 8)
    for row, syn in zip(out, ["cat", "kitty", "sofa"]):
        per_template = torch.stack([F.normalize(fake.vector(t.format(syn)), dim=0) for t in VILD_TEMPLATES])
        torch.testing.assert_close(row, F.normalize(per_template.mean(0), dim=0))
    assert len(fake.encoded) == 3 * 14 and fake.encoded[14] == "a photo of a kitty."


def test_text_classifier_memory_cache_keyed_by_model_and_vocabulary():
    fake = FakeText()
    clf = TextClassifier(fake)
    first = clf("cat, sofa")
    assert len(fake.encoded) == 28
    assert clf(Vocabulary.parse("cat; sofa")) is first  # same vocabulary: no new encoding
    assert len(fake.encoded) == 28
    clf("sofa, cat")  # order matters
    assert len(fake.encoded) == 56
    fake.fingerprint = "model-b"  # other weights: recomputed
    assert not torch.allclose(clf("cat, sofa"), first)
    assert len(fake.encoded) == 84


def test_text_classifier_disk_cache_only_in_the_given_directory(tmp_path, monkeypatch):
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    cache = tmp_path / "cache"
    first = TextClassifier(FakeText(), cache_dir=cache)("cat, sofa")
    files = list(cache.iterdir())
    assert len(files) == 1 and files[0].suffix == ".safetensors"
    again = FakeText()
    torch.testing.assert_close(TextClassifier(again, cache_dir=cache)("cat, sofa"), first)
    assert again.encoded == []  # read from disk
    files[0].write_bytes(b"garbage")  # a damaged cache file is recomputed
    third = FakeText()
    torch.testing.assert_close(TextClassifier(third, cache_dir=cache)("cat, sofa"), first)
    assert len(third.encoded) == 28
    assert os.listdir(work) == []  # nothing written to the working directory
    TextClassifier(FakeText())("cat")
    assert os.listdir(work) == []


def test_text_classifier_errors():
    with pytest.raises(ValueError, match="empty"):
        TextClassifier(FakeText())([])
    with pytest.raises(ValueError, match="templates"):
        TextClassifier(FakeText(), templates=["no placeholder"])


def test_text_classifier_on_a_real_tiny_clip(tiny_model):
    clf = TextClassifier(tiny_model.backbone, batch_size=7)
    out = clf("cat|kitty, sofa, window")
    assert out.shape == (4, 32)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(4))
    torch.testing.assert_close(TextClassifier(tiny_model.backbone).encode(Vocabulary.parse("cat|kitty, sofa, window")),
                               out, rtol=1e-5, atol=1e-6)  # batching does not change the result
