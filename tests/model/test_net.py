"""The network on its own: resampling placement measured against the pretrained backbone, the Gaussian term."""

import pytest
import torch


def test_fixed_grid_resizes_place_cells_where_the_backbone_responds():
    """The constant-matmul resizes are bilinear with cell j of a stride-s map at pixel s*j - (s-1)/2, on the
    image and on a finer grid; beyond the last cell its value repeats; each size gets its own matrices."""
    from inspector.config.network import NetworkSettings
    from inspector.model.backbone import default_weights_path
    from inspector.model.net import InspectorNet, interp_matrix

    torch.testing.assert_close(interp_matrix(48, 6) @ torch.arange(6.0), ((torch.arange(48.0) + 3.5) / 8).clamp(0, 5))
    torch.testing.assert_close(interp_matrix(12, 6) @ torch.arange(6.0), ((torch.arange(12.0) + 0.5) / 2).clamp(0, 5))
    net = InspectorNet(NetworkSettings(gauss_cell=4), (6, 10), default_weights_path())
    impulse = torch.zeros(1, 1, 6, 10)
    impulse[0, 0, 2, 3] = 1.0

    def centre(m: torch.Tensor) -> tuple[float, float]:
        ys, xs = torch.meshgrid(torch.arange(m.shape[0]), torch.arange(m.shape[1]), indexing="ij")
        return float((m * ys).sum() / m.sum()), float((m * xs).sum() / m.sum())

    up = net.resize(impulse, (48, 80))[0, 0]
    assert centre(up) == pytest.approx((8 * 2 - 3.5, 8 * 3 - 3.5))  # cell (2, 3) at pixel s*j - (s-1)/2
    tent = torch.tensor([0.5625, 0.6875, 0.8125, 0.9375, 0.9375, 0.8125, 0.6875, 0.5625])  # 1 - |i + 3.5 - 8j| / 8
    torch.testing.assert_close(up[12, 17:25], tent * 0.9375)
    assert net.resize(torch.ones(1, 1, 6, 10), (48, 80)).eq(1.0).all()  # the right/bottom edge repeats the last cell
    odd = net.resize(impulse, (18, 30))[0, 0]  # another size (stride 3): its own matrices, same convention
    assert centre(odd) == pytest.approx((3 * 2 - 1, 3 * 3 - 1))
    with torch.no_grad():
        out = net(torch.randn(2, 3, 48, 80))
    assert out.anomaly_map.shape == (2, 1, 48, 80) and torch.isfinite(out.score).all()


def test_feature_cells_sit_where_the_backbone_responds():
    """The "response" placement is measured, not assumed: a point added to the image moves the stride-8 and
    stride-16 cells of the pretrained backbone whose placed positions (s*i - (s-1)/2) centre on it, within
    s/8 px; at s*i (the "centers" placement) they centre 2.5-8 px down-right of it."""
    import numpy as np

    from inspector.config.network import DEFAULT_BACKBONE
    from inspector.model.backbone import Backbone, default_weights_path

    bb = Backbone(DEFAULT_BACKBONE, (2, 3), default_weights_path()).eval()
    base = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(0)) * 0.1
    off = {8: [], 16: []}
    with torch.no_grad():
        before = bb(base)
        for y0, x0 in [(100, 100), (101, 97), (130, 150), (64, 64), (77, 181)]:
            x = base.clone()
            x[:, :, y0, x0] += 5
            for a, b in zip(bb(x), before):
                d = (a - b).abs().sum(1)[0].numpy()
                s = 256 // d.shape[0]
                w = d / d.sum()
                ys, xs = np.mgrid[: d.shape[0], : d.shape[1]]
                off[s].append(((w * ys).sum() * s - y0, (w * xs).sum() * s - x0))  # at s*i, minus the point
    for s, o in off.items():
        mean = np.mean(o, 0)
        assert np.all(np.abs(mean - (s - 1) / 2) < s / 8), (s, mean)  # placed at s*i - (s-1)/2: centred
        assert np.all(mean > 2.5), (s, mean)  # placed at s*i: down-right of the point


def test_gaussian_term_equals_the_mahalanobis_distance():
    """Whitened per block (the encoder's last layer folded in where the hidden layer is no wider than the
    latent), the term is (z - mean)^T P (z - mean), exactly, for whole and partial blocks, and follows the
    statistics when they change (a refit)."""
    from inspector.config.network import NetworkSettings
    from inspector.model.backbone import default_weights_path
    from inspector.model.net import InspectorNet

    for hidden in (16, 4):  # wider than the latent: the term reads the latent map; narrower: the hidden layer
        cfg = NetworkSettings(gauss_cell=4, latent=8, hidden=hidden)
        _check_gaussian_term(InspectorNet(cfg, (6, 10), default_weights_path()))


