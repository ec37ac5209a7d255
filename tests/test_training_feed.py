"""The tf.data training feed yields exactly the windows of the old ``WindowBatches`` path, and
``training.max_windows`` keeps an even spread of windows over time."""

import numpy as np
import pytest

from pipeline.detector.fitting import evenly_spaced

tf = pytest.importorskip("tensorflow")


def _feed_batches(feed, epochs: int) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    dataset, batches = feed.dataset(), []
    for _ in range(epochs):
        feed.next_epoch()  # as Keras does through feed.callback() when an epoch begins
        batches.append([(x.numpy(), y.numpy()) for x, y in dataset])
    return batches


@pytest.mark.parametrize("centred", [None, np.array([False, True])])
def test_the_feed_yields_the_old_paths_batches_epoch_after_epoch(centred):
    from pipeline.model.training import WindowBatches, WindowFeed

    rng = np.random.default_rng(3)
    values = rng.normal(size=(60, 2)).astype(np.float32)
    starts = np.concatenate([np.arange(0, 20), np.arange(30, 52, 2)])  # two stretches, stride 2 in the second
    old = WindowBatches(values, starts, 6, 8, shuffle_seed=5, centred=centred)
    feed = WindowFeed(values, starts, 6, 8, shuffle_seed=5, centred=centred)
    assert len(feed) == len(old)
    for epoch, batches in enumerate(_feed_batches(feed, 3)):
        expected = [old[i] for i in range(len(old))]
        assert len(batches) == len(expected)
        for (x, y), (ex, ey) in zip(batches, expected):
            np.testing.assert_allclose(x, ex, rtol=0, atol=1e-6)
            np.testing.assert_allclose(y, ey, rtol=0, atol=1e-6)
        old.on_epoch_end()  # Keras calls it after each epoch: the next epoch's shuffle
        assert epoch < 3


def test_the_feed_without_shuffle_keeps_the_windows_in_order():
    from pipeline.model.training import WindowFeed

    values = np.arange(40, dtype=np.float32).reshape(20, 2)
    (batches,) = _feed_batches(WindowFeed(values, np.arange(0, 15), 4, 4), 1)
    windows = np.concatenate([x for x, _ in batches])
    expected = np.stack([values[s : s + 4] for s in range(15)])
    np.testing.assert_array_equal(windows, expected)


def test_denoising_feed_has_noisy_inputs_and_clean_targets():
    from pipeline.model.training import WindowFeed

    values = np.arange(400, dtype=np.float32).reshape(200, 2)
    (batches,) = _feed_batches(WindowFeed(values, np.arange(0, 190), 4, 64, shuffle_seed=0, input_noise=0.5), 1)
    noise = np.concatenate([(x - y).ravel() for x, y in batches])
    assert noise.std() == pytest.approx(0.5, rel=0.2) and abs(noise.mean()) < 0.1


def test_max_windows_takes_windows_evenly_over_time():
    starts = np.arange(1000)
    expected = np.linspace(0, 999, 10).round().astype(np.int64)
    returned = evenly_spaced(starts, 10)
    np.testing.assert_array_equal(returned, expected)
    assert returned[0] == 0 and returned[-1] == 999
    assert evenly_spaced(starts, None) is starts and evenly_spaced(starts[:5], 10).size == 5
