"""figures.gdn_matrix shows a GDN site's structure when one weight is much larger than the rest (issue 23 item 4:
07's smoke run grew one diagonal entry of gamma from 0.1 to ~6.6, and on the linear colour scale it set, every
other entry looked the same)."""
import numpy as np
import torch

from dnlib import make_norm
from dnlib.analysis import figures


def _site(diagonal, off_diagonal=0.0):
    """A 16-channel GDN site whose effective gamma is ``diag(diagonal)`` plus ``off_diagonal`` at (0, 1)."""
    m = make_norm("gdn", len(diagonal))
    g = torch.diag(torch.tensor(diagonal, dtype=torch.float32))
    g[0, 1] = off_diagonal
    with torch.no_grad():
        m.gamma.copy_(m.gamma_reparam.init(g))
    return m


#: the diagonal of 07's smoke-run first GDN site (seed 0, 24 steps; the off-diagonal stayed at 0)
SMOKE_DIAGONAL = [0.547, 0.195, 0.219, 0.666, 0.432, 0.551, 0.807, 0.172, 0.799, 0.865, 6.618, 0.635, 0.442, 0.293,
                  0.278, 0.573]


def _colour_positions(fig):
    """Where each entry's value falls on the colour map, 0 to 1 (masked: drawn in the 'bad' colour)."""
    im = fig.axes[0].images[0]
    return im.norm(im.get_array())


def test_one_large_weight_does_not_hide_the_others():
    m = _site(SMOKE_DIAGONAL)
    fig = figures.gdn_matrix(m)
    pos = _colour_positions(fig)
    diag = np.diag(np.ma.filled(pos, np.nan))
    rest = np.delete(diag, 10)
    # linear 0..6.6 put the other 15 diagonal weights within 0.11 of each other on the colour map; log: > 0.2
    assert rest.max() - rest.min() > 0.2, f"diagonal colours span {rest.max() - rest.min():.3f}"
    off = np.ma.filled(pos, -1.0)[~np.eye(16, dtype=bool)]
    assert (off < 0).all()          # zeros are not a colour of the scale: the 'bad'/'under' grey
    assert "largest 6.62 at (10, 10)" in fig.axes[0].get_title()
    assert np.allclose(fig.axes[0].images[0].get_array(), m.effective_gamma.detach().numpy(), atol=1e-6)


def test_off_diagonal_weights_above_the_floor_get_colours():
    m = _site([1.0] * 16, off_diagonal=0.01)
    pos = np.ma.filled(_colour_positions(figures.gdn_matrix(m)), -1.0)
    assert 0 < pos[0, 1] < pos[0, 0] and pos[0, 2] < 0   # 0.01 is on the scale, 0 is grey
