"""Embedding-quality functions: clustering strength (Table 5), kNN, identity probe, t-SNE figure."""
import itertools

import numpy as np
import pytest

from dicetalk.evaluation.embedding import clustering_strength, knn_accuracy, linear_probe_accuracy, tsne_figure


def test_clustering_strength_hand_example():
    # one identity; emotion 0 at x = 0, 1; emotion 1 at x = 10, 11
    x = np.array([[0.0], [1.0], [10.0], [11.0]])
    got = clustering_strength(x, np.array([0, 0, 1, 1]), np.zeros(4))
    # intra = 1; inter = mean(10, 11, 9, 10) = 10
    assert got == {0: pytest.approx(10.0), 1: pytest.approx(10.0)}


def loop_strength(x, emotions, identities):
    per = {}
    for i in set(identities):
        for e in set(emotions[identities == i]):
            ins = [x[j] for j in range(len(x)) if identities[j] == i and emotions[j] == e]
            out = [x[j] for j in range(len(x)) if identities[j] == i and emotions[j] != e]
            if len(ins) < 2 or not out:
                continue
            intra = np.mean([np.linalg.norm(a - b) for a, b in itertools.combinations(ins, 2)])
            inter = np.mean([np.linalg.norm(a - b) for a in ins for b in out])
            per.setdefault(e, []).append(inter / intra)
    return {e: np.mean(v) for e, v in per.items()}


def test_clustering_strength_matches_loop():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 4))
    emotions, identities = rng.integers(0, 4, 60), rng.integers(0, 3, 60)
    emotions[0] = 7  # a singleton emotion: no intra distance, skipped for that identity
    got, ref = clustering_strength(x, emotions, identities), loop_strength(x, emotions, identities)
    assert got.keys() == ref.keys()
    for e in ref:
        assert got[e] == pytest.approx(ref[e])


def test_clustering_strength_orders_separation():
    rng = np.random.default_rng(1)
    emotions = np.repeat(np.arange(4), 10)
    centers = rng.normal(size=(4, 8)) * 5
    tight = centers[emotions] + rng.normal(size=(40, 8)) * 0.5
    loose = centers[emotions] + rng.normal(size=(40, 8)) * 5
    ids = np.zeros(40)
    assert np.mean(list(clustering_strength(tight, emotions, ids).values())) > 3
    assert np.mean(list(clustering_strength(loose, emotions, ids).values())) < 1.5


def test_knn_hand_example_and_exclusion():
    x = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], float)
    labels = np.array([0, 0, 1, 1])
    assert knn_accuracy(x, labels, k=1) == 1.0
    # excluding each point's own group (= its cluster) leaves only wrong-label neighbours
    assert knn_accuracy(x, labels, k=1, exclude_groups=np.array([0, 0, 1, 1])) == 0.0
    # k = 2 ties (one vote each) go to the nearer neighbour: points 0 and 1 (label 1) are right, point 2
    # (label 0, both neighbours label 1) is wrong; breaking ties by the smaller label would give 0
    x3 = np.array([[1, 0], [0.99, 0.1], [0.9, 0.4]])
    assert knn_accuracy(x3, np.array([1, 1, 0]), k=2) == pytest.approx(2 / 3)


def test_identity_probe_separates_informative_from_random_features():
    rng = np.random.default_rng(2)
    ids = np.repeat(np.arange(4), 30)
    clips = np.arange(120) // 2  # two windows per clip, kept in one fold
    informative = np.eye(4)[ids] * 3 + rng.normal(size=(120, 4))
    noise = rng.normal(size=(120, 16))
    assert linear_probe_accuracy(informative, ids, clips) > 0.9
    assert linear_probe_accuracy(noise, ids, clips) < 0.5


def test_identity_probe_grouped_by_emotion_needs_identity_shared_across_emotions():
    rng = np.random.default_rng(5)
    ids, emotions = np.repeat(np.arange(3), 40), np.tile(np.repeat(np.arange(8), 5), 3)
    # one random centre per (identity, emotion): identity is not shared across emotions
    cells = rng.normal(size=(3, 8, 64)) * 3
    clustered = cells[ids, emotions] + rng.normal(size=(120, 64)) * 0.3
    assert linear_probe_accuracy(clustered, ids, np.arange(120)) > 0.9  # every cell seen in training
    assert linear_probe_accuracy(clustered, ids, emotions) < 0.6  # unseen emotions: near chance (1/3)
    shared = clustered + np.eye(3)[ids] @ rng.normal(size=(3, 64)) * 3  # an identity offset in every emotion
    assert linear_probe_accuracy(shared, ids, emotions) > 0.9


def test_tsne_figure():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(24, 6))
    fig = tsne_figure(x, np.repeat([0, 2, 5], 8), ["a", "b", "c", "d", "e", "f"], title="t")
    ax = fig.axes[0]
    assert sum(len(c.get_offsets()) for c in ax.collections) == 24
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a", "c", "f"]
