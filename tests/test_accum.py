"""--accum-freq K (cached features): K micro-batches of B give the loss terms, batch-graph stats and every
parameter's gradient (encoders, GATs, logit scale, structural temperature) of one batch of K*B, for clip and slip;
a short run trains and logs the full batch's graph stats; --accum and --accum-freq together are refused."""
import pytest

from helpers.ddp_driver import compare, step_result
from helpers.training import make_train_assets, train_args
from trainer.config import TrainConfig, TrainSetupError, build_config
from trainer.loop import train
from trainer.run_io import read_log

pytestmark = pytest.mark.usefixtures("one_torch_thread")
B, K = 8, 3


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return make_train_assets(tmp_path_factory.mktemp("accum"), n_nodes=160)


def cfg_values(assets, out, method: str, **overrides) -> dict:
    # no dropout anywhere, so the one-batch reference is a deterministic function of the weights
    return train_args(assets, out, method=method, workers=0, augment=False, gat_dropout=0.0, **overrides)


@pytest.mark.parametrize("method", ["clip", "slip"])
def test_cached_micro_batches_give_the_gradient_of_one_big_batch(assets, tmp_path, method):
    want = step_result(cfg_values(assets, tmp_path / "one", method, batch_size=K * B), K * B)
    got = step_result(cfg_values(assets, tmp_path / "cached", method, batch_size=B, accum_freq=K), K * B)
    if method == "slip":
        assert want["neighbor_frac"] > 0  # the batch graph has edges across micro-batches to get right
        assert {"gat_image.alpha", "struct_log_inv_temperature"} <= set(want["grads"])
    assert "clip.logit_scale" in want["grads"]
    compare(got, want)


def test_a_short_cached_run_trains_and_counts_samples(assets, tmp_path):
    out = tmp_path / "run"
    summary = train(TrainConfig(**cfg_values(assets, out, "slip", batch_size=B, accum_freq=2, steps=3, warmup=1)))
    log = read_log(out)
    assert [r["step"] for r in log] == [1, 2, 3] and summary["samples"] == 3 * 2 * B
    assert all(r["neighbor_frac"] is not None and r["loss_struct"] > 0 for r in log)


def test_accum_and_accum_freq_together_are_refused(assets, tmp_path):
    with pytest.raises(TrainSetupError, match="--accum .* or --accum-freq"):
        build_config(**cfg_values(assets, tmp_path, "clip", accum=2, accum_freq=2))
