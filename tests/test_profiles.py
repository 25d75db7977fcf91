import pytest

from device_sim.profiles import PROFILES, DeviceProfile, ProfileError, check_job, get_profile
from edgetune.planner.cost import ArchSummary, CostConfig, estimate_cut

ARCH = ArchSummary(
    num_layers=6,
    hidden_size=384,
    intermediate_size=1536,
    num_heads=12,
    block_params=(1_774_464,) * 6,
    embedding_params=11_918_592,
    norm_params=0,
    num_labels=5,
)
COST = CostConfig(seq_len=128, batch_size=16, num_examples=200, epochs=3)


def test_named_and_custom_profiles():
    assert set(PROFILES) == {"phone-low", "phone-high", "edge-box"}
    custom = get_profile("phone-low", memory_mb=123.0, threads=None)
    assert custom.memory_mb == 123.0 and custom.threads == PROFILES["phone-low"].threads
    assert custom.name == "phone-low+custom"
    with pytest.raises(ProfileError, match="unknown device profile"):
        get_profile("toaster")
    with pytest.raises(ValueError):
        DeviceProfile("x", threads=0, memory_mb=1, time_budget_s=1, gflops=1)


def test_refusal_names_numbers_and_suggests_a_higher_cut():
    need = {k: estimate_cut(ARCH, COST, k).train_memory_mb for k in range(7)}
    profile = DeviceProfile("tight", threads=2, memory_mb=(need[3] + need[4]) / 2, time_budget_s=1e6, gflops=10)
    check_job(profile, ARCH, COST, cut=4)  # fits: no error
    with pytest.raises(ProfileError) as err:
        check_job(profile, ARCH, COST, cut=1)
    msg = str(err.value)
    assert "'tight'" in msg and f"{need[1]:.0f} MB" in msg and "a higher cut fits: 4" in msg


def test_refusal_without_any_fitting_cut():
    profile = DeviceProfile("tiny", threads=1, memory_mb=1, time_budget_s=1e6, gflops=10)
    with pytest.raises(ProfileError, match="no cut fits"):
        check_job(profile, ARCH, COST, cut=5)


def test_time_budget_is_checked_at_the_profile_speed():
    slow = DeviceProfile("slow", threads=1, memory_mb=1e6, time_budget_s=1, gflops=0.001)
    with pytest.raises(ProfileError, match="s > 1 s"):
        check_job(slow, ARCH, COST, cut=5)
