"""End-to-end training of a network with a G-CRF layer, against the same network without it.

Task: denoise a colour-cluster segmentation of the photograph that ships with Matplotlib.  The
photograph is block-averaged (``--stride``), its colours are clustered by k-means into ``L`` labels
(the clean target), and the network sees the photograph under strong Gaussian noise (a fresh noise
draw every step).  It is trained with cross-entropy on *noisy* labels (a fraction ``--label-noise``
replaced by random labels) and only on the training pixels; half of the ``--block`` x ``--block``
blocks of the image are held out and never enter the loss.  Accuracy is measured against the clean
labels on the held-out pixels of a fixed noisy test image.

Two models are trained the same way (same unary network, seed, optimiser and steps):

- **unary-only**: a small CNN ``f`` gives the label scores ``b = f(image)``;
- **G-CRF**: the same CNN for ``b``, plus a low-rank Potts G-CRF layer (docs/design.md 3.5) whose
  embeddings come from a small conv head: ``x = (lam I + A)^{-1} b`` with
  ``A[(m,p),(n,q)] = <psi_p, psi_q>`` for ``m != n``.  The embedding of pixel ``p`` is
  ``psi_p = c * vec(t(p) (x) a(p))``: ``a(p)`` is a learnt soft assignment (softmax over ``C``
  channels) and ``t(p)`` the bilinear "tent" weights of ``p`` on a coarse ``--cells`` grid, so
  ``<psi_p, psi_q>`` is large for nearby pixels that the head assigns alike (a learnt, edge-aware,
  non-negative coupling; a positive ``A`` entry between different labels penalises disagreeing
  neighbours, so the layer smooths the scores: ``x_l - mean_m x_m = (lam I - W)^{-1} (b_l - mean_m b_m)``
  with ``W = psi^T psi``).  ``c`` scales ``psi`` so that ``||psi||_2^2 <= rho lam`` with a learnt
  ``rho < 1``: the system stays positive definite (docs/design.md section 6) whatever the head outputs.
  The layer solves exactly (``method="direct"``, Woodbury) and its backward pass reuses the forward
  factorisation.

Run ``python -m studies.train`` (about two minutes on 2 CPU cores) or ``--quick`` (about ten seconds).
Writes ``summary.md`` (the results table), ``train.json`` (configuration, summary and histories),
``train.csv`` (the loss of both models per step), ``training.png`` (loss and held-out accuracy per
step) and ``segmentations.png`` (input, target and both predictions) to ``--out`` (default
``results/train/``).
"""
from __future__ import annotations

import argparse
import platform
import sys
import time

import numpy as np

from studies._common import Outputs, Progress, array_module, markdown_table, study_parser

__all__ = ["main", "build_parser", "make_task", "run"]

QUICK_STEPS, FULL_STEPS = 80, 300


