"""trainer.metrics against CLIP_benchmark's own code, hand-checked ranks, and planted structure."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from clip_benchmark.metrics import zeroshot_classification, zeroshot_retrieval
from sklearn.metrics import balanced_accuracy_score
from torch.utils.data import DataLoader, TensorDataset

from trainer import metrics


class EmbeddingTableModel:
    """A 'model' whose encoders return stored embeddings, so CLIP_benchmark runs on given vectors."""

    def __init__(self, text_table: torch.Tensor):
        self.text_table = text_table

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return images

    def encode_text(self, token_rows: torch.Tensor) -> torch.Tensor:
        return self.text_table[token_rows]


def _index_tokenizer(vocabulary: list[str]):
    """Tokenizer mapping each whole string to its row in the text table."""
    index = {text: i for i, text in enumerate(vocabulary)}
    return lambda texts: torch.tensor([index[t] for t in texts])


def _random_unit(n: int, dim: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(n, dim, generator=torch.Generator().manual_seed(seed)), dim=-1)


@pytest.mark.parametrize("texts_per_image", [1, 3])
def test_retrieval_equals_clip_benchmark(texts_per_image: int) -> None:
    n_images, dim = 60, 8
    images = _random_unit(n_images, dim, seed=1)
    # texts are noisy copies of their image so the recalls are far from 0 and 1
    texts = F.normalize(images.repeat_interleave(texts_per_image, 0)
                        + 0.9 * torch.randn(n_images * texts_per_image, dim,
                                            generator=torch.Generator().manual_seed(2)), dim=-1)
    captions = [f"caption {j}" for j in range(len(texts))]
    caption_lists = [captions[i * texts_per_image:(i + 1) * texts_per_image] for i in range(n_images)]
    loader = DataLoader(list(zip(images, caption_lists)), batch_size=16,
                        collate_fn=lambda batch: (torch.stack([b[0] for b in batch]), [b[1] for b in batch]))
    theirs = zeroshot_retrieval.evaluate(EmbeddingTableModel(texts), loader, _index_tokenizer(captions), "cpu",
                                         amp=False, recall_k_list=[1, 5, 10])

    positives = [range(i * texts_per_image, (i + 1) * texts_per_image) for i in range(n_images)]
    ours = metrics.retrieval_metrics(images, texts, positives, chunk_size=7)
    for k in (1, 5, 10):
        # CLIP_benchmark names retrieval by what is retrieved: "text_retrieval" = image query -> texts
        assert ours[f"i2t_R@{k}"] == pytest.approx(theirs[f"text_retrieval_recall@{k}"], abs=1e-6)
        assert ours[f"t2i_R@{k}"] == pytest.approx(theirs[f"image_retrieval_recall@{k}"], abs=1e-6)
    assert 0.0 < ours["i2t_R@1"] < 1.0 and 0.0 < ours["t2i_R@1"] < 1.0


@pytest.mark.parametrize("n_classes", [3, 7])
def test_zeroshot_equals_clip_benchmark(n_classes: int) -> None:
    dim, n_images = 12, 150
    templates = ["a photo of {c}.", "{c} product", "an item: {c}"]
    classnames = [f"class{c}" for c in range(n_classes)]
    prompts = [t.format(c=c) for c in classnames for t in templates]
    prompt_emb = torch.randn(len(prompts), dim, generator=torch.Generator().manual_seed(3)) * 2.0
    labels = torch.randint(n_classes, (n_images,), generator=torch.Generator().manual_seed(4))
    class_centres = F.normalize(prompt_emb.view(n_classes, len(templates), dim), dim=-1).mean(1)
    images = class_centres[labels] + 0.6 * torch.randn(n_images, dim, generator=torch.Generator().manual_seed(5))

    # CLIP_benchmark's classifier and logits; its `accuracy` calls float() on a 1-element array, which
    # numpy >= 2.4 refuses, so its expression is repeated here with `.item()` (the only change).
    classifier = zeroshot_classification.zero_shot_classifier(
        EmbeddingTableModel(prompt_emb), _index_tokenizer(prompts), classnames, templates, "cpu", amp=False)
    logits, target = zeroshot_classification.run_classification(
        EmbeddingTableModel(prompt_emb), classifier, DataLoader(TensorDataset(images, labels), batch_size=32),
        "cpu", amp=False)
    top = logits.topk(min(5, n_classes), 1, True, True)[1].t()
    correct = top.eq(target.view(1, -1).expand_as(top))
    theirs = {"acc1": correct[:1].reshape(-1).float().sum().item() / len(target),
              "acc5": correct[:5].reshape(-1).float().sum().item() / len(target) if n_classes >= 5 else math.nan,
              "mean_per_class_recall": balanced_accuracy_score(target, logits.argmax(axis=1))}

    weights = metrics.zeroshot_class_weights(prompt_emb.view(n_classes, len(templates), dim))
    ours = metrics.zeroshot_metrics(images, weights, labels)
    assert ours["zeroshot_acc1"] == pytest.approx(theirs["acc1"], abs=1e-9)
    assert ours["zeroshot_mean_per_class_recall"] == pytest.approx(theirs["mean_per_class_recall"], abs=1e-9)
    if n_classes >= 5:
        assert ours["zeroshot_acc5"] == pytest.approx(theirs["acc5"], abs=1e-9)
    else:
        assert math.isnan(ours["zeroshot_acc5"]) and math.isnan(theirs["acc5"])
    assert 0.2 < ours["zeroshot_acc1"] < 1.0
    assert ours["zeroshot_n"] == n_images


def test_zeroshot_skips_unlabelled_and_refuses_bad_labels() -> None:
    weights = torch.eye(3)
    images = torch.eye(3)[[0, 1, 2, 0]]
    result = metrics.zeroshot_metrics(images, weights, torch.tensor([0, 1, -1, 2]))
    assert result["zeroshot_n"] == 3
    assert result["zeroshot_acc1"] == pytest.approx(2 / 3)
    # classes 0 and 1 are recalled, class 2's only row is wrong
    assert result["zeroshot_mean_per_class_recall"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="label 3"):
        metrics.zeroshot_metrics(images, weights, torch.tensor([0, 1, 3, 2]))
    with pytest.raises(ValueError, match="no labelled"):
        metrics.zeroshot_metrics(images, weights, torch.full((4,), -1))


def test_hand_checked_ranks() -> None:
    scores = torch.tensor([[0.9, 0.1, 0.5],
                           [0.8, 0.3, 0.7],
                           [0.2, 0.9, 0.6]])
    ranks = metrics.retrieval_ranks(scores, torch.eye(3))
    assert ranks.tolist() == [1, 3, 2]
    summary = metrics.rank_summary(ranks, "i2t")
    assert summary["i2t_mrr"] == pytest.approx((1 + 1 / 3 + 1 / 2) / 3)
    assert summary["i2t_mean_rank"] == pytest.approx(2.0)
    assert summary["i2t_median_rank"] == 2.0
    assert summary["i2t_R@1"] == pytest.approx(1 / 3)
    assert summary["i2t_R@5"] == 1.0
    # several positives: the best one counts and other positives never push it down
    assert metrics.retrieval_ranks(scores, torch.eye(3), [[0], [1, 2], [0, 2]]).tolist() == [1, 2, 2]
    # a tie with a negative counts against the query; a collapsed model ranks last, not first
    assert metrics.retrieval_ranks(torch.ones(4, 2), torch.ones(4, 2)).tolist() == [4, 4, 4, 4]
    assert metrics.rank_summary(torch.tensor([1, 4]), "t2i")["t2i_median_rank"] == 2.5


def test_retrieval_positive_mapping_and_errors() -> None:
    images, texts = _random_unit(5, 4, 0), _random_unit(7, 4, 1)
    as_mapping = metrics.retrieval_metrics(images, texts, {0: [0, 5], 1: [1], 2: [2, 6], 3: [3], 4: [4]})
    as_lists = metrics.retrieval_metrics(images, texts, [[0, 5], [1], [2, 6], [3], [4]])
    assert as_mapping == as_lists
    with pytest.raises(ValueError, match="pass `positives`"):
        metrics.retrieval_metrics(images, texts)
    with pytest.raises(ValueError, match="no positive"):
        metrics.retrieval_metrics(images, texts, [[0], [1], [2], [3], [4]])  # texts 5, 6 have no image
    with pytest.raises(ValueError, match="out of range"):
        metrics.retrieval_ranks(images, texts, [[0], [1], [2], [3], [9]])


def test_non_finite_embeddings_are_refused() -> None:
    broken = _random_unit(4, 3, 0)
    broken[2, 1] = math.nan
    fine = _random_unit(4, 3, 1)
    with pytest.raises(ValueError, match="NaN"):
        metrics.retrieval_metrics(broken, fine)
    with pytest.raises(ValueError, match="NaN"):
        metrics.zeroshot_metrics(broken, torch.eye(3), torch.tensor([0, 1, 2, 0]))
    with pytest.raises(ValueError, match="NaN"):
        metrics.link_prediction_metrics(broken, torch.tensor([[0], [1]]), torch.tensor([[0], [1]]))


def test_chunked_equals_unchunked() -> None:
    queries, candidates = _random_unit(97, 6, 7), _random_unit(83, 6, 8)
    generator = torch.Generator().manual_seed(9)
    positives = [torch.randint(83, (int(torch.randint(1, 4, (1,), generator=generator)),),
                               generator=generator).tolist() for _ in range(97)]
    reference = metrics.retrieval_ranks(queries, candidates, positives, chunk_size=len(queries))
    for chunk_size in (1, 2, 5, 16, 31, 96, 97, 1000):
        assert torch.equal(metrics.retrieval_ranks(queries, candidates, positives, chunk_size), reference)
    # and the full-matrix rank computed independently
    scores = queries @ candidates.t()
    for q, pos in enumerate(positives):
        best = scores[q, pos].max()
        others = [c for c in range(83) if c not in pos]
        assert reference[q] == 1 + int((scores[q, others] >= best).sum())


def _planted_graph(n_clusters: int = 10, size: int = 20, dim: int = 16, noise: float = 0.1):
    """Clustered embeddings with every within-cluster pair linked."""
    generator = torch.Generator().manual_seed(11)
    centres = F.normalize(torch.randn(n_clusters, dim, generator=generator), dim=-1)
    cluster = torch.arange(n_clusters).repeat_interleave(size)
    emb = F.normalize(centres[cluster] + noise * torch.randn(len(cluster), dim, generator=generator), dim=-1)
    src, dst = torch.triu_indices(len(cluster), len(cluster), offset=1)
    same = cluster[src] == cluster[dst]
    return emb, torch.stack([src[same], dst[same]])


def test_link_prediction_ranks_planted_neighbours_high() -> None:
    emb, edges = _planted_graph()
    held_out = edges[:, torch.randperm(edges.shape[1], generator=torch.Generator().manual_seed(0))[:150]]
    planted = metrics.link_prediction_metrics(emb, held_out, edges, n_negatives=50, seed=0)
    assert planted["lp_n_queries"] == 300 and planted["lp_short_negatives"] == 0
    assert planted["lp_mrr"] > 0.8 and planted["lp_hits@10"] > 0.95
    shuffled = metrics.link_prediction_metrics(_random_unit(len(emb), 16, 12), held_out, edges,
                                               n_negatives=50, seed=0)
    assert shuffled["lp_mrr"] < 0.25  # chance is about H(51)/51 ~ 0.09
    assert metrics.link_prediction_metrics(emb, held_out, edges, n_negatives=50, seed=0) == planted


def test_negatives_avoid_query_positive_and_neighbours() -> None:
    _, edges = _planted_graph(n_clusters=4, size=5)
    queries, positives = edges[0], edges[1]
    negatives, valid = metrics.sample_negatives(queries, positives, torch.arange(20), edges, 20, 30, seed=1)
    assert valid.all()
    cluster = torch.arange(4).repeat_interleave(5)
    assert (cluster[negatives] != cluster[queries][:, None]).all()
    # a query linked to every candidate gets no valid negative, and says so
    star = torch.stack([torch.zeros(4, dtype=torch.long), torch.arange(1, 5)])
    result = metrics.link_prediction_metrics(_random_unit(5, 3, 0), star[:, :1], star, n_negatives=3,
                                             both_directions=False)
    assert result["lp_short_negatives"] == 1 and result["lp_mrr"] == 1.0


def _blobs(n_per_class: int, n_classes: int, dim: int, spread: float, seed: int):
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_classes, dim, generator=generator)
    labels = torch.arange(n_classes).repeat_interleave(n_per_class)
    emb = F.normalize(centres[labels] + spread * torch.randn(len(labels), dim, generator=generator), dim=-1)
    return emb, labels


def test_fewshot_separable_data_is_learned() -> None:
    train, train_labels = _blobs(30, 5, 16, 0.3, seed=0)
    test, test_labels = _blobs(40, 5, 16, 0.3, seed=0)  # same centres (same seed), fresh noise below
    test = F.normalize(test + 0.05 * torch.randn(test.shape, generator=torch.Generator().manual_seed(1)), dim=-1)
    result = metrics.fewshot_metrics(train, train_labels, test, test_labels, n_classes=5, seed=0)
    assert result["fewshot_5_acc1"] > 0.9 and result["fewshot_16_acc1"] > 0.9
    assert result["fewshot_16_short_classes"] == 0
    assert result == metrics.fewshot_metrics(train, train_labels, test, test_labels, n_classes=5, seed=0)


def test_fewshot_random_labels_are_at_chance() -> None:
    train, _ = _blobs(30, 4, 16, 0.3, seed=0)
    test, _ = _blobs(100, 4, 16, 0.3, seed=2)
    generator = torch.Generator().manual_seed(3)
    result = metrics.fewshot_metrics(train, torch.randint(4, (len(train),), generator=generator),
                                     test, torch.randint(4, (len(test),), generator=generator),
                                     n_classes=4, ks=(16,), seed=0)
    assert abs(result["fewshot_16_acc1"] - 0.25) < 0.1


def test_fewshot_short_and_missing_classes() -> None:
    train, train_labels = _blobs(10, 3, 8, 0.2, seed=4)
    train_labels[train_labels == 2] = -1  # class 2 has no train example at all
    train_labels[:7] = -1                 # class 0 keeps 3 examples, fewer than k = 5
    test, test_labels = _blobs(10, 3, 8, 0.2, seed=4)
    result = metrics.fewshot_metrics(train, train_labels, test, test_labels, n_classes=3, ks=(1, 5), seed=0)
    assert result["fewshot_1_short_classes"] == 0
    assert result["fewshot_5_short_classes"] == 1
    # class 2's test rows cannot be predicted and count as errors: at most 2/3 correct
    assert result["fewshot_5_acc1"] <= 2 / 3 + 1e-9
    with pytest.raises(ValueError, match="labelled train and test"):
        metrics.fewshot_metrics(train, torch.full((30,), -1), test, test_labels, n_classes=3)


# ---------------------------------------------------------------------------------------------
# category- and neighbourhood-level retrieval, hand-computed

# texts are e0..e4, so score(image i, text j) = _SCORES[i][j] and score(text j, image i) = _SCORES[i][j]
_SCORES = torch.tensor([[0.1, 0.9, 0.5, 0.2, 0.0],
                        [0.8, 0.3, 0.6, 0.1, 0.7],
                        [0.2, 0.3, 0.4, 0.1, 0.9],
                        [0.9, 0.8, 0.1, 0.2, 0.3],
                        [0.0, 0.0, 0.0, 0.0, 1.0]])
_TEXTS = torch.eye(5)


def test_category_level_retrieval_by_hand() -> None:
    """Labels 0 0 1 1 -1: a hit is any text (image) of the query's label; product 4 is unlabelled.

    i2t: image 0 ranks text 1 (label 0, 0.9) first: rank 1; image 1 text 0 (0.8): 1; image 2 text 2 (0.4) under
    the unlabelled text 4 (0.9): 2; image 3 its best label-1 text 3 (0.2) under 0.9, 0.8, 0.3: 4.
    t2i (columns): text 0 best label-0 image 1 (0.8) under image 3 (0.9): 2; text 1 image 0 (0.9): 1; text 2
    image 2 (0.4) under 0.5, 0.6: 3; text 3 image 3 (0.2) ties image 0 (0.2, label 0), ties go against: 2.
    """
    labels = torch.tensor([0, 0, 1, 1, -1])
    out = metrics.category_retrieval_metrics(_SCORES, _TEXTS, labels, chunk_size=3, ks=(1, 2, 5))
    assert out["cat_n"] == 4
    assert out["i2t_cat_R@1"] == 0.5 and out["i2t_cat_R@2"] == 0.75 and out["i2t_cat_R@5"] == 1.0
    assert out["i2t_cat_mrr"] == pytest.approx((1 + 1 + 1 / 2 + 1 / 4) / 4)
    assert out["i2t_cat_mean_rank"] == 2.0
    assert out["t2i_cat_R@1"] == 0.25 and out["t2i_cat_R@2"] == 0.75
    assert out["t2i_cat_mrr"] == pytest.approx((1 / 2 + 1 + 1 / 3 + 1 / 2) / 4)
    assert out["t2i_cat_mean_rank"] == 2.0 and out["t2i_cat_median_rank"] == 2.0
    # the exact-pair ranks of the same scores are worse: category level is a looser relation
    exact = metrics.retrieval_metrics(_SCORES, _TEXTS, ks=(1,))
    assert exact["i2t_R@1"] == 0.2 < out["i2t_cat_R@1"]
    assert metrics.category_retrieval_metrics(_SCORES, _TEXTS, torch.full((5,), -1)) == {}  # no labels, no scores


def test_neighbourhood_level_retrieval_by_hand() -> None:
    """Edges 0-2 and 1-3; a hit is the product itself or a neighbour.

    i2t: image 0 {0, 2}: best 0.5 under 0.9: 2; image 1 {1, 3}: 0.3 under 0.8 0.6 0.7: 4; image 2 {2, 0}: 0.4
    under 0.9: 2; image 3 {3, 1}: 0.8 under 0.9: 2; image 4 {4}: 1.
    t2i: text 0 {0, 2}: image 2 (0.2) under 0.8 0.9: 3; text 1: image 3 (0.8) under 0.9: 2; text 2: image 0 (0.5)
    under 0.6: 2; text 3: image 3 (0.2) ties image 0: 2; text 4: image 4 (1.0): 1.
    """
    neighbours = [[2], [3], [0], [1], []]
    out = metrics.neighbour_retrieval_metrics(_SCORES, _TEXTS, neighbours, chunk_size=2, ks=(1, 2, 5))
    assert out["i2t_nbr_R@1"] == pytest.approx(0.2) and out["i2t_nbr_R@2"] == pytest.approx(0.8)
    assert out["i2t_nbr_mean_rank"] == pytest.approx(2.2)
    assert out["i2t_nbr_mrr"] == pytest.approx((1 / 2 + 1 / 4 + 1 / 2 + 1 / 2 + 1) / 5)
    assert out["t2i_nbr_R@1"] == pytest.approx(0.2) and out["t2i_nbr_R@2"] == pytest.approx(0.8)
    assert out["t2i_nbr_mean_rank"] == pytest.approx(2.0)
    assert out["t2i_nbr_mrr"] == pytest.approx((1 / 3 + 1 / 2 + 1 / 2 + 1 / 2 + 1) / 5)
    assert out["nbr_with_neighbour"] == pytest.approx(0.8)
    # without neighbours it is exact-pair retrieval under other names; `same` widens "the product itself"
    plain = metrics.neighbour_retrieval_metrics(_SCORES, _TEXTS, [[]] * 5)
    exact = metrics.retrieval_metrics(_SCORES, _TEXTS)
    assert all(plain[key.replace("_", "_nbr_", 1)] == value for key, value in exact.items())
    widened = metrics.neighbour_retrieval_metrics(_SCORES, _TEXTS, [[]] * 5, same=[[0, 1], [1, 0], [2], [3], [4]])
    assert widened["i2t_nbr_R@1"] == pytest.approx(0.6)  # images 0 and 1 rank each other's text first


def test_label_ranks_refuse_unlabelled_queries_and_missing_positives() -> None:
    with pytest.raises(ValueError, match="every query needs a label"):
        metrics.label_retrieval_ranks(_SCORES, _TEXTS, torch.tensor([0, -1, 0, 0, 0]), torch.zeros(5))
    with pytest.raises(ValueError, match="no candidate"):
        metrics.label_retrieval_ranks(_SCORES[:1], _TEXTS, torch.tensor([3]), torch.tensor([0, 0, 1, 1, -1]))
    with pytest.raises(ValueError, match="labels for"):
        metrics.label_retrieval_ranks(_SCORES, _TEXTS, torch.zeros(4), torch.zeros(5))
