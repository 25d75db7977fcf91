"""The simulator's trunk memory: exact outputs, each text's trunk computed once, and a hook before the swaps."""

import numpy as np

from device_sim.device import Device
from edgetune_fleet.memo import MemoTrunk
from tests.devices import fast, user_data


def test_memo_trunk_is_exact_and_computes_each_text_once(device_packages, tmp_path):
    data = user_data(40, seed=3)
    with Device(device_packages["main"], threads=1) as device:
        want_features = device.features(data.texts)
        want_logits = device.predict_logits(data.texts[:7])
        memo = MemoTrunk(device.package)
        got = device.features(data.texts)
        assert np.allclose(got, want_features, atol=1e-6) and memo.misses == 40 and memo.hits == 0
        # other batches, other widths: served from memory, same answers
        assert np.allclose(device.predict_logits(data.texts[:7], batch_size=3), want_logits, atol=1e-5)
        assert memo.misses == 40 and memo.hits == 7
        device.personalize(data, tmp_path / "personal", fast())  # a whole job on remembered trunk outputs
        assert memo.misses == 40
        memo.clear()
        device.features(data.texts[:5])
        assert memo.misses == 45 and memo.seconds > 0
        memo.restore()
        assert "trunk_session" not in vars(device.package)
        assert np.allclose(device.features(data.texts), want_features, atol=1e-6)