def test_feature_gaussian_term_equals_the_mahalanobis_distance_of_the_standardized_features():
    """`gauss_source=features`: one covariance per position over the standardized backbone features, read
    straight from the backbone maps (no latent needed), equal to (f - mean)^T P (f - mean)."""
    from inspector.config.network import NetworkSettings
    from inspector.model.backbone import default_weights_path
    from inspector.model.net import InspectorNet

    net = InspectorNet(NetworkSettings(gauss_source="features", gauss_cell=1), (4, 5), default_weights_path()).eval()
    c = net.feature_dim
    gen = torch.Generator().manual_seed(5)
    assert net.gauss_mean.shape == (1, c, 4, 5) and net.gauss_prec.shape == (20, c, c) and not net.gauss_reads_hidden
    a = torch.randn(20, c, c, generator=gen)
    net.gauss_prec.copy_(a @ a.transpose(1, 2) / c + 0.5 * torch.eye(c))
    net.gauss_mean.copy_(torch.randn(net.gauss_mean.shape, generator=gen))
    net.feat_mean.copy_(torch.randn(net.feat_mean.shape, generator=gen))
    x = torch.rand(2, 3, 32, 40, generator=gen)
    with torch.no_grad():
        gauss = net.components(x)[2]
        d = net.features(x) - net.gauss_mean
    want = torch.einsum("bchw,hwcd,bdhw->bhw", d, net.gauss_prec.view(4, 5, c, c), d).sqrt()
    torch.testing.assert_close(gauss, want, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("cell", [1, 2])
def test_low_rank_gaussian_equals_the_full_one_on_fewer_samples_than_dimensions(cell):
    """Few fit images: the covariance is low-rank plus a ridge, and the basis form (`gauss_rank`) gives the same
    distance as the full precision matrix, also with zero columns padded (a refit on fewer images)."""
    from inspector.config.network import NetworkSettings
    from inspector.model.backbone import default_weights_path
    from inspector.model.net import InspectorNet
    from inspector.pipeline.fit import fit_gaussian, fit_gaussian_low_rank, gauss_rank_for, set_gaussian

    def net(rank):
        cfg = NetworkSettings(gauss_source="features", gauss_cell=cell, gauss_rank=rank)
        return InspectorNet(cfg, (4, 5), default_weights_path()).eval()

    full = net(0)
    d, n = full.feature_dim, 7
    rank = gauss_rank_for(n, d, cell)
    assert rank == cell * cell * (n - 1) and gauss_rank_for(200, d, cell) == 0  # enough images: full matrices
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(n, d, 4, 5, generator=gen) * torch.linspace(0.2, 2.0, d)[None, :, None, None]
    set_gaussian(full, fit_gaussian(z, cell=cell))
    for r in (rank, rank + 4):
        low = net(r)
        set_gaussian(low, fit_gaussian_low_rank(z, r, cell=cell))
        assert low.gauss_basis.shape == (full.gauss_prec.shape[0], d, r) and low.gauss_prec.numel() == 1
        for x in (torch.randn(3, d, 4, 5, generator=gen), z[:2] + 0.01 * torch.randn(2, d, 4, 5, generator=gen)):
            with torch.no_grad():
                torch.testing.assert_close(low.mahalanobis(x), full.mahalanobis(x), rtol=1e-3, atol=1e-2)


def _check_gaussian_term(net):
    gen = torch.Generator().manual_seed(3)
    net.eval()

    def refit():
        a = torch.randn(net.gauss_prec.shape, generator=gen)
        net.gauss_prec.copy_(a @ a.transpose(1, 2) / 8 + 0.5 * torch.eye(8))
        net.gauss_mean.copy_(torch.randn(net.gauss_mean.shape, generator=gen))

    g = torch.randn(3, net.cfg.hidden, 6, 10, generator=gen)
    assert net.gauss_reads_hidden == (net.cfg.hidden <= net.cfg.latent)
    for _ in range(2):
        refit()
        with torch.no_grad():
            z = net.ae.encoder[2](g)
            got = net.mahalanobis(g if net.gauss_reads_hidden else z)
            d = z - net.gauss_mean  # (B, L, h, w)
        want = torch.empty(3, 6, 10)
        for y in range(6):
            for x in range(10):
                p = net.gauss_prec[(y // 4) * 3 + x // 4]  # 4x4 blocks: 2 x 3 of them, the last row/column partial
                want[:, y, x] = torch.einsum("bl,lm,bm->b", d[:, :, y, x], p, d[:, :, y, x]).sqrt()
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="not the model's"):  # another grid size is an error, not a silent reshape
        net.mahalanobis(torch.zeros(1, g.shape[1], 12, 20))


def test_top_cells_mean_ranks_a_cluster_above_a_single_spike():
    """The map maximum ranks one stray high cell first; the mean of the top 5% ranks a defect's cluster first."""
    from types import SimpleNamespace

    from inspector.config.network import NetworkSettings
    from inspector.model.net import InspectorNet

    spike, cluster = torch.zeros(1, 100), torch.zeros(1, 100)
    spike[0, 7], cluster[0, 40:45] = 5.0, 3.0
    as_max = SimpleNamespace(cfg=NetworkSettings(), grid=(10, 10))
    top = SimpleNamespace(cfg=NetworkSettings(score_top=0.05), grid=(10, 10))
    assert InspectorNet.reduce(as_max, spike) > InspectorNet.reduce(as_max, cluster)
    assert float(InspectorNet.reduce(top, spike)) == 1.0 and float(InspectorNet.reduce(top, cluster)) == 3.0


def test_autoencoder_rows_equal_the_convolutions_and_train_them():
    """Training reads patches as rows (`flat`); the exported graph runs the 1x1 convolutions: the same numbers,
    and a step on rows moves the convolutions' own weights."""
    from inspector.model.net import PatchAutoencoder

    torch.manual_seed(0)
    ae = PatchAutoencoder(dim=12, hidden=16, latent=3)
    x = torch.randn(50, 12)
    z, rec = ae(x[:, :, None, None])
    z_rows, rec_rows = ae.flat(x)
    assert torch.allclose(z_rows, z[:, :, 0, 0], atol=1e-6)
    assert torch.allclose(rec_rows, rec[:, :, 0, 0], atol=1e-6)
    assert torch.allclose(ae.encode_rows(x), z_rows)
    before = ae.encoder[0].weight.detach().clone()
    (ae.flat(x)[1] - x).pow(2).mean().backward()
    torch.optim.SGD(ae.parameters(), lr=0.1).step()
    assert not torch.equal(ae.encoder[0].weight, before)
