"""Quality of emotion embeddings: clustering strength (paper Table 5), kNN emotion accuracy, an identity
linear probe (identity leakage), and a t-SNE figure. Pure functions over numpy arrays."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.spatial.distance import cdist, pdist


def clustering_strength(x: np.ndarray, emotions: np.ndarray, identities: np.ndarray) -> dict[int, float]:
    """d_inter / d_intra per emotion, with the emotions of one identity as the categories (Table 5).

    For identity i and emotion e: d_intra = mean Euclidean distance between two different samples of
    (i, e); d_inter = mean distance from a sample of (i, e) to a sample of another emotion of i. The ratio is
    averaged over the identities having >= 2 samples of e and at least one other emotion. Returns
    {emotion id: ratio}; take the mean of the values for one figure.
    """
    x, emotions, identities = np.asarray(x, np.float64), np.asarray(emotions), np.asarray(identities)
    ratios: dict[int, list[float]] = {}
    for ident in np.unique(identities):
        own = identities == ident
        for e in np.unique(emotions[own]):
            inside, outside = x[own & (emotions == e)], x[own & (emotions != e)]
            if len(inside) < 2 or len(outside) == 0:
                continue
            d_intra = pdist(inside).mean()
            d_inter = cdist(inside, outside).mean()
            ratios.setdefault(int(e), []).append(d_inter / max(d_intra, 1e-12))
    return {e: float(np.mean(r)) for e, r in sorted(ratios.items())}


def knn_accuracy(
    x: np.ndarray, labels: np.ndarray, k: int = 5, exclude_groups: np.ndarray | None = None
) -> float:
    """Leave-one-out k-nearest-neighbour accuracy under cosine similarity.

    Neighbours sharing the query's ``exclude_groups`` value (e.g. its clip, or its identity) are not
    eligible, so near-duplicate windows cannot vote. Ties go to the label of the nearer neighbours.
    """
    x = np.asarray(x, np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    labels = np.asarray(labels)
    groups = np.arange(len(x)) if exclude_groups is None else np.asarray(exclude_groups)
    sim = x @ x.T
    sim[groups[:, None] == groups[None, :]] = -np.inf
    np.fill_diagonal(sim, -np.inf)
    correct = 0
    for i in range(len(x)):
        eligible = np.isfinite(sim[i])
        order = np.argsort(-sim[i][eligible], kind="stable")[:k]
        votes = labels[eligible][order]
        # weights k, k-1, ... / (k+1) < 1 break ties without overriding a majority
        weights = 1 + np.linspace(1, 0, len(votes), endpoint=False) / (k + 1) ** 2
        scores: dict = {}
        for v, w in zip(votes, weights):
            scores[v] = scores.get(v, 0.0) + w
        correct += bool(scores) and max(scores, key=scores.get) == labels[i]
    return correct / len(x)


def linear_probe_accuracy(x: np.ndarray, labels: np.ndarray, groups: np.ndarray, folds: int = 4) -> float:
    """Cross-validated accuracy of a logistic-regression probe predicting ``labels`` from ``x``.

    Folds never split a group. For identity leakage pass the emotion as the group: the probe is trained
    on some emotions and tested on the others, so it scores identity information that holds across
    emotions (with clip groups, any set of tight (identity, emotion) clusters would be separable in a
    high-dimensional space and every embedding would score ~1).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    groups = np.asarray(groups)
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    cv = GroupKFold(n_splits=min(folds, len(np.unique(groups))))
    return float(np.mean(cross_val_score(probe, np.asarray(x), np.asarray(labels), groups=groups, cv=cv)))


def tsne_figure(x: np.ndarray, labels: np.ndarray, names: Sequence[str], title: str = "", seed: int = 0):
    """A matplotlib Figure of a 2-D t-SNE of ``x``, one colour per label (``names[label]`` in the legend)."""
    from matplotlib.figure import Figure
    from sklearn.manifold import TSNE

    x, labels = np.asarray(x, np.float64), np.asarray(labels)
    perplexity = float(min(30, max(2, (len(x) - 1) // 3)))
    xy = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)
    fig = Figure(figsize=(6, 5))
    ax = fig.add_subplot()
    for lab in np.unique(labels):
        sel = labels == lab
        ax.scatter(xy[sel, 0], xy[sel, 1], s=8, label=names[int(lab)])
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=7, markerscale=2, loc="best")
    fig.tight_layout()
    return fig
