from edgetune.tuners.full.config import FullConfig
from edgetune.tuners.full.tuner import FullTuner

__all__ = ["FullConfig", "FullTuner"]
