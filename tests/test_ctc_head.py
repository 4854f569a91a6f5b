"""The CTC head: shapes, frame taps, and that it learns to spell and to rank candidate sequences."""

from __future__ import annotations

import pytest
import torch

from plcli.losses import CandidateCTCLoss, candidate_ctc_nll
from plcli.models.ctc import CTCHead, encoder_frames, frames_channels, greedy_decode
from plcli.models.encoders import build_encoder


@pytest.mark.parametrize("name", ["tcresnet", "tcresnet-small"])
@pytest.mark.parametrize("tap,frames", [(0, 151), (1, 76), (2, 38)])
def test_encoder_frames_rates_and_channels(name, tap, frames):
    enc = build_encoder(name, 64).eval()
    h = encoder_frames(enc, torch.randn(2, 64, 151), tap)
    assert h.shape == (2, frames_channels(enc, tap), frames)


def test_encoder_frames_rejects_other_encoders_and_taps():
    with pytest.raises(ValueError, match="TCResNet"):
        encoder_frames(build_encoder("resnet2d", 64), torch.randn(1, 64, 151))
    with pytest.raises(ValueError, match="tap"):
        encoder_frames(build_encoder("tcresnet", 64), torch.randn(1, 64, 151), tap=4)


def test_head_shapes_and_checks():
    head = CTCHead(24, 7, hidden=16, layers=1)
    lp = head(torch.randn(3, 24, 40))
    assert lp.shape == (40, 3, 7)
    torch.testing.assert_close(lp.exp().sum(-1), torch.ones(40, 3))
    for bad in ({"vocab_size": 1}, {"kernel_size": 4}, {"layers": -1}, {"dropout": 1.0}, {"hidden": 0}):
        with pytest.raises(ValueError):
            CTCHead(**{"in_channels": 24, "vocab_size": 7, **bad})


def _toy(n, seed, V=6, C=8, T=48):
    """Each token k lights channel k for 3 frames, one silent frame between tokens, noise around."""
    g = torch.Generator().manual_seed(seed)
    x = 0.3 * torch.randn(n, C, T, generator=g)
    seqs = []
    for i in range(n):
        L = int(torch.randint(2, 6, (1,), generator=g))
        seq = torch.randint(1, V, (L,), generator=g).tolist()
        t = int(torch.randint(0, 6, (1,), generator=g))
        for tok in seq:
            x[i, tok, t : t + 3] += 2.0
            t += 4
        seqs.append(seq)
    return x, seqs


def test_head_learns_to_spell_and_rank_candidates():
    torch.manual_seed(0)
    head = CTCHead(8, 6, hidden=32, layers=2, kernel_size=5, dropout=0.0)
    opt = torch.optim.Adam(head.parameters(), 3e-3)
    loss_fn = CandidateCTCLoss()
    for step in range(250):
        x, seqs = _toy(32, step)
        L = max(map(len, seqs))
        tg = torch.ones(32, 1, L, dtype=torch.long)
        for i, s in enumerate(seqs):
            tg[i, 0, : len(s)] = torch.tensor(s)
        tl = torch.tensor([[len(s)] for s in seqs])
        loss = loss_fn(head(x), torch.full((32,), x.shape[-1]), tg, tl, torch.ones(32, 1, dtype=torch.bool))
        opt.zero_grad()
        loss.backward()
        opt.step()
    head.eval()
    x, seqs = _toy(64, 10_000)
    with torch.no_grad():
        lp = head(x)
    decoded = greedy_decode(lp)
    assert sum(d == s for d, s in zip(decoded, seqs)) >= 55  # near-perfect spelling on new inputs
    # rank the truth among 4 candidates (the truth and 3 other rows' sequences)
    K, L = 4, max(map(len, seqs))
    tg = torch.ones(64, K, L, dtype=torch.long)
    tl = torch.zeros(64, K, dtype=torch.long)
    for i in range(64):
        for k in range(K):
            s = seqs[(i + 7 * k) % 64]
            tg[i, k, : len(s)] = torch.tensor(s)
            tl[i, k] = len(s)
    nll = candidate_ctc_nll(lp, torch.full((64,), lp.shape[0]), tg, tl, torch.ones(64, K, dtype=torch.bool))
    assert (nll.argmin(1) == 0).float().mean() >= 0.9
