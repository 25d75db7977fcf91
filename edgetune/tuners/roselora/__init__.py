from edgetune.tuners.roselora.config import RoseLoraConfig
from edgetune.tuners.roselora.schedule import density_at, keep_count
from edgetune.tuners.roselora.tuner import RoseLoraTuner

__all__ = ["RoseLoraConfig", "RoseLoraTuner", "density_at", "keep_count"]