# ---------------------------------------------------------------------------- the task
def make_task(*, stride: int, num_labels: int, label_noise: float, block: int, seed: int):
    """The photograph, its clean colour-cluster labels, noisy training labels and the split.

    Returns
    -------
    dict
        ``image`` ``(H, W, 3)`` in [0, 1]; ``labels`` ``(H, W)`` int (clean target); ``noisy_labels``
        ``(H, W)`` int; ``train_mask`` ``(H, W)`` bool (held-out pixels are ``~train_mask``);
        ``centres`` ``(L, 3)``.
    """
    from gcrflinalg.problems import colour_clusters, load_photo

    rng = np.random.default_rng(seed)
    image = load_photo(stride=stride)
    labels, centres = colour_clusters(image, num_labels, seed=seed)
    flip = rng.random(labels.shape) < label_noise
    noisy = np.where(flip, rng.integers(0, num_labels, labels.shape), labels)
    H, W = labels.shape
    nbi, nbj = -(-H // block), -(-W // block)
    # half of the blocks, chosen at random but balanced, are held out
    held_blocks = rng.permutation(nbi * nbj) < (nbi * nbj) // 2
    held = np.repeat(np.repeat(held_blocks.reshape(nbi, nbj), block, 0), block, 1)[:H, :W]
    return {"image": image, "labels": labels, "noisy_labels": noisy, "train_mask": ~held,
            "centres": centres}


# ---------------------------------------------------------------------------- the models
def _tent_basis(height: int, width: int, cells: int):
    """Bilinear interpolation weights ``t[c, i, j]`` of every pixel on a ``cells x cells`` grid of
    nodes spanning the image (non-negative, summing to 1 over ``c``); shape ``(cells**2, H, W)``."""
    def axis(n):
        pos = np.linspace(0.0, cells - 1.0, n)
        nodes = np.arange(cells)
        return np.maximum(0.0, 1.0 - np.abs(pos[None, :] - nodes[:, None]))  # (cells, n)

    ti, tj = axis(height), axis(width)
    return np.einsum("ai,bj->abij", ti, tj).reshape(cells * cells, height, width)


def build_models(num_labels: int, height: int, width: int, *, channels: int, cells: int, hidden: int,
                 seed: int = 0):
    """``(unary_only, gcrf)`` torch modules; both unary networks start from the same weights."""
    import torch
    from torch import nn

    from gcrflinalg.interop.torch import gcrf_solve

    def unary_net():
        return nn.Sequential(nn.Conv2d(3, hidden, 3, padding=1), nn.ReLU(),
                             nn.Conv2d(hidden, num_labels, 1))

    class UnaryOnly(nn.Module):
        """Label scores of a small CNN, used as they are."""

        def __init__(self):
            super().__init__()
            self.unary = unary_net()

        def forward(self, image):
            return self.unary(image)

    class GCRFNet(nn.Module):
        """The same CNN followed by a low-rank Potts G-CRF layer with learnt embeddings."""

        def __init__(self):
            super().__init__()
            self.unary = unary_net()
            self.assign = nn.Sequential(nn.Conv2d(3, hidden, 3, padding=1), nn.ReLU(),
                                        nn.Conv2d(hidden, channels, 1))
            self.register_buffer("tent", torch.tensor(_tent_basis(height, width, cells), dtype=torch.float32))
            self.rho_logit = nn.Parameter(torch.tensor(0.0))  # rho = 0.98 sigmoid(.) starts at 0.49
            self.lam = 1.0

        def embeddings(self, image):
            """``psi`` of shape ``(B, cells**2 * C, H, W)`` with ``||psi_b||_2^2 <= rho lam``."""
            a = torch.softmax(self.assign(image), dim=1)  # (B, C, H, W)
            psi = (self.tent[None, :, None] * a[:, None]).flatten(1, 2)  # (B, cells^2 C, H, W)
            # ||psi||_2^2 <= ||psi||_1 ||psi||_inf (largest column sum times largest row sum of the
            # non-negative D x P matrix); every column sums to 1 (tent weights and softmax both
            # partition unity), so the bound is the largest row sum -- nearly tight here, and cheap.
            bound = psi.flatten(2).sum(dim=2).amax(dim=1)
            rho = 0.98 * torch.sigmoid(self.rho_logit)
            return psi * torch.sqrt(rho * self.lam / bound)[:, None, None, None]

        def forward(self, image):
            b = self.unary(image)
            return gcrf_solve("lowrank_potts", b, self.embeddings(image), lam=self.lam, method="direct")

    torch.manual_seed(seed)
    baseline = UnaryOnly()
    gcrf = GCRFNet()
    gcrf.unary.load_state_dict(baseline.unary.state_dict())
    return baseline, gcrf


# ---------------------------------------------------------------------------- training
def _accuracy(scores, labels, mask):
    pred = scores.argmax(dim=1)
    return float((pred == labels)[:, mask].float().mean())


def train_model(model, task, *, steps: int, batch: int, noise: float, lr: float, eval_every: int, seed: int,
                progress=None):
    """Adam on the cross-entropy of the noisy labels over the training pixels.

    Returns a history dict: ``loss`` per step, and ``step``, ``heldout_accuracy``,
    ``train_accuracy`` at every evaluation (accuracy against the clean labels).
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    image = torch.tensor(task["image"], dtype=torch.float32).permute(2, 0, 1)[None]
    labels = torch.tensor(task["labels"])[None]
    noisy = torch.tensor(task["noisy_labels"])[None].expand(batch, -1, -1)
    train = torch.tensor(task["train_mask"])
    held = ~train
    test_image = image + noise * torch.randn(image.shape, generator=torch.Generator().manual_seed(seed + 10_000))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    history = {"loss": [], "step": [], "heldout_accuracy": [], "train_accuracy": []}
    t0 = time.perf_counter()

    def evaluate(step):
        model.eval()
        with torch.no_grad():
            scores = model(test_image)
        model.train()
        history["step"].append(step)
        history["heldout_accuracy"].append(_accuracy(scores, labels, held))
        history["train_accuracy"].append(_accuracy(scores, labels, train))

    evaluate(0)
    for step in range(1, steps + 1):
        x = image + noise * torch.randn((batch,) + image.shape[1:], generator=gen)
        scores = model(x)
        loss = torch.nn.functional.cross_entropy(scores[:, :, train], noisy[:, train])
        opt.zero_grad()
        loss.backward()
        opt.step()
        history["loss"].append(float(loss.detach()))
        if step % eval_every == 0 or step == steps:
            evaluate(step)
        if progress is not None:
            progress.update(1)
    history["time_s"] = time.perf_counter() - t0
    model.eval()
    with torch.no_grad():
        history["test_prediction"] = model(test_image).argmax(dim=1)[0].numpy()
    history["test_image"] = test_image[0].permute(1, 2, 0).clamp(0, 1).numpy()
    return history


def run(*, quick: bool = False, stride=None, num_labels: int = 5, noise: float = 0.5, label_noise: float = 0.3,
        block: int = 8, steps=None, batch: int = 2, lr: float = 0.02, channels: int = 3, cells=None,
        hidden: int = 16, seed: int = 0, threads: int = 2, progress=None) -> dict:
    """Train both models and return the record (histories, final metrics, configuration)."""
    import torch

    torch.set_num_threads(threads)
    stride = stride or (8 if quick else 4)
    steps = steps or (QUICK_STEPS if quick else FULL_STEPS)
    cells = cells or (6 if quick else 10)
    task = make_task(stride=stride, num_labels=num_labels, label_noise=label_noise, block=block, seed=seed)
    H, W = task["labels"].shape
    config = dict(quick=quick, stride=stride, height=H, width=W, num_labels=num_labels, noise=noise,
                  label_noise=label_noise, block=block, steps=steps, batch=batch, lr=lr, channels=channels,
                  cells=cells, embedding_dim=cells * cells * channels, hidden=hidden, seed=seed, threads=threads,
                  form="lowrank_potts", method="direct")
    baseline, gcrf = build_models(num_labels, H, W, channels=channels, cells=cells, hidden=hidden, seed=seed)
    common = dict(steps=steps, batch=batch, noise=noise, lr=lr, eval_every=max(1, steps // 20), seed=seed,
                  progress=progress)
    histories = {}
    for name, model in (("unary", baseline), ("gcrf", gcrf)):
        if progress is not None:
            progress.set_description(f"training {name}")
        histories[name] = train_model(model, task, **common)
    return {"config": config, "task": task, "histories": histories,
            "rho": float(0.98 * torch.sigmoid(gcrf.rho_logit.detach()))}


# ---------------------------------------------------------------------------- outputs
def _smoothed(values, width):
    values = np.asarray(values, dtype=float)
    width = max(1, min(width, len(values)))
    return np.convolve(values, np.ones(width) / width, mode="valid")


def plot_training(record, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hist = record["histories"]
    labels = {"unary": "unary-only CNN", "gcrf": "CNN + G-CRF (low-rank Potts)"}
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, colour in (("unary", "tab:orange"), ("gcrf", "tab:blue")):
        loss = hist[name]["loss"]
        width = max(1, len(loss) // 25)
        ax_loss.plot(np.arange(1, len(loss) + 1), loss, color=colour, alpha=0.25, lw=0.8)
        sm = _smoothed(loss, width)
        ax_loss.plot(np.arange(width, width + len(sm)), sm, color=colour, label=labels[name])
        ax_acc.plot(hist[name]["step"], hist[name]["heldout_accuracy"], "o-", ms=3, color=colour,
                    label=labels[name])
    cfg = record["config"]
    ax_loss.set(xlabel="training step", ylabel="cross-entropy on noisy training labels",
                title="Training loss (faint: per step; solid: running mean)")
    ax_acc.set(xlabel="training step", ylabel="accuracy vs clean labels",
               title="Held-out pixels (never in the loss)")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"Denoising a {cfg['num_labels']}-cluster segmentation of the photograph "
                 f"({cfg['height']} x {cfg['width']}, input noise {cfg['noise']}, "
                 f"{int(100 * cfg['label_noise'])}% label noise)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_segmentations(record, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    task, hist = record["task"], record["histories"]
    centres = task["centres"]
    held = ~task["train_mask"]
    panels = [
        ("noisy input (test draw)", hist["gcrf"]["test_image"]),
        ("clean target", centres[task["labels"]]),
        ("noisy training labels", np.where(held[..., None], 1.0, centres[task["noisy_labels"]])),
        (f"unary-only: held-out acc. {hist['unary']['heldout_accuracy'][-1]:.3f}",
         centres[hist["unary"]["test_prediction"]]),
        (f"with G-CRF: held-out acc. {hist['gcrf']['heldout_accuracy'][-1]:.3f}",
         centres[hist["gcrf"]["test_prediction"]]),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.1 * len(panels), 3.6))
    for ax, (title, img) in zip(axes, panels):
        ax.imshow(np.clip(img, 0, 1), interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    axes[2].set_title("noisy training labels\n(white: held-out blocks)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def summary(record) -> dict:
    """Final metrics: held-out/train accuracy, first/last loss (means over a tenth of the steps)."""
    out = {}
    for name, h in record["histories"].items():
        n = max(1, len(h["loss"]) // 10)
        out[name] = {
            "heldout_accuracy": h["heldout_accuracy"][-1],
            "train_accuracy": h["train_accuracy"][-1],
            "loss_first": float(np.mean(h["loss"][:n])),
            "loss_last": float(np.mean(h["loss"][-n:])),
            "time_s": h["time_s"],
        }
    return out


def record_json(record) -> dict:
    """The JSON record: configuration, summary, learnt rho and the histories."""
    def clean(h):
        return {k: v for k, v in h.items() if k not in ("test_prediction", "test_image")}

    return {
        "study": "train",
        "config": record["config"],
        "summary": summary(record),
        "learnt_rho": record["rho"],
        "histories": {k: clean(v) for k, v in record["histories"].items()},
        "environment": {"python": platform.python_version(), "platform": platform.platform()},
    }


def loss_rows(record) -> list[dict]:
    """One row per training step: the loss of both models."""
    hist = record["histories"]
    return [{"step": k + 1, "loss_unary": a, "loss_gcrf": b}
            for k, (a, b) in enumerate(zip(hist["unary"]["loss"], hist["gcrf"]["loss"]))]


def build_parser() -> argparse.ArgumentParser:
    p = study_parser(
        "train",
        "Train a small CNN with and without a G-CRF layer (low-rank Potts, exact solve) on a noisy "
        "colour-cluster segmentation of the Matplotlib photograph; compare held-out accuracy.  Writes "
        "summary.md, train.json, train.csv, training.png and segmentations.png.  Needs PyTorch; runs on "
        "the CPU.",
        quick_help="small image (stride 8), 80 steps: well under a minute (--steps makes it shorter)")
    p.add_argument("--stride", type=int, default=None,
                   help="block-average stride of the photo (default 4: 150 x 128 pixels; quick 8: 75 x 64)")
    p.add_argument("--labels", type=int, default=5, help="number of colour clusters L (default: %(default)s)")
    p.add_argument("--noise", type=float, default=0.5,
                   help="std of the Gaussian noise added to the input image in [0, 1] (default: %(default)s)")
    p.add_argument("--label-noise", type=float, default=0.3,
                   help="fraction of training labels replaced by random ones (default: %(default)s)")
    p.add_argument("--block", type=int, default=8, help="side of the held-out blocks in pixels (default: %(default)s)")
    p.add_argument("--steps", type=int, default=None, help="training steps per model (default 300; quick 80)")
    p.add_argument("--batch", type=int, default=2, help="noise draws per step (default: %(default)s)")
    p.add_argument("--lr", type=float, default=0.02, help="Adam learning rate (default: %(default)s)")
    p.add_argument("--channels", type=int, default=3,
                   help="soft-assignment channels C of the embedding head (default: %(default)s)")
    p.add_argument("--cells", type=int, default=None,
                   help="coarse grid of the spatial tent basis, cells x cells (default 10; quick 6)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: %(default)s)")
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.backend != "cpu":
        array_module(args.backend)  # a clear message without CuPy / a GPU
        parser.error("--backend gpu: the training study runs on the CPU (PyTorch CPU tensors)")
    try:
        import torch  # noqa: F401
    except ImportError:
        print("error: this study needs PyTorch: pip install -e '.[torch]'", file=sys.stderr)
        return 2

    steps = args.steps or (QUICK_STEPS if args.quick else FULL_STEPS)
    out = Outputs(args.out)
    with Progress(2 * steps, "training", enabled=not args.no_progress, unit="step") as progress:
        record = run(quick=args.quick, stride=args.stride, num_labels=args.labels, noise=args.noise,
                     label_noise=args.label_noise, block=args.block, steps=steps, batch=args.batch, lr=args.lr,
                     channels=args.channels, cells=args.cells, seed=args.seed, threads=args.threads,
                     progress=progress)
    s = summary(record)
    cfg = record["config"]
    task = (f"task: {cfg['height']} x {cfg['width']} pixels, L = {cfg['num_labels']}, input noise {cfg['noise']}, "
            f"{int(100 * cfg['label_noise'])}% label noise, {cfg['steps']} steps x batch {cfg['batch']}")
    rows = [dict(model=name, **s[name]) for name in ("unary", "gcrf")]
    table = markdown_table(rows, ["model", "loss_first", "loss_last", "train_accuracy", "heldout_accuracy", "time_s"],
                           headers=["model", "loss first", "loss last", "train acc", "held-out acc", "time (s)"],
                           floatfmt=".4f")
    verdict = (f"G-CRF held-out accuracy {s['gcrf']['heldout_accuracy']:.3f} vs unary-only "
               f"{s['unary']['heldout_accuracy']:.3f}")
    print(task)
    print(table)
    out.text("summary.md", f"# Training with and without a G-CRF layer\n\n{task}; learnt rho "
                           f"{record['rho']:.3f}.\n\n{table}\n\n{verdict}.\n")
    out.json("train.json", record_json(record))
    out.csv("train.csv", loss_rows(record), ["step", "loss_unary", "loss_gcrf"])
    out.figure("training.png", lambda path: plot_training(record, path))
    out.figure("segmentations.png", lambda path: plot_segmentations(record, path))
    out.report()
    print(verdict)
    return 0


if __name__ == "__main__":
    sys.exit(main())
