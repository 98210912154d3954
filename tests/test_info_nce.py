"""info_nce against a direct per-anchor loop of paper Eq. 7-8, its masking, and its DDP equivalence."""
import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dicetalk.losses import info_nce, pair_statistics


def loop_info_nce(anchors, positives, tau, keys=None):
    """Eq. 7-8 one anchor at a time: omega = exp(cos / tau); L = -log(w(p) / (w(p) + sum_n w(n)))."""
    rows = [*anchors, *positives]
    b = len(anchors)
    keys = list(range(b)) if keys is None else [int(k) for k in keys]
    row_keys = keys + keys
    losses = []
    for i, s in enumerate(rows):
        p = (i + b) % (2 * b)
        omega = lambda t: math.exp(torch.nn.functional.cosine_similarity(s, t, dim=0).item() / tau)  # noqa: E731
        negatives = [rows[j] for j in range(2 * b) if j not in (i, p) and row_keys[j] != row_keys[i]]
        w_pos = omega(rows[p])
        losses.append(-math.log(w_pos / (w_pos + sum(omega(n) for n in negatives))))
    return sum(losses) / len(losses)


@pytest.mark.parametrize("keys", [None, [0, 1, 2, 3, 4, 5], [0, 1, 0, 2, 1, 3], [7, 7, 7, 1, 2, 2]])
def test_matches_loop(keys):
    g = torch.Generator().manual_seed(0)
    a, p = torch.randn(6, 5, generator=g, dtype=torch.float64), torch.randn(6, 5, generator=g, dtype=torch.float64)
    k = None if keys is None else torch.tensor(keys)
    got = info_nce(a, p, 0.3, k).item()
    assert got == pytest.approx(loop_info_nce(a, p, 0.3, keys), rel=1e-9)


def test_masking_changes_the_loss_and_all_same_key_is_zero():
    g = torch.Generator().manual_seed(1)
    a, p = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
    unmasked = info_nce(a, p, 0.2)
    masked = info_nce(a, p, 0.2, torch.tensor([0, 0, 1, 2]))
    assert masked.item() < unmasked.item()  # fewer negatives in every denominator of rows 0 and 1
    # all rows share one key: only the positive is left in each denominator, so every term is -log 1
    assert info_nce(a, p, 0.2, torch.zeros(4, dtype=torch.long)).item() == pytest.approx(0.0, abs=1e-6)


def test_cosine_scale_invariance_and_stability():
    g = torch.Generator().manual_seed(2)
    a, p = torch.randn(5, 16, generator=g), torch.randn(5, 16, generator=g)
    assert info_nce(a * 1e3, p * 1e-3, 0.1).item() == pytest.approx(info_nce(a, p, 0.1).item(), rel=1e-5)
    tiny_tau = info_nce(a, a.clone(), 1e-4)  # exp(1e4) overflows without log-sum-exp
    assert torch.isfinite(tiny_tau) and tiny_tau.item() == pytest.approx(0.0, abs=1e-4)


def test_gradient_reaches_both_sides():
    g = torch.Generator().manual_seed(3)
    a = torch.randn(4, 6, generator=g, requires_grad=True)
    p = torch.randn(4, 6, generator=g, requires_grad=True)
    info_nce(a, p, 0.5, torch.tensor([0, 1, 1, 2])).backward()
    assert a.grad.abs().sum() > 0 and p.grad.abs().sum() > 0


def test_pair_statistics():
    a = torch.eye(4)
    stats = pair_statistics(a, a.clone())  # positives identical, negatives orthogonal
    assert stats["pos_cos"].item() == pytest.approx(1.0)
    assert stats["neg_cos"].item() == pytest.approx(0.0)
    assert stats["top1"].item() == 1.0
    swapped = pair_statistics(a, a[[1, 0, 2, 3]])  # pairs 0 and 1 retrieve each other's positive
    assert swapped["top1"].item() == pytest.approx(0.5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, data: dict, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        b = data["a"].shape[0] // world
        sl = slice(rank * b, (rank + 1) * b)
        a = data["a"][sl].clone().requires_grad_(True)
        p = data["p"][sl].clone().requires_grad_(True)
        loss = info_nce(a, p, 0.25, data["keys"][sl])
        loss.backward()
        mean_loss = loss.detach().clone()
        dist.all_reduce(mean_loss)
        torch.save({"loss": mean_loss / world, "ga": a.grad, "gp": p.grad}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_equals_one_process(tmp_path):
    g = torch.Generator().manual_seed(4)
    data = {
        "a": torch.randn(6, 8, generator=g, dtype=torch.float64),
        "p": torch.randn(6, 8, generator=g, dtype=torch.float64),
        "keys": torch.tensor([0, 1, 2, 0, 3, 4]),  # key 0 appears on both ranks: masked across ranks
    }
    out = str(tmp_path / "res")
    mp.spawn(_ddp_worker, args=(2, _free_port(), data, out), nprocs=2, join=True)
    res = [torch.load(f"{out}.{r}") for r in range(2)]

    a, p = data["a"].clone().requires_grad_(True), data["p"].clone().requires_grad_(True)
    ref = info_nce(a, p, 0.25, data["keys"])
    ref.backward()
    assert res[0]["loss"].item() == pytest.approx(ref.item(), rel=1e-10)
    # DDP averages the ranks' gradients, so rank gradients / world must equal the one-process gradient
    ga = torch.cat([r["ga"] for r in res]) / 2
    gp = torch.cat([r["gp"] for r in res]) / 2
    torch.testing.assert_close(ga, a.grad)
    torch.testing.assert_close(gp, p.grad)
